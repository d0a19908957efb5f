"""``pneumo bench --quick`` end to end through the command line (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pneumo.cli.bench import bench

app = typer.Typer()
app.command()(bench)


def test_quick_run_writes_every_section_and_prints_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    result = CliRunner().invoke(app, ["--quick", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())

    assert report["quick"] is True and report["device"] == "cpu"
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch_threads"] == 1
    assert report["versions"]["torch"] == __import__("torch").__version__
    from pneumo.utils.provenance import git_commit

    assert report["versions"]["pneumo_commit"] == git_commit()  # the code that was measured
    assert report["peak"]["gflops"] > 0

    data = report["data"]
    assert {(r["images"], r["size"]) for r in data["loaders"]} == {("source", 32), ("full-res", 32)}
    for row in data["loaders"]:
        assert row["cache_images_per_s"] > 0 and row["decode_images_per_s"] > 0
    assert all(b["images_per_s"] > 0 and b["n"] > 0 for b in data["cache_build"])

    training = report["training"]
    got = {(r["model"], r["variant"]) for r in training["results"]}
    for model in ("cnn", "resnet18"):
        assert {(model, "naive"), (model, "pneumo"), (model, "resident")} <= got
    for row in training["results"]:
        assert row["images_per_s"] > 0 and 0 <= row["data_wait_share"] <= 1
        assert row["train_gflop_per_image"] > 0 and row["achieved_gflops"] > 0
    assert [c["variant"] for c in training["speedup_chain"]][:2] == ["naive", "cached-nchw"]
    resnet = next(r for r in training["results"] if r["model"] == "resnet18")
    cnn = next(r for r in training["results"] if r["model"] == "cnn")
    assert resnet["train_gflop_per_image"] > cnn["train_gflop_per_image"]

    (inf,) = report["inference"]["results"]
    assert [b["backend"] for b in inf["backends"]] == ["pytorch-eager", "onnxruntime"]
    assert inf["max_abs_diff"]["logits"] <= 1e-4  # the exported graph computes what PyTorch computes
    for b in inf["backends"]:
        assert b["latency_ms_p95"] >= b["latency_ms_p50"] > 0 and b["memory"]["peak_rss_mb"] > 0
    # ONNX start-up in fresh interpreters: without PyTorch loaded the process stays smaller (torch alone adds
    # well over 100 MB of resident memory).
    startup = {s["variant"]: s for s in inf["startup"]}
    assert list(startup) == ["onnx-only", "onnx+torch"]
    assert all(s["runs"] == 1 and s["seconds_median"] > 0 for s in startup.values())
    assert startup["onnx-only"]["peak_rss_mb"] + 100 < startup["onnx+torch"]["peak_rss_mb"]
    assert "### ONNX start-up" in result.output

    assert len(report["targets"]) == 6
    assert {t["passed"] for t in report["targets"][-2:]} == {None}  # no GPU here
    for heading in ("## Data", "## Training", "## Inference", "## Targets", "| target | threshold |"):
        assert heading in result.output
    assert "SMOKE RUN" in report["markdown"]


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        return
    result = CliRunner().invoke(app, ["--quick", "--device", "cuda"])
    assert result.exit_code == 2
    assert "CUDA is not available" in result.output


def test_an_interrupted_run_keeps_what_it_measured(tmp_path: Path, monkeypatch) -> None:
    """A time-capped GPU lease once lost a whole section: every finished measurement must be on disk."""
    import pneumo.bench.train as bench_train
    from pneumo.bench import BenchSettings, run_benchmarks

    real = bench_train.measure_training
    calls: list[str] = []

    def cut_off_after_two(model_name, size, variant, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # what `timeout --signal=INT` does
        calls.append(variant.name)
        return real(model_name, size, variant, **kwargs)

    monkeypatch.setattr(bench_train, "measure_training", cut_off_after_two)
    partial = tmp_path / "b.partial.json"
    settings = BenchSettings.quick_settings(device="cpu", threads=1, sections=("training",), models=("cnn",))
    with pytest.raises(KeyboardInterrupt):
        run_benchmarks(settings, partial=partial, log=lambda _: None)
    saved = json.loads(partial.read_text())
    assert saved["partial"] is True and saved["machine"]["cpu_count"] >= 1
    assert [r["variant"] for r in saved["training"]["results"]] == calls == ["naive", "pneumo"]
    assert all(r["images_per_s"] > 0 for r in saved["training"]["results"])


def test_a_finished_run_removes_its_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    result = CliRunner().invoke(
        app,
        [
            "--quick",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--sections",
            "training",
            "--models",
            "cnn",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and not (tmp_path / "x.partial.json").exists()
    assert "partial" not in json.loads(out.read_text())


@pytest.fixture
def captured_settings(monkeypatch) -> list:
    """The BenchSettings each CLI call builds; the run itself is replaced by a ValueError (exit code 2)."""
    import pneumo.bench

    seen = []

    def capture(settings, **kwargs):
        seen.append(settings)
        raise ValueError("captured")

    monkeypatch.setattr(pneumo.bench, "run_benchmarks", capture)
    return seen


def test_models_and_sizes_bound_the_inference_section_too(captured_settings: list) -> None:
    result = CliRunner().invoke(app, ["--device", "cpu", "--models", "resnet18", "--sizes", "128,224"])
    assert result.exit_code == 2 and "captured" in result.output
    (settings,) = captured_settings
    assert settings.models == settings.inference_models == ("resnet18",)
    assert settings.sizes == (128, 224) and settings.inference_size == 224


def test_startup_runs_reach_the_settings(captured_settings: list) -> None:
    CliRunner().invoke(app, ["--device", "cpu", "--startup-runs", "5"])
    CliRunner().invoke(app, ["--quick", "--device", "cpu"])
    assert [s.startup_runs for s in captured_settings] == [5, 1]


def test_options_that_could_not_work_are_refused_before_measuring(captured_settings: list, tmp_path: Path) -> None:
    refused = {
        "--max-images applies to --data": ["--max-images", "4"],
        "not a writable file path": ["--out", str(tmp_path)],  # a folder
        "the folder must exist": ["--out", str(tmp_path / "missing" / "x.json")],
    }
    for message, args in refused.items():
        result = CliRunner().invoke(app, ["--quick", "--device", "cpu", *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert captured_settings == []  # nothing was measured
    CliRunner().invoke(app, ["--device", "cpu", "--sizes", "32,32,64"])
    assert captured_settings[0].sizes == (32, 64)  # a second build at 32 px would time a cache hit
