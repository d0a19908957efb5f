"""``pneumo predict`` / ``pneumo export``: folders walked, bad files reported and skipped, every output format."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pneumo.cli.use import register
from pneumo.inference import Predictor
from pneumo.runs import ood as runs_ood

from .conftest import dicom_bytes, encode, make_fake_run, xray_like


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.fromarray(xray_like(seed=1)).save(root / "a.png")
    Image.fromarray(xray_like(seed=2)).save(root / "sub" / "b.jpg")
    (root / "sub" / "c.dcm").write_bytes(dicom_bytes(xray_like(seed=3).astype(np.uint16)))
    Image.fromarray(xray_like(seed=4)).save(root / "sub" / "a.png")  # same stem as ../a.png
    (root / "notes.txt").write_text("not an image, and not an image suffix: ignored by the walk")
    (root / "fake.png").write_text("text renamed .png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("cli"))


def test_predict_folder_reports_bad_files_and_predicts_the_rest(cli: typer.Typer, run: Path, images: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", str(run), str(images), "--format", "json"])
    assert result.exit_code == 1
    assert f"error: {images / 'fake.png'}: not a supported image format" in result.stderr
    assert "1 of 5 files failed" in result.stderr
    rows = json.loads(result.stdout)
    expected = Predictor.load(run).predict([images / "a.png", images / "sub" / "b.jpg"])
    by_source = {r["source"]: r for r in rows}
    assert sorted(by_source) == sorted(str(images / n) for n in ["a.png", "sub/b.jpg", "sub/c.dcm", "sub/a.png"])
    for e in expected:
        assert by_source[e.source]["label"] == e.label
        assert by_source[e.source]["probabilities"] == pytest.approx(e.probabilities)


def test_predict_shows_progress_on_stderr_past_one_batch(cli: typer.Typer, run: Path, images: Path) -> None:
    one_batch = CliRunner().invoke(cli, ["predict", str(run), str(images), "-f", "json"])
    several = CliRunner().invoke(cli, ["predict", str(run), str(images), "-f", "json", "--batch-size", "2"])
    assert "predict" not in one_batch.stderr
    assert "predict: 100%" in several.stderr and "5/5" in several.stderr  # every file counted, failed ones too
    rows, reference = json.loads(several.stdout), json.loads(one_batch.stdout)  # stdout stays the results alone
    assert [(r["source"], r["label"]) for r in rows] == [(r["source"], r["label"]) for r in reference]
    for r, ref in zip(rows, reference, strict=True):  # other batch shapes round differently in the last bits
        assert r["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-6)


def test_predict_all_good_exits_zero_in_every_format(cli: typer.Typer, run: Path, images: Path) -> None:
    files = [str(images / "a.png"), str(images / "sub" / "c.dcm")]
    table = CliRunner().invoke(cli, ["predict", str(run), *files])
    assert table.exit_code == 0, table.output
    assert "| file" in table.stdout and "p_PNEUMONIA" in table.stdout and "c.dcm" in table.stdout
    assert "in_distribution" not in table.stdout  # no OOD detector: no empty columns
    out = CliRunner().invoke(cli, ["predict", str(run), *files, "-f", "csv"])
    assert out.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert float(r["p_NORMAL"]) + float(r["p_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-6)
    bad = CliRunner().invoke(cli, ["predict", str(run), *files, "-f", "xml"])
    assert bad.exit_code == 2 and "--format must be one of" in bad.stderr


def test_an_unexpected_decoder_error_loses_its_file_not_the_batch(
    cli: typer.Typer, run: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pneumo.inference import predictor as predictor_module

    real = predictor_module.Predictor.prepare

    def prepare(self, source, **kwargs):
        if str(source).endswith("b.jpg"):
            raise ValueError("UID is not a transfer syntax.")  # what pydicom raised for an unknown one
        return real(self, source, **kwargs)

    monkeypatch.setattr(predictor_module.Predictor, "prepare", prepare)
    result = CliRunner().invoke(cli, ["predict", str(run), str(images / "a.png"), str(images / "sub"), "-f", "csv"])
    assert result.exit_code == 1
    assert f"error: {images / 'sub' / 'b.jpg'}: ValueError: UID is not a transfer syntax." in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert str(images / "a.png") in {r["file"] for r in rows} and len(rows) == 3


def test_predict_writes_cam_overlays(cli: typer.Typer, run: Path, images: Path, tmp_path: Path) -> None:
    args = ["predict", str(run), str(images / "sub"), str(images / "a.png"), "--cam", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["a-1.cam.png", "a.cam.png", "b.cam.png", "c.cam.png"]
    with Image.open(tmp_path / "b.cam.png") as img:
        assert img.size == (40, 48) and img.mode == "RGB"
    # each row names its overlay (two inputs called a.png: which overlay is whose is not guessable)
    as_csv = CliRunner().invoke(cli, [*args, "-f", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    cams = {r["file"]: Path(r["cam"]) for r in rows}
    assert sorted(p.name for p in cams.values()) == written and all(p.parent == tmp_path for p in cams.values())
    assert all(cam.name.startswith(Path(file).stem) for file, cam in cams.items())
    assert cams[str(images / "a.png")].name == "a-1.cam.png"  # the second a: walked after sub/
    as_json = json.loads(CliRunner().invoke(cli, [*args, "-f", "json"]).stdout)
    assert [Path(item["cam"]).name for item in as_json] == [Path(r["cam"]).name for r in rows]
    assert "cam" in result.stdout.splitlines()[0]  # the table too


def test_predict_missing_model_and_no_images(cli: typer.Typer, run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "nope"), str(tmp_path)])
    assert result.exit_code == 2 and "neither a run folder nor an .onnx file" in result.stderr
    empty = CliRunner().invoke(cli, ["predict", str(run), str(tmp_path)])
    assert empty.exit_code == 1 and f"no image files found in {tmp_path}" in empty.stderr
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.webp").write_bytes(b"RIFF0000WEBPVP8 ")
    only_others = CliRunner().invoke(cli, ["predict", str(run), str(tmp_path)])
    assert only_others.exit_code == 1 and "skipped 2 file(s) that are not images" in only_others.stderr


def test_export_then_predict_with_onnx(cli: typer.Typer, run: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(run), "--onnx", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and f"wrote {out}" in result.stdout
    pred = CliRunner().invoke(cli, ["predict", str(out), str(images / "a.png"), "-f", "json"])
    assert pred.exit_code == 0
    assert json.loads(pred.stdout)[0]["label"] == Predictor.load(run).predict(images / "a.png").label
    no_cam = CliRunner().invoke(cli, ["predict", str(out), str(images / "a.png"), "--cam", str(tmp_path)])
    assert no_cam.exit_code == 2 and "--cam: Grad-CAM needs the PyTorch run folder" in no_cam.stderr


def test_predict_skips_a_dicom_with_a_broken_window(cli: typer.Typer, run: Path, tmp_path: Path) -> None:
    import pydicom

    Image.fromarray(xray_like(seed=5)).save(tmp_path / "good.png")
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(xray_like(seed=6).astype(np.uint16))))
    ds.WindowCenter, ds.WindowWidth = 100, 0  # a zero window width: pydicom's VOI LUT raises ValueError
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    result = CliRunner().invoke(cli, ["predict", str(run), str(tmp_path), "--format", "csv"])
    assert result.exit_code == 1
    assert f"error: {tmp_path / 'broken.dcm'}: cannot apply the DICOM rescale or window" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["file"] for r in rows] == [str(tmp_path / "good.png")]


def test_predict_and_serve_take_a_device(cli: typer.Typer, run: Path, images: Path, tmp_path: Path) -> None:
    ok = CliRunner().invoke(cli, ["predict", str(run), str(images / "a.png"), "-f", "json", "--device", "auto"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)[0]["label"] == Predictor.load(run).predict(images / "a.png").label
    bad_predict = CliRunner().invoke(cli, ["predict", str(run), str(images / "a.png"), "--device", "gpu"])
    bad_serve = CliRunner().invoke(cli, ["serve", str(run), "--device", "gpu"])  # refused before it listens
    for bad in (bad_predict, bad_serve):
        assert bad.exit_code == 2 and "device must be auto, cpu, cuda or cuda:N, got 'gpu'" in bad.output
    onnx = tmp_path / "m.onnx"
    assert CliRunner().invoke(cli, ["export", str(run), "--onnx", str(onnx)]).exit_code == 0
    on_gpu = CliRunner().invoke(cli, ["predict", str(onnx), str(images / "a.png"), "--device", "cuda"])
    assert on_gpu.exit_code == 2 and "ONNX models run on the CPU" in on_gpu.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--timeout", "0"], "--timeout"),
        (["--max-upload-mb", "-1"], "--max-upload-mb"),
        (["--max-pixels", str(10**12)], "above Pillow's own limit"),
    ],
)
def test_serve_refuses_settings_that_cannot_work(cli: typer.Typer, run: Path, options: list, message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", str(run), *options])
    assert result.exit_code == 2 and message in result.output


def test_a_folder_walk_skips_archive_leftovers_and_finds_dicoms_without_a_suffix(tmp_path: Path) -> None:
    from pneumo.cli.use import iter_image_files

    root = tmp_path / "chest_xray"
    (root / "test" / "NORMAL").mkdir(parents=True)
    (root / "__MACOSX" / "test" / "NORMAL").mkdir(parents=True)
    image = encode(Image.fromarray(xray_like()), "JPEG")
    (root / "test" / "NORMAL" / "IM-1.jpeg").write_bytes(image)
    (root / "test" / "NORMAL" / "._IM-1.jpeg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "__MACOSX" / "test" / "NORMAL" / "._IM-1.jpeg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "dicomdir").mkdir()
    (root / "dicomdir" / "IM000001").write_bytes(dicom_bytes(np.zeros((8, 8), np.uint16)))
    (root / "dicomdir" / "NOTES").write_text("not an image, no suffix")
    found = [p.relative_to(root).as_posix() for p in iter_image_files([root])]
    assert found == ["dicomdir/IM000001", "test/NORMAL/IM-1.jpeg"]


def test_serve_with_workers_checks_the_model_in_a_child_and_loads_none_in_the_supervisor(
    cli: typer.Typer, run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor kept a whole model (PyTorch, perhaps a CUDA context) for as long as its workers ran."""
    import uvicorn

    import pneumo.serve.app as serve_app

    started = []
    monkeypatch.setattr(serve_app, "create_app", lambda *a, **k: pytest.fail("the supervisor loaded the model"))
    monkeypatch.setattr(uvicorn, "run", lambda target, **kwargs: started.append((target, kwargs["workers"])))
    result = CliRunner().invoke(cli, ["serve", str(run), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert started == [("pneumo.serve.app:create_app_from_env", 2)]
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoint.json").write_text("{}")
    refused = CliRunner().invoke(cli, ["serve", str(broken), "--workers", "2"])
    assert refused.exit_code == 2 and "unsupported checkpoint format" in refused.stderr and len(started) == 1


def test_serve_workers_get_the_defaults_for_settings_not_given(
    cli: typer.Typer, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a PNEUMO_SERVE_* value left in the environment reached the workers, not the supervisor's check of the settings
    import os

    import uvicorn

    monkeypatch.setenv("PNEUMO_SERVE_MAX_PIXELS", "123")
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kwargs: seen.append(dict(os.environ)))
    result = CliRunner().invoke(cli, ["serve", str(run), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "PNEUMO_SERVE_MAX_PIXELS" not in seen[0] and seen[0]["PNEUMO_SERVE_MODEL"] == str(run.resolve())
    assert seen[0]["PNEUMO_SERVE_REFUSE_OOD"] == "False"
    # --refuse-ood reaches every worker's app
    import pneumo.serve.app as serve_app

    result = CliRunner().invoke(cli, ["serve", str(run), "--workers", "2", "--refuse-ood"])
    assert result.exit_code == 0, result.output
    assert seen[1]["PNEUMO_SERVE_REFUSE_OOD"] == "True"
    made: list[dict] = []
    monkeypatch.setattr(serve_app, "create_app", lambda model, **kwargs: made.append(kwargs))
    serve_app.create_app_from_env()
    assert made[0]["refuse_ood"] is True
    for key in [k for k in os.environ if k.startswith("PNEUMO_SERVE_")]:
        monkeypatch.delenv(key)  # what the command set, gone after the test


def test_a_cam_folder_that_cannot_be_made_is_refused_before_any_work(
    cli: typer.Typer, run: Path, images: Path, tmp_path: Path
) -> None:
    # a file in its place failed with a traceback after the first batch, and no result was printed
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    result = CliRunner().invoke(cli, ["predict", str(run), str(images / "a.png"), "--cam", str(taken)])
    assert result.exit_code == 2 and f"--cam {taken}: cannot create this folder" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_the_api_refuses_a_batch_size_below_one(run: Path, images: Path, batch_size: object) -> None:
    # -1 returned no result for any input, without a word
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        Predictor.load(run, batch_size=batch_size)


def test_predict_warns_on_images_unlike_the_training_data(
    cli: typer.Typer, tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An all-black image got PNEUMONIA at 0.996 with in_distribution false in one column and nothing else."""
    monkeypatch.setattr(runs_ood, "score", lambda params, *, logits, features: (features.mean(1), features.mean(1) > 9))
    monkeypatch.setattr(runs_ood, "check", lambda params: None)
    run = make_fake_run(tmp_path, name="ood", ood={"method": "fake"})
    black = tmp_path / "black.png"
    Image.new("L", (64, 64)).save(black)
    files = [str(black), str(images / "a.png")]
    out = CliRunner().invoke(cli, ["predict", str(run), *files, "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert all(r["in_distribution"] is False and "unreliable" in r["warning"] for r in rows)
    assert "warning: 2 of 2 image(s) are unlike the chest X-rays" in out.stderr and out.stderr.count("warning:") == 1
    assert all(f in out.stderr for f in files)
    table = CliRunner().invoke(cli, ["predict", str(run), str(black)])
    assert table.exit_code == 0 and "warning: 1 of 1 image(s)" in table.stderr and str(black) in table.stderr
    assert table.stderr.count("warning:") == 1  # one warning, not one per output format


def test_predict_refuses_an_image_too_small_for_a_radiograph(cli: typer.Typer, run: Path, tmp_path: Path) -> None:
    tiny = tmp_path / "pixel.png"
    Image.new("RGBA", (1, 1), (0, 0, 0, 0)).save(tiny)
    out = CliRunner().invoke(cli, ["predict", str(run), str(tiny)])
    assert out.exit_code == 1
    assert f"error: {tiny}: image of 1x1 pixels is too small for a radiograph" in out.stderr
