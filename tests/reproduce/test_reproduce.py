from __future__ import annotations

import contextlib
import json
import shutil
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
    other_task = Experiment(name="c", suites=["quick"], train={"task": "bacteria-virus"}, baseline="d")
    with pytest.raises(ValueError, match="needs the same task"):
        _ordered({"c": other_task, "d": Experiment(name="d", suites=["quick"])})
    runs = {"a": {0: Path("/r/a-seed0"), 1: Path("/r/a-seed1")}, "gan": {0: Path("/r/gan")}}
    assert resolve_refs({"w": "run:a", "x": ["run:gan", 1]}, runs, 1) == {"w": "/r/a-seed1", "x": ["/r/gan", 1]}
    assert resolve_refs("run:a", runs, 2) == "/r/a-seed0"  # a seed the source lacks: its first seed


class _Carved(Exception):
    """Raised by the stand-in for ``make_split``: the carve's arguments are known, nothing more is needed."""


def _carve_arguments(exp: Experiment, seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """What the run of ``exp`` with ``seed`` passes to ``make_split`` (seed, val_fraction, keep_official_val, ...).

    Goes the way ``pneumo reproduce`` does: the runner builds the real config (``pneumo.training.build_config`` for
    a train row, ``pneumo.gan.config.load_config`` for a GAN row) and the training's own data loading carves the
    split; training is stubbed out and the carve stops at ``make_split``.
    """
    import pneumo.gan.train as gan_train
    import pneumo.training
    import pneumo.training.data as train_data
    from pneumo.reproduce.runner import _train_one

    carved: dict = {}

    def make_split(records, **kwargs):
        carved.update(kwargs)
        raise _Carved

    configs: list = []
    monkeypatch.setattr(pneumo.training, "train", lambda cfg, **kwargs: configs.append(cfg))
    monkeypatch.setattr(gan_train, "train_gan", lambda config, run_dir, **kwargs: configs.append(config))
    for module in (train_data, gan_train):
        monkeypatch.setattr(module, "discover", lambda source: [])
        monkeypatch.setattr(module, "make_split", make_split)
    run_dirs = {name: {s: tmp_path / "runs" / f"{name}-{s}" for s in range(8)} for name in exp.references()}
    _train_one(exp, seed, tmp_path / "data", tmp_path / "runs" / exp.name, run_dirs, "cpu")
    (config,) = configs
    assert config.seed == seed
    with pytest.raises(_Carved):
        gan_train.load_data(config, progress=False) if exp.kind == "gan" else train_data.resolve_split(config)
    return carved


def test_every_run_reference_shares_the_split_of_the_run_it_starts_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statically, for every seed: a row that starts from another run (weights, GAN images) carves the same split.

    Otherwise the training's leak check (``check_source_runs``) would refuse the row on a GPU lease, after its
    dependencies have spent the time.
    """
    (tmp_path / "data").mkdir()
    checked = 0
    for suite in ("quick", "cpu", "full"):
        experiments = {e.name: e for e in load_suite(suite)}
        for exp in experiments.values():
            for ref in exp.references():
                source = experiments[ref]
                for seed in exp.seeds:
                    source_seed = seed if seed in source.seeds else source.seeds[0]
                    mine = _carve_arguments(exp, seed, tmp_path, monkeypatch)
                    theirs = _carve_arguments(source, source_seed, tmp_path, monkeypatch)
                    assert mine == theirs, (suite, exp.name, seed, ref)
                    checked += 1
    assert checked >= 6  # the cpu GAN rows and the transfer rows, three seeds each, at least


def _binary_auc(predictions: Path) -> float:
    """ROC AUC of a binary run's ``predictions.csv``, from its second class's probability column."""
    import csv

    from sklearn.metrics import roc_auc_score

    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    negative, positive = (k for k in rows[0] if k.startswith("p_"))
    assert {r["true"] for r in rows} == {negative.removeprefix("p_"), positive.removeprefix("p_")}
    return float(
        roc_auc_score([r["true"] == positive.removeprefix("p_") for r in rows], [float(r[positive]) for r in rows])
    )


@pytest.mark.slow
def test_quick_suite_end_to_end_and_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumo.reproduce.runner as runner
    from pneumo.reproduce.runner import reproduce, run_name
    from pneumo.reproduce.status import evaluated_run, read_status

    experiment = {e.name: e for e in load_suite("quick")}
    result = reproduce(None, "quick", tmp_path, n_boot=50)
    names = {r["experiment"] for r in result["rows"]}
    assert names == {e.name for e in load_suite("quick")}
    # the command that reproduces the table is the one given: no --data (the quick data is generated), --n-boot 50
    assert result["command"] == f"pneumo reproduce --suite quick --out {tmp_path.resolve()} --n-boot 50"
    for row in result["rows"]:
        # the tabulated AUC is the one of the run's predictions.csv
        run_dir = tmp_path / "runs" / run_name(experiment[row["experiment"]], row["seed"])
        predictions = evaluated_run(run_dir, read_status(run_dir)) / row["eval"] / "predictions.csv"
        assert row["roc_auc"]["point"] == pytest.approx(_binary_auc(predictions), abs=2e-3)
        assert row["roc_auc"]["low"] <= row["roc_auc"]["point"] <= row["roc_auc"]["high"]
    dummy = next(r for r in result["rows"] if r["experiment"] == "quick-cnn-bacteria-virus-dummy")
    base = next(
        r for r in result["rows"] if r["experiment"] == "quick-cnn-bacteria-virus" and r["seed"] == dummy["seed"]
    )
    delta = dummy["paired_vs_baseline"]["delta_roc_auc"]
    assert delta["point"] == pytest.approx(dummy["roc_auc"]["point"] - base["roc_auc"]["point"], abs=2e-3)
    assert delta["low"] <= delta["point"] <= delta["high"]
    text = (tmp_path / "results.md").read_text()
    assert "quick-cnn-normal-pneumonia" in text and "Paired differences" in text
    # synthetic data: flagged, and no published anchor beside it
    assert result["synthetic_data"] and result["anchors"] == []
    assert "**SYNTHETIC data**" in text and "Kermany et al. 2018" not in text
    # two seeds: one run each (the first keeps the experiment's name), a spread across seeds, pairing seed by seed
    assert (tmp_path / "runs" / "quick-cnn-bacteria-virus").is_dir()
    assert (tmp_path / "runs" / "quick-cnn-bacteria-virus-seed1").is_dir()
    spread = {e["experiment"]: e for e in result["seed_summary"]}
    assert set(spread) == {"quick-cnn-bacteria-virus", "quick-cnn-bacteria-virus-dummy"}
    assert (
        spread["quick-cnn-bacteria-virus"]["seeds"] == [0, 1]
        and "delta_roc_auc_vs_baseline" in spread[dummy["experiment"]]
    )
    assert "Across seeds" in text and "`quick-cnn-bacteria-virus-dummy` - `quick-cnn-bacteria-virus` (seed 1)" in text
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["suite"] == "quick"
    # each row carries the commit its run was trained at (its env.json), which the report header lists
    commits = {r["commit"] for r in written["rows"]}
    run_dir = tmp_path / "runs" / "quick-cnn-normal-pneumonia"
    trained = json.loads((run_dir / "env.json").read_text())["git_commit"]
    assert commits == ({trained[:7] + ("-dirty" if trained.endswith("-dirty") else "")} if trained else {None})
    assert written["run_commits"] == {(trained and next(iter(commits))) or "unknown": len(written["rows"])}

    # a second call trains nothing: every experiment is finished
    monkeypatch.setattr(runner, "_train_one", lambda *a, **k: pytest.fail("a finished experiment was trained again"))
    again = reproduce(None, "quick", tmp_path, n_boot=50)
    assert [r["roc_auc"] for r in again["rows"]] == [r["roc_auc"] for r in result["rows"]]
    # --report-only tabulates what is finished and trains nothing, even where nothing is finished
    assert [r["experiment"] for r in reproduce(None, "quick", tmp_path, n_boot=50, report_only=True)["rows"]] == [
        r["experiment"] for r in result["rows"]
    ]
    assert reproduce(None, "quick", tmp_path / "empty", n_boot=50, report_only=True)["rows"] == []
    # a report that does not repeat --n-boot states the replicates its rows were evaluated with (it said 1000)
    reported = reproduce(None, "quick", tmp_path, report_only=True)
    assert reported["n_boot"] == 50 and reported["command"].endswith("--n-boot 50")
    assert "(50 replicates)" in (tmp_path / "results.md").read_text()

    # a copied out folder reports its own runs: with the original's gone, the same table
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "synthetic-data")  # the runs' recorded data path is gone too
    copied = reproduce(None, "quick", moved, n_boot=50, report_only=True)
    assert [r["roc_auc"] for r in copied["rows"]] == [r["roc_auc"] for r in result["rows"]]
    assert copied["synthetic_data"] and copied["anchors"] == []  # was presented as real data, beside the anchors


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
    from pneumo.reproduce.runner import run_name, seeds_to_run

    row = next(e for e in load_suite("full") if e.name == "cnn-normal-pneumonia-224")
    assert row.seeds == [0, 1, 2]
    assert seeds_to_run(row, None) == [0, 1, 2] and seeds_to_run(row, 1) == [0] and seeds_to_run(row, 5) == [0, 1, 2]
    assert seeds_to_run(row, None, [2]) == [2] and seeds_to_run(row, 2, [0, 2]) == [0]
    assert seeds_to_run(row, 1, [2]) == []
    # the first seed's run keeps the experiment's name, so adding seeds to a finished row keeps its run
    assert [run_name(row, s) for s in row.seeds] == [row.name, f"{row.name}-seed1", f"{row.name}-seed2"]


def test_a_seed_no_selected_experiment_declares_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from pneumo.reproduce.runner import reproduce

    with pytest.raises(ValueError, match=r"seed\(s\) \[7\]"):
        reproduce(None, "quick", tmp_path, only_seeds=[7])
    assert not (tmp_path / "synthetic-data").exists()


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
    assert tried == [e.name for e in load_suite("quick") for _ in e.seeds]  # every row and seed was attempted
    assert result["rows"] == [] and [f["experiment"] for f in result["failed"]] == tried
    assert "FileNotFoundError: weights for" in result["failed"][0]["error"]
    text = (tmp_path / "results.md").read_text()
    assert "## Failed in this call" in text and tried[-1] in text
    assert not any((tmp_path / "runs").glob(f"*/{runner.STATUS_FILE}"))  # nothing marked finished


def _row(name: str, seed: int, auc: float, delta: float | None = None) -> dict:
    ci = {"point": auc, "low": auc - 0.02, "high": auc + 0.02}
    row = {"experiment": name, "seed": seed, "seeds_declared": 3, "task": "bacteria-virus", "model": "cnn",
           "weights": "none", "image_size": 224, "epochs": 30, "wall_time": "1m", "device": "cuda", "roc_auc": ci,
           "accuracy": {"point": 0.9, "low": 0.88, "high": 0.92}}  # fmt: skip
    row["baseline"] = "base" if delta is not None else None
    if delta is not None:
        d = {"point": delta, "low": delta - 0.01, "high": delta + 0.01}
        row["paired_vs_baseline"] = {"delta_roc_auc": d, "delta_accuracy": d, "n_images": 390}
    return row


def test_several_seeds_give_mean_and_spread_and_pair_seed_by_seed(tmp_path: Path) -> None:
    from pneumo.reproduce.anchors import ANCHORS
    from pneumo.reproduce.results import _baseline_run, render_markdown, seed_summary

    gan_auc, base_auc = (0.91, 0.92, 0.96), (0.90, 0.92, 0.94)
    rows = [_row("base", s, base_auc[s]) for s in range(3)]
    rows += [_row("gan", s, gan_auc[s], delta=gan_auc[s] - base_auc[s]) for s in range(3)]
    rows.append({**_row("single", 0, 0.8), "seeds_declared": 1})
    summary = {e["experiment"]: e for e in seed_summary(rows)}
    assert set(summary) == {"base", "gan"}  # one seed gives no spread
    auc = summary["base"]["metrics"]["roc_auc"]
    assert auc["mean"] == pytest.approx(0.92) and auc["sd"] == pytest.approx(0.02)
    assert (auc["min"], auc["max"]) == (0.90, 0.94) and summary["base"]["seeds"] == [0, 1, 2]
    assert summary["gan"]["delta_roc_auc_vs_baseline"]["mean"] == pytest.approx(0.01)
    assert "accuracy" in summary["base"]["metrics"] and "sensitivity" not in summary["base"]["metrics"]

    machine = {"platform": "linux", "cpu_count": 2, "gpu": None, "torch": "2"}
    result = {"suite": "full", "command": "c", "commit": "abc", "created": "now", "machine": machine, "data": "d",
              "n_boot": 10, "rows": rows, "seed_summary": seed_summary(rows), "anchors": ANCHORS}  # fmt: skip
    text = render_markdown(result)
    assert "| base (seed 1) |" in text and "| single |" in text
    assert "Kermany et al. 2018" in text and "SYNTHETIC" not in text
    assert "metrics at the validated operating point (Youden's J on validation)" in text
    # a threshold chosen otherwise (pneumo evaluate --target-sensitivity on a run) is named, not called Youden's J
    for row in rows:
        row["threshold_method"] = "sensitivity >= 0.95" if row["experiment"] == "single" else "Youden's J"
    text = render_markdown(result)
    assert "(base (seed 0): Youden's J; " in text and "; single: sensitivity >= 0.95 on validation)" in text
    assert "| gan | 0, 1, 2 | 0.900 ± 0.000 |" in text and "+0.010 ± 0.010 |" in text
    assert "`gan` - `base` (seed 2): ROC AUC 0.020 [0.010, 0.030]" in text

    # the baseline of seed s is the baseline's run of seed s (its first seed when it has no such seed)
    from pneumo.reproduce.suite import Experiment

    base = Experiment(name="base", suites=["full"], seeds=[0, 1])
    entries = [(base, 0, tmp_path / "base-seed0"), (base, 1, tmp_path / "base-seed1")]
    assert _baseline_run(entries, "base", 1) == (1, tmp_path / "base-seed1")
    assert _baseline_run(entries, "base", 2) == (0, tmp_path / "base-seed0")
    assert _baseline_run(entries, "other", 0) is None

    # a difference against another seed of the baseline is labelled, and left out of the spread across seeds
    rows[5]["paired_vs_baseline"]["baseline_seed"] = 0
    assert "delta_roc_auc_vs_baseline" not in {e["experiment"]: e for e in seed_summary(rows)}["gan"]
    text = render_markdown({**result, "rows": rows, "seed_summary": seed_summary(rows)})
    assert "`gan` - `base` (seed 2) against the baseline's seed 0 (its own seed is missing): ROC AUC" in text


@pytest.mark.parametrize("kind", ["train", "gan"])
def test_a_run_interrupted_before_its_first_checkpoint_starts_again(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only config.yaml (interrupted while caching or in epoch 1): resume has nothing to resume and a fresh start
    refuses a used folder, so the row could never finish; the runner clears the folder and starts it again."""
    import pneumo.gan.train as gan_train
    import pneumo.training
    from pneumo.reproduce.runner import _train_one
    from pneumo.runs.format import STATE_TENSORS

    calls: list[str] = []
    monkeypatch.setattr(pneumo.training, "train", lambda cfg, **kw: calls.append(f"train {Path(cfg.out).name}"))
    monkeypatch.setattr(pneumo.training, "resume", lambda run_dir, **kw: calls.append(f"resume {Path(run_dir).name}"))
    monkeypatch.setattr(gan_train, "train_gan", lambda config, run_dir, **kw: calls.append(f"train {run_dir.name}"))
    monkeypatch.setattr(gan_train, "resume_gan", lambda run_dir, **kw: calls.append(f"resume {run_dir.name}"))
    exp = Experiment(name="x", suites=["quick"], kind=kind)
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("epochs: 3\n")
    (run_dir / "split.csv").write_text("path,split\n")

    _train_one(exp, 0, tmp_path, run_dir, {}, "cpu")
    assert calls == ["train x"] and not (run_dir / "config.yaml").exists()

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("epochs: 3\n")
    (run_dir / STATE_TENSORS).write_bytes(b"checkpoint")
    _train_one(exp, 0, tmp_path, run_dir, {}, "cpu")
    assert calls == ["train x", "resume x"] and (run_dir / STATE_TENSORS).exists()


def test_the_evaluated_run_is_found_below_the_run_folder_wherever_it_moved() -> None:
    from pneumo.reproduce.status import evaluated_run

    run = Path("/new/out/runs/acgan")
    assert evaluated_run(run, {"evaluated_run": "classifier"}) == run / "classifier"
    assert evaluated_run(run, {"evaluated_run": "."}) == run and evaluated_run(run, {}) == run
    # absolute paths of earlier versions: the part below the run folder
    assert evaluated_run(run, {"evaluated_run": "/old/out/runs/acgan/classifier"}) == run / "classifier"
    assert evaluated_run(run, {"evaluated_run": "/old/acgan/out/runs/acgan"}) == run


def _write_rows(directory: Path, src_extra: str = "") -> None:
    directory.mkdir(exist_ok=True)
    (directory / "src.yaml").write_text(
        f"name: src\nsuites: [quick]\n{src_extra}train: {{task: normal-pneumonia, model: cnn, epochs: 3}}\n"
    )
    (directory / "dep.yaml").write_text(
        "name: dep\nsuites: [quick]\ntrain: {task: bacteria-virus, model: cnn, epochs: 1, weights: 'run:src'}\n"
    )


def _write_two_seed_row(directory: Path, name: str, weights: str | None = None) -> None:
    """A bacteria-virus CNN row with seeds 0 and 1, starting from ``weights`` (e.g. ``run:src``) when given."""
    start = f", weights: '{weights}'" if weights else ""
    (directory / f"{name}.yaml").write_text(
        f"name: {name}\nsuites: [quick]\nseeds: [0, 1]\ntrain: {{task: bacteria-virus, model: cnn, epochs: 1{start}}}\n"
    )


@pytest.fixture
def stub_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``reproduce`` with training, evaluation and the table stubbed: what it trains and what it tabulates."""
    import pneumo.evaluation.run as evaluation_run
    import pneumo.reproduce.results as results
    import pneumo.reproduce.runner as runner

    state = {"trained": [], "broken": set()}

    def train_one(exp, seed, data, run_dir, run_dirs, device):
        state["trained"].append(run_dir.name)
        if exp.name in state["broken"]:
            raise RuntimeError(f"{exp.name} diverged")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    monkeypatch.setattr(runner, "_train_one", train_one)
    monkeypatch.setattr(runner, "check_dataset", lambda data: None)  # no images: training is stubbed
    monkeypatch.setattr(evaluation_run, "evaluate_run", lambda run, **kw: {"eval_dir": str(run / "eval-test")})
    monkeypatch.setattr(results, "write_results", lambda out, suite, data, entries, **kw: {"entries": entries, **kw})

    def call(experiments: Path, **options) -> dict:
        state["trained"] = []
        result = runner.reproduce(tmp_path / "data", "quick", tmp_path / "out", experiments_dir=experiments, **options)
        return {"trained": state["trained"], "tabulated": [d.name for _, _, d in result["entries"]],
                "failed": {f["experiment"]: f["error"] for f in result["failures"]}}  # fmt: skip

    return call, state


def test_a_row_never_trains_from_an_unfinished_source_and_notices_a_retrained_one(tmp_path: Path, stub_runner) -> None:
    call, state = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    state["broken"] = {"src"}
    first = call(rows)
    assert first["trained"] == ["src"] and first["tabulated"] == []  # dep did not start from the failed src
    assert "src diverged" in first["failed"]["src"] and "needs src" in first["failed"]["dep"]

    state["broken"] = set()
    second = call(rows)
    assert second["trained"] == ["src", "dep"] and second["tabulated"] == ["src", "dep"] and not second["failed"]
    status = json.loads((tmp_path / "out" / "runs" / "dep" / "reproduce.json").read_text())
    src_status = json.loads((tmp_path / "out" / "runs" / "src" / "reproduce.json").read_text())
    assert status["depends_on"] == {"src": src_status["finished"]} and status["evaluated_run"] == "."

    # src retrained since (another finish stamp): dep's result came from a run that is gone
    src_status["finished"] = "2099-01-01T00:00:00+00:00"
    (tmp_path / "out" / "runs" / "src" / "reproduce.json").write_text(json.dumps(src_status))
    third = call(rows)
    assert third["trained"] == [] and third["tabulated"] == ["src"] and "no longer there" in third["failed"]["dep"]


def test_a_finished_run_of_another_declaration_is_not_tabulated_under_this_one(tmp_path: Path, stub_runner) -> None:
    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    assert call(rows)["tabulated"] == ["src", "dep"]

    _write_rows(rows, src_extra="description: reworded\n")  # wording only: still the same result
    assert call(rows)["tabulated"] == ["src", "dep"]

    (rows / "src.yaml").write_text(
        "name: src\nsuites: [quick]\ntrain: {task: normal-pneumonia, model: cnn, epochs: 6}\n"
    )
    edited = call(rows)
    assert edited["trained"] == [] and "another version of src" in edited["failed"]["src"]

    _write_rows(rows, src_extra="seeds: [5, 0]\n")  # the first seed's run is named after the experiment
    reseeded = call(rows)
    assert "holds seed 0, the declaration asks for seed 5" in reseeded["failed"]["src"]
    assert reseeded["trained"] == ["src-seed0"]


def test_an_interrupted_generation_of_the_quick_data_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumo.reproduce.runner as runner

    partial = tmp_path / "synthetic-data" / "chest_xray"
    (partial / "train" / "NORMAL").mkdir(parents=True)
    (partial / "train" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"half an image")  # no MANIFEST.csv yet
    monkeypatch.setattr(runner, "_train_one", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not now")))
    monkeypatch.setattr(runner, "QUICK_DATA_IMAGES", 60)
    result = runner.reproduce(None, "quick", tmp_path, n_boot=10)
    assert (partial / "MANIFEST.csv").is_file() and len(list(partial.rglob("*.jpeg"))) == 60
    assert result["rows"] == [] and all("not now" in f["error"] for f in result["failed"])


def test_quick_data_interrupted_before_its_readme_is_not_taken_for_real_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the README (the synthetic mark) came after the manifest (the "complete" mark): interrupted in between, the
    # folder was used as it was and tabulated as real data, beside the published anchors
    import pneumo.data.synth as synth
    import pneumo.reproduce.runner as runner

    real_write = synth._write_atomic

    def interrupted_at_the_readme(path: Path, data: bytes) -> None:
        if Path(path).name == "README.md":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(runner, "_train_one", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not now")))
    monkeypatch.setattr(runner, "QUICK_DATA_IMAGES", 60)
    monkeypatch.setattr(synth, "_write_atomic", interrupted_at_the_readme)
    with pytest.raises(KeyboardInterrupt):
        runner.reproduce(None, "quick", tmp_path, n_boot=10)
    monkeypatch.setattr(synth, "_write_atomic", real_write)
    result = runner.reproduce(None, "quick", tmp_path, n_boot=10)
    assert result["synthetic_data"] and result["anchors"] == []


def test_processes_side_by_side_generate_the_quick_data_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the second took the first's half-written folder for an interrupted one and removed it under it
    import fcntl
    import threading

    import pneumo.reproduce.runner as runner

    monkeypatch.setattr(runner, "_train_one", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("not now")))
    monkeypatch.setattr(runner, "QUICK_DATA_IMAGES", 60)
    (tmp_path / "synthetic-data").mkdir()
    with open(tmp_path / "synthetic-data" / ".generating.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is generating
        second = threading.Thread(target=runner.reproduce, args=(None, "quick", tmp_path), kwargs={"n_boot": 10})
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and not (tmp_path / "synthetic-data" / "chest_xray").exists()  # it waits
        fcntl.flock(lock, fcntl.LOCK_UN)
    second.join(timeout=120)
    assert not second.is_alive() and (tmp_path / "synthetic-data" / "chest_xray" / "MANIFEST.csv").is_file()


def test_declared_task_defaults_match_the_configs() -> None:
    from pneumo.gan.config import TASK
    from pneumo.reproduce.suite import DEFAULT_TASK, GAN_TASK
    from pneumo.training.config import TrainConfig

    assert GAN_TASK == TASK and TrainConfig.model_fields["task"].default == DEFAULT_TASK


def test_a_row_another_process_is_training_is_left_to_it(tmp_path: Path, stub_runner) -> None:
    """Two calls on one --out: the second neither clears nor trains a folder the first holds (it cleared a folder
    without a checkpoint yet, i.e. one still caching, and trained in it at the same time)."""
    from pneumo.reproduce.runner import claimed

    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    dep = tmp_path / "out" / "runs" / "dep"
    dep.mkdir(parents=True)
    (dep / "config.yaml").write_text("caching, no checkpoint yet\n")
    with claimed(dep) as ours:
        assert ours
        busy = call(rows)
    assert busy["trained"] == ["src"] and "another process is training this row" in busy["failed"]["dep"]
    assert (dep / "config.yaml").read_text() == "caching, no checkpoint yet\n"  # not cleared
    assert call(rows)["tabulated"] == ["src", "dep"]  # released: trained now


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_source_another_process_is_training_is_waited_for(tmp_path: Path, stub_runner, other_finishes: bool) -> None:
    # `--seed 0` and `--seed 1` side by side: the second found the one-seed GAN locked by the first, left it, and so
    # failed its GAN-balanced row at once (an H100 lease lost two rows that way)
    import threading

    from pneumo.reproduce.runner import claimed

    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    _write_two_seed_row(rows, "dep", weights="run:src")
    status = tmp_path / "out" / "runs" / "src" / "reproduce.json"
    if other_finishes:
        assert call(rows, only_seeds=[0])["trained"] == ["src", "dep"]
        finished = status.read_text()
        status.unlink()  # src as the first process leaves it: being trained
    result: dict = {}
    with claimed(status.parent) as ours:  # the first process trains src
        assert ours
        second = threading.Thread(target=lambda: result.update(call(rows, only_seeds=[1])))
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive() and not result  # it waits instead of failing dep-seed1
        if other_finishes:
            status.write_text(finished)
    second.join(timeout=60)
    assert not second.is_alive() and not result["failed"]
    assert result["trained"] == (["dep-seed1"] if other_finishes else ["src", "dep-seed1"])


def test_a_finished_row_tested_on_another_dataset_is_refused(tmp_path: Path, stub_runner) -> None:
    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    data = tmp_path / "data"
    for rel in ("train/NORMAL/IM-0001-0001.jpeg", "train/PNEUMONIA/person1_virus_1.jpeg",
                "test/NORMAL/IM-0002-0001.jpeg", "test/PNEUMONIA/person2_virus_1.jpeg"):  # fmt: skip
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"")
    assert call(rows)["tabulated"] == ["src", "dep"]
    for run in ("src", "dep"):  # what each run was tested on, as pneumo train writes it
        (tmp_path / "out" / "runs" / run / "split.csv").write_text(
            "path,split,label,subtype,patient_id\ntest/NORMAL/IM-0002-0001.jpeg,test,NORMAL,normal,IM-0002\n"
            "test/PNEUMONIA/person2_virus_1.jpeg,test,PNEUMONIA,virus,person2\n"
        )
    assert call(rows)["tabulated"] == ["src", "dep"]  # the same test split
    (data / "test/NORMAL/IM-0003-0001.jpeg").write_bytes(b"")  # the call's dataset has another test split now
    other = call(rows)
    assert other["tabulated"] == [] and "tested on other images than the test split" in other["failed"]["src"]
    assert "(2 vs 3 files, 1 differ)" in other["failed"]["src"]


def test_an_interrupted_row_is_not_resumed_under_an_edited_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed with its old config and stamped with the edited YAML's key, the row would pass as the edited one."""
    import pneumo.training as training
    from pneumo.reproduce.runner import _train_one
    from pneumo.runs.format import STATE_TENSORS

    calls: list[str] = []

    def interrupted_train(cfg, command=None, after=None):
        calls.append("train")
        (Path(cfg.out) / STATE_TENSORS).write_bytes(b"a checkpoint")  # then the process dies

    monkeypatch.setattr(training, "train", interrupted_train)
    monkeypatch.setattr(training, "resume", lambda run_dir, **kw: calls.append("resume"))
    rows = tmp_path / "experiments"
    _write_rows(rows)
    src = next(e for e in load_suite("quick", rows) if e.name == "src")
    run_dir = tmp_path / "out" / "runs" / "src"
    _train_one(src, 0, tmp_path / "data", run_dir, {}, "cpu")
    _train_one(src, 0, tmp_path / "data", run_dir, {}, "cpu")  # the same declaration resumes
    assert calls == ["train", "resume"]
    edited_yaml = "name: src\nsuites: [quick]\ntrain: {task: normal-pneumonia, model: cnn, epochs: 9}\n"
    (rows / "src.yaml").write_text(edited_yaml)
    edited = next(e for e in load_suite("quick", rows) if e.name == "src")
    with pytest.raises(ValueError, match="runs/src was started from another version of src's YAML; move it away"):
        _train_one(edited, 0, tmp_path / "data", run_dir, {}, "cpu")
    assert calls == ["train", "resume"]


def test_a_seed_process_trains_the_one_seed_source_its_rows_need(tmp_path: Path, stub_runner) -> None:
    # the full suite's acgan-64 has one seed and feeds the GAN-balanced rows of seeds 0-2: `--seed 1` alone (a copy
    # of --out, or the first of several processes) failed them for want of it
    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    _write_two_seed_row(rows, "dep", weights="run:src")
    result = call(rows, only_seeds=[1])
    assert result["trained"] == ["src", "dep-seed1"] and not result["failed"]
    assert result["tabulated"] == ["src", "dep-seed1"]


def test_a_row_another_process_finished_while_this_one_waited_for_its_lock_is_not_redone(
    tmp_path: Path, stub_runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # evaluating it again restamped it, and every row that had started from it was refused from then on
    import pneumo.reproduce.runner as runner

    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    assert call(rows)["tabulated"] == ["src", "dep"]
    status = tmp_path / "out" / "runs" / "src" / "reproduce.json"
    finished = status.read_text()
    status.unlink()  # not finished when this process looks ...
    real_claimed = runner.claimed

    @contextlib.contextmanager
    def claimed_after_the_other_finished(run_dir: Path, **options):
        if run_dir.name == "src" and not status.exists():
            status.write_text(finished)  # ... finished by the other process before the lock is free
        with real_claimed(run_dir, **options) as ours:
            yield ours

    monkeypatch.setattr(runner, "claimed", claimed_after_the_other_finished)
    again = call(rows)
    assert again["trained"] == [] and again["tabulated"] == ["src", "dep"] and not again["failed"]
    assert status.read_text() == finished


def test_rows_that_do_not_need_a_held_source_train_while_it_is_waited_for(tmp_path: Path, stub_runner) -> None:
    # a `--seed 1` process blocked on the GAN another process trained, and trained nothing meanwhile
    import threading

    from pneumo.reproduce.runner import claimed

    call, state = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    _write_two_seed_row(rows, "dep", weights="run:src")
    _write_two_seed_row(rows, "plain")
    result: dict = {}
    with claimed(tmp_path / "out" / "runs" / "src") as ours:
        assert ours
        second = threading.Thread(target=lambda: result.update(call(rows, only_seeds=[1])))
        second.start()
        second.join(timeout=2.0)
        assert second.is_alive() and state["trained"] == ["plain-seed1"]  # the independent row went first
    second.join(timeout=60)
    assert not second.is_alive() and not result["failed"]
    assert result["trained"] == ["plain-seed1", "src", "dep-seed1"]
    assert result["tabulated"] == ["src", "dep-seed1", "plain-seed1"]  # in the suite's order


def test_a_row_whose_source_finished_again_while_it_trained_is_not_passed_off_as_trained_from_the_new_one(
    tmp_path: Path, stub_runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the finish stamp recorded the source as it was at the end, not the run the row started from
    import pneumo.reproduce.runner as runner

    call, _ = stub_runner
    rows = tmp_path / "experiments"
    _write_rows(rows)
    state = tmp_path / "out" / "runs" / "src" / "reproduce.json"
    stubbed = runner._train_one

    def dep_trains_while_src_is_retrained(exp, seed, data, run_dir, run_dirs, device):
        if exp.name == "dep":
            stamps = {"src": json.loads(state.read_text())["finished"]}
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / runner.STARTED_FILE).write_text(json.dumps({"depends_on": stamps}))  # as the real one does
            status = json.loads(state.read_text())
            state.write_text(json.dumps(status | {"finished": "2099-01-01T00:00:00+00:00"}))  # src again, elsewhere
        return stubbed(exp, seed, data, run_dir, run_dirs, device)

    monkeypatch.setattr(runner, "_train_one", dep_trains_while_src_is_retrained)
    result = call(rows)
    assert result["tabulated"] == ["src"] and "src finished again while this row trained" in result["failed"]["dep"]
    assert not (tmp_path / "out" / "runs" / "dep" / "reproduce.json").exists()


def test_a_missing_dataset_is_refused_once_before_any_row(tmp_path: Path) -> None:
    # each row failed on its own, with a traceback and a run folder left behind
    from pneumo.data.records import DatasetError
    from pneumo.reproduce.runner import reproduce

    with pytest.raises(DatasetError, match="no such file or folder"):
        reproduce(tmp_path / "nowhere", "cpu", tmp_path / "out")
    assert not (tmp_path / "out" / "runs").exists()


def test_the_cpu_suite_pins_float32_without_changing_its_declarations() -> None:
    """amp=auto trains bf16 on a CPU with native bfloat16; the published CPU rows were float32 and must stay so."""
    from pneumo.reproduce.runner import declaration_key

    rows = [exp for exp in load_suite("cpu") if exp.kind == "train"]
    assert rows and all(exp.train.get("amp") is False for exp in rows)
    for exp in rows:  # the rows finished before the pin (float32 by default then) remain its results
        unpinned = exp.model_copy(update={"train": {k: v for k, v in exp.train.items() if k != "amp"}})
        assert declaration_key(exp, 0) == declaration_key(unpinned, 0)


def test_results_tabulate_every_task_of_the_task_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task added to the table gets its section in RESULTS.md, binary or not by ``Task.is_binary``: the rows were
    looked up by three hard-coded names, so a fourth task's rows vanished."""
    from pneumo.data import tasks
    from pneumo.reproduce.anchors import ANCHORS
    from pneumo.reproduce.results import render_markdown

    extra = tasks.Task("virus-or-not", ("other", "virus"), lambda r: r.subtype, "made up")
    monkeypatch.setitem(tasks.TASKS, extra.name, extra)
    rows = [{**_row("viral", 0, 0.7), "task": "virus-or-not", "sensitivity": {"point": 0.5, "low": 0.4, "high": 0.6}}]
    machine = {"platform": "linux", "cpu_count": 2, "gpu": None, "torch": "2"}
    result = {"suite": "full", "command": "c", "commit": "abc", "created": "now", "machine": machine, "data": "d",
              "n_boot": 10, "rows": rows, "seed_summary": [], "anchors": ANCHORS}  # fmt: skip
    text = render_markdown(result)
    section = text.split("## virus-or-not", 1)[1]
    header = next(line for line in section.splitlines() if line.startswith("| experiment |"))
    assert "| viral (seed 0) |" in section and "sensitivity" in header and "balanced_accuracy" not in header
    assert "| 0.500 [0.400, 0.600] |" in section
