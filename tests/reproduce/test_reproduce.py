from __future__ import annotations

import json
from pathlib import Path

import pytest

from pneumo.reproduce.suite import Experiment, _ordered, load_suite, resolve_refs


def test_suites_parse_and_order_dependencies_first() -> None:
    for suite in ("quick", "cpu", "full"):
        experiments = load_suite(suite)
        seen: set[str] = set()
        for exp in experiments:
            assert exp.references() <= seen, f"{exp.name} runs before what it refers to"
            if exp.baseline:
                assert exp.baseline in seen
            seen.add(exp.name)
    cpu = {e.name: e for e in load_suite("cpu")}
    assert cpu["resnet18-bacteria-virus-transfer"].references() == {"resnet18-normal-pneumonia"}


def test_cycles_and_missing_references_are_errors() -> None:
    a = Experiment(name="a", suites=["quick"], train={"weights": "run:b"})
    b = Experiment(name="b", suites=["quick"], train={"weights": "run:a"})
    with pytest.raises(ValueError, match="cycle"):
        _ordered({"a": a, "b": b})
    with pytest.raises(ValueError, match="refers to 'b'"):
        _ordered({"a": a})
    assert resolve_refs({"w": "run:a", "x": ["run:a", 1]}, {"a": Path("/r/a")}) == {"w": "/r/a", "x": ["/r/a", 1]}


@pytest.mark.slow
def test_quick_suite_end_to_end_and_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pneumo.reproduce.runner import reproduce

    result = reproduce(None, "quick", tmp_path, n_boot=50)
    names = {r["experiment"] for r in result["rows"]}
    assert names == {e.name for e in load_suite("quick")}
    for row in result["rows"]:
        assert row["eval"] and 0.0 <= row["roc_auc"]["point"] <= 1.0
        assert row["roc_auc"]["low"] <= row["roc_auc"]["point"] <= row["roc_auc"]["high"]
    dummy = next(r for r in result["rows"] if r["experiment"] == "quick-cnn-bacteria-virus-dummy")
    delta = dummy["paired_vs_baseline"]["delta_roc_auc"]
    assert delta["low"] <= delta["point"] <= delta["high"]
    text = (tmp_path / "results.md").read_text()
    assert "Kermany et al. 2018" in text and "quick-cnn-normal-pneumonia" in text and "Paired differences" in text
    assert json.loads((tmp_path / "results.json").read_text())["suite"] == "quick"

    # a second call trains nothing: every experiment is finished
    import pneumo.reproduce.runner as runner

    monkeypatch.setattr(runner, "_train_one", lambda *a, **k: pytest.fail("a finished experiment was trained again"))
    again = reproduce(None, "quick", tmp_path, n_boot=50)
    assert [r["roc_auc"] for r in again["rows"]] == [r["roc_auc"] for r in result["rows"]]
    # --report-only tabulates what is finished and trains nothing, even where nothing is finished
    assert [r["experiment"] for r in reproduce(None, "quick", tmp_path, n_boot=50, report_only=True)["rows"]] == [
        r["experiment"] for r in result["rows"]
    ]
    assert reproduce(None, "quick", tmp_path / "empty", n_boot=50, report_only=True)["rows"] == []


def test_only_brings_its_dependencies() -> None:
    from pneumo.reproduce.runner import with_dependencies

    cpu = load_suite("cpu")
    assert with_dependencies({"resnet18-bacteria-virus-transfer"}, cpu) == {
        "resnet18-bacteria-virus-transfer",
        "resnet18-normal-pneumonia",
    }
    assert with_dependencies({"cnn-normal-bacteria-virus-gan-balanced"}, cpu) == {
        "cnn-normal-bacteria-virus-gan-balanced",
        "acgan",
    }


def test_max_seeds_takes_the_first_declared_seeds() -> None:
    from pneumo.reproduce.runner import seeds_to_run

    row = next(e for e in load_suite("full") if e.name == "cnn-normal-pneumonia-224")
    assert row.seeds == [0, 1, 2]
    assert seeds_to_run(row, None) == [0, 1, 2] and seeds_to_run(row, 1) == [0] and seeds_to_run(row, 5) == [0, 1, 2]


def test_report_only_names_the_data_the_runs_used(tmp_path: Path) -> None:
    from pneumo.reproduce.runner import recorded_data

    assert recorded_data(tmp_path) is None
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "config.yaml").write_text("data: /data/chest_xray\nmodel: cnn\n")
    assert recorded_data(tmp_path) == Path("/data/chest_xray")


def test_a_failing_experiment_is_reported_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pneumo.reproduce.runner as runner

    tried: list[str] = []

    def broken(exp, seed, *args, **kwargs):
        tried.append(exp.name)
        raise FileNotFoundError(f"weights for {exp.name} are offline")

    monkeypatch.setattr(runner, "_train_one", broken)
    monkeypatch.setattr(runner, "QUICK_DATA_IMAGES", 60)
    result = runner.reproduce(None, "quick", tmp_path, n_boot=10)
    assert tried == [e.name for e in load_suite("quick")]  # every row was attempted
    assert result["rows"] == [] and [f["experiment"] for f in result["failed"]] == tried
    assert "FileNotFoundError: weights for" in result["failed"][0]["error"]
    text = (tmp_path / "results.md").read_text()
    assert "## Failed in this call" in text and tried[-1] in text
    assert not any((tmp_path / "runs").glob(f"*/{runner.STATUS_FILE}"))  # nothing marked finished
