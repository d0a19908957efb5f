"""`pneumo train` -> `pneumo evaluate` -> `pneumo compare` end to end on synthetic data, through the CLI."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pneumo.cli import evaluate as evaluate_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _app() -> typer.Typer:
    """``pneumo.cli.app`` when it has the commands; else a local app with the same command functions."""
    from pneumo.cli import app
    from pneumo.cli import train as train_cli

    registered = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    if {"train", "evaluate", "compare"} <= registered:
        return app
    local = typer.Typer()
    local.command("train")(train_cli.train)
    local.command("evaluate")(evaluate_cli.evaluate)
    local.command("compare")(evaluate_cli.compare)
    return local


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})
        self.scripts += tag == "script"


@pytest.fixture(scope="module")
def cli() -> tuple[CliRunner, typer.Typer]:
    return CliRunner(), _app()


def _invoke(cli: tuple[CliRunner, typer.Typer], *args: str) -> str:
    runner, app = cli
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _train(cli, data: Path, out: Path, seed: int) -> Path:
    _invoke(
        cli, "train", "--data", data, "--model", "cnn", "--epochs", "1", "--image-size", "32", "--batch-size", "16",
        "--seed", seed, "--out", out, "--set", "progress=false", "--set", "max_steps_per_epoch=4",
    )  # fmt: skip
    assert (out / "best.safetensors").is_file()
    return out


def test_train_evaluate_compare(cli, synthetic_data: Path, tmp_path: Path) -> None:
    run_a = _train(cli, synthetic_data, tmp_path / "run-a", seed=0)
    output = _invoke(cli, "evaluate", run_a, "--n-boot", "100")
    assert re.search(r"sensitivity\s+\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]\s+\d\.\d{3} \[", output), output
    assert "t = 0.50" in output and "validated t = " in output

    eval_dir = run_a / "eval-chest-xray-test"
    result = json.loads((eval_dir / "metrics.json").read_text())
    assert result["bootstrap"]["n_boot"] == 100
    assert f"{result['n_images']} images" in output

    # The report is one self-contained file embedding every plot that was written.
    parser = _Images()
    parser.feed((eval_dir / "report.html").read_text())
    assert parser.scripts == 0
    embedded = {img["alt"]: img["src"] for img in parser.images}
    assert set(embedded) == set(result["plots"])
    pngs = sorted(eval_dir.glob("*.png"))
    assert sorted(p.name for p in pngs) == sorted(result["plots"].values())
    assert {"roc.png", "pr.png", "reliability.png", "training_curves.png", "confident_errors.png"} <= {
        p.name for p in pngs
    }
    for caption, name in result["plots"].items():
        prefix = "data:image/png;base64,"
        assert embedded[caption].startswith(prefix)
        data = base64.b64decode(embedded[caption][len(prefix) :])
        assert data.startswith(PNG_MAGIC) and data == (eval_dir / name).read_bytes()
    assert (run_a / "MODEL_CARD.md").is_file()
    # `pneumo train` fitted the OOD detector after training, and `pneumo evaluate` reports its rates
    assert json.loads((run_a / "checkpoint.json").read_text())["ood"]["weights_sha256"]
    assert "Out-of-distribution check" in (eval_dir / "report.html").read_text()

    # --json prints metrics.json; the stored operating point is reused.
    as_json = json.loads(_invoke(cli, "evaluate", run_a, "--json", "--no-plots", "--n-boot", "50"))
    assert as_json["threshold"] == result["threshold"] and as_json["calibration_fitted"] is False

    run_b = _train(cli, synthetic_data, tmp_path / "run-b", seed=1)
    _invoke(cli, "evaluate", run_b, "--no-plots", "--n-boot", "50")
    table = _invoke(cli, "compare", run_a, run_b, "--markdown").splitlines()
    assert table[0].startswith("| run | task | model |") and "roc_auc" in table[0]
    assert table[2].startswith("| run-a |") and table[3].startswith("| run-b |")
    auc = json.loads((run_b / "eval-chest-xray-test" / "metrics.json").read_text())
    roc = auc["metrics"]["at_validated_threshold"]["ci"]["roc_auc"]
    assert f"{roc['point']:.3f} [{roc['low']:.3f}, {roc['high']:.3f}]" in table[3]

    chosen = _invoke(cli, "compare", run_a, run_b, "--metrics", "roc_auc,brier").splitlines()
    header = chosen[0].split()
    assert "brier" in header and "sensitivity" not in header

    # paired differences from a baseline run, on all shared images or on a listed subset (an audit's matched images)
    from pneumo.reproduce.paired import paired_difference

    preds = [run / "eval-chest-xray-test" / "predictions.csv" for run in (run_b, run_a)]
    paired = _invoke(cli, "compare", run_a, run_b, "--paired-with", run_a, "--n-boot", "200").splitlines()
    whole = paired_difference(*preds, n_boot=200)
    auc = whole["delta_roc_auc"]
    assert paired[-1] == (
        f"run-b - run-a (paired): ROC AUC {auc['point']:+.3f} [{auc['low']:+.3f}, {auc['high']:+.3f}], accuracy "
        f"{whole['delta_accuracy']['point']:+.3f} [{whole['delta_accuracy']['low']:+.3f}, "
        f"{whole['delta_accuracy']['high']:+.3f}] ({whole['n_images']} images)"
    )
    listed = (preds[0].read_text().splitlines()[1:])[::2]  # every other test image
    subset = tmp_path / "subset.csv"
    subset.write_text("path\n" + "".join(line.split(",")[0] + "\n" for line in listed))
    as_json = json.loads(
        _invoke(cli, "compare", run_a, run_b, "--paired-with", run_a, "--images", subset, "--json", "--n-boot", "200")
    )
    assert [d["run"] for d in as_json["paired"]] == ["run-b"] and as_json["paired"][0]["n_images"] == len(listed)
    runner, app = cli
    alone = runner.invoke(app, ["compare", str(run_a), "--images", str(subset)])
    assert alone.exit_code == 2 and "give --paired-with" in alone.stderr

    # `pneumo compare runs/*`: an empty folder (a failed start) and a GAN run are skipped with the reason
    runner, app = cli
    (tmp_path / "failed-start").mkdir()
    gan = tmp_path / "acgan"
    gan.mkdir()
    (gan / "config.yaml").write_text("z_dim: 128\ntask: normal-bacteria-virus\n")
    every = runner.invoke(app, ["compare", str(run_a), str(tmp_path / "failed-start"), str(gan)])
    assert every.exit_code == 0 and "| run-a |" not in every.stdout and "run-a" in every.stdout
    assert "failed-start: not a pneumo run folder" in every.stderr and "a GAN run; its class head" in every.stderr
    nothing = runner.invoke(app, ["compare", str(tmp_path / "failed-start")])
    assert nothing.exit_code == 2 and "no classifier run folder" in nothing.stderr
    # a metric no evaluation has is an error, not a column of n/a
    unknown = runner.invoke(app, ["compare", str(run_a), "--metrics", "roc_auc,foo"])
    assert unknown.exit_code == 2 and "no evaluated run has the metric(s) foo" in unknown.stderr


def test_evaluate_rejects_bad_arguments(cli, tmp_path: Path) -> None:
    runner, app = cli
    bad_split = runner.invoke(app, ["evaluate", str(tmp_path), "--split", "train"])
    assert bad_split.exit_code == 2 and "--split" in bad_split.output
    not_a_run = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert not_a_run.exit_code == 2 and "not a pneumo run folder" in not_a_run.output


def test_paired_compare_refuses_another_dataset_and_the_table_names_each(
    cli, synthetic_data: Path, tmp_path: Path
) -> None:
    """Two runs evaluated on different datasets whose file names collide: paired by name, they gave a difference."""
    import shutil

    from PIL import Image

    other_data = Path(shutil.copytree(synthetic_data, tmp_path / "other" / "chest_xray"))
    for path in (other_data / "test").rglob("*.jpeg"):  # the same names and labels, other pictures
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    run_a = _train(cli, synthetic_data, tmp_path / "run-a", seed=0)
    run_c = _train(cli, other_data, tmp_path / "run-c", seed=0)
    for run in (run_a, run_c):
        _invoke(cli, "evaluate", run, "--no-plots", "--n-boot", "50")
    runner, app = cli
    paired = runner.invoke(app, ["compare", str(run_a), str(run_c), "--paired-with", str(run_a), "--n-boot", "100"])
    assert paired.exit_code != 0 and "nan" not in paired.output.lower()
    assert "evaluated different datasets (chest-xray SYNTHETIC " in paired.stderr
    assert "a paired difference needs evaluations of the same images" in paired.stderr
    table = _invoke(cli, "compare", run_a, run_c).splitlines()
    digests = [json.loads((r / "eval-chest-xray-test" / "metrics.json").read_text())["dataset"] for r in (run_a, run_c)]
    assert digests[0]["synthetic"] is True and digests[0]["images_sha256"] != digests[1]["images_sha256"]
    assert "dataset" in table[0].split()
    for line, dataset in zip(table[2:4], digests, strict=True):
        assert f"chest-xray SYNTHETIC {dataset['images_sha256'][:8]}" in line


def test_evaluate_says_how_many_images_were_unreadable_and_where_they_are_listed(
    cli, synthetic_data: Path, tmp_path: Path
) -> None:
    import csv

    from PIL import Image

    run = _train(cli, synthetic_data, tmp_path / "run", seed=0)
    good = sorted((synthetic_data / "test").rglob("*.jpeg"))
    corrupt, tiny = tmp_path / "corrupt.jpeg", tmp_path / "tiny.png"
    corrupt.write_bytes(good[0].read_bytes()[:100])
    Image.new("L", (1, 1)).save(tiny)
    manifest = tmp_path / "with-bad.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([[str(p), p.parent.name] for p in good] + [[str(corrupt), "NORMAL"], [str(tiny), "NORMAL"]])
    output = _invoke(cli, "evaluate", run, "--data", manifest, "--no-plots", "--n-boot", "50")
    listed = run / "eval-with-bad-test" / "unreadable.csv"
    assert f"{len(good)} of {len(good) + 2} images (2 unreadable: see {listed})" in output
    rows = list(csv.DictReader(listed.open(newline="")))
    assert sorted(r["path"] for r in rows) == ["corrupt.jpeg", "tiny.png"]  # relative to the manifest's folder
    assert any("too small for a radiograph" in r["reason"] for r in rows)
