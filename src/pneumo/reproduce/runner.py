"""``pneumo reproduce``: run a suite of declared experiments, resumably, and write the results table."""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import pneumo
from pneumo.reproduce.status import STARTED_FILE, STATUS_FILE, read_status
from pneumo.reproduce.suite import RUN_REF, Experiment, load_suite, resolve_refs
from pneumo.utils.atomic import write_json

log = logging.getLogger(__name__)
QUICK_DATA_IMAGES = 360


def machine_summary() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pneumo": pneumo.__version__,
    }


def with_dependencies(names: set[str], experiments: list[Experiment]) -> set[str]:
    """``names`` plus every experiment they refer to (``run:``), transitively; baselines are not added."""
    by_name = {e.name: e for e in experiments}
    todo, found = list(names), set(names)
    while todo:
        for ref in by_name[todo.pop()].references() - found:
            found.add(ref)
            todo.append(ref)
    return found


def source_runs(run: tuple[str, int], experiments: list[Experiment]) -> set[tuple[str, int]]:
    """The runs (experiment, seed) that ``run`` starts from directly, with the seed :func:`resolve_refs` picks for
    each: the same seed where the source declares it, else its first (a one-seed GAN serves every seed)."""
    by_name = {e.name: e for e in experiments}
    name, seed = run
    return {(ref, seed if seed in by_name[ref].seeds else by_name[ref].seeds[0]) for ref in by_name[name].references()}


def with_source_seeds(runs: set[tuple[str, int]], experiments: list[Experiment]) -> set[tuple[str, int]]:
    """``runs`` (experiment, seed) plus the runs they start from, transitively (:func:`source_runs`).

    So ``--seed 1`` also trains seed 0 of a one-seed source that its rows need, instead of failing them for want of
    it (several ``--seed`` processes on one ``--out`` share it: the others wait for the one training it)."""
    todo, found = list(runs), set(runs)
    while todo:
        for run in source_runs(todo.pop(), experiments) - found:
            found.add(run)
            todo.append(run)
    return found


def run_name(exp: Experiment, seed: int) -> str:
    """``runs/<experiment>`` for the first declared seed, ``runs/<experiment>-seed<N>`` for the others.

    So declaring more seeds for a finished experiment keeps its run and trains only the new seeds.
    """
    return exp.name if seed == exp.seeds[0] else f"{exp.name}-seed{seed}"


def recorded_data(out: Path) -> Path | None:
    """The dataset the finished runs in ``out`` were trained on (from their saved configs), for ``--report-only``."""
    import yaml

    for config in sorted((out / "runs").glob("*/config.yaml")):
        data = (yaml.safe_load(config.read_text()) or {}).get("data")
        if data:
            return Path(data)
    return None


def seeds_to_run(exp: Experiment, max_seeds: int | None, only_seeds: Collection[int] = ()) -> list[int]:
    """The experiment's declared seeds, the first ``max_seeds`` of them when given, only those in ``only_seeds`` when
    given (run names stay the same, so seeds trained apart land where one call would have put them)."""
    chosen = exp.seeds if max_seeds is None else exp.seeds[:max_seeds]
    return [s for s in chosen if s in only_seeds] if only_seeds else chosen


def declaration_key(exp: Experiment, seed: int) -> str:
    """Identifies what a run was trained from (kind, overlay with its ``run:`` references, seed), not its wording.

    ``amp`` is left out: like a resume, it changes rounding only, and the rows finished before the CPU suite pinned
    ``amp: false`` (trained in float32 then by default) stay its results."""
    train = {k: v for k, v in exp.train.items() if k != "amp"}
    body = {"kind": exp.kind, "train": train, "gan": exp.gan, "seed": seed}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def dependency_runs(exp: Experiment, seed: int, run_dirs: dict[str, dict[int, Path]]) -> dict[str, Path]:
    """The run folders seed ``seed`` of ``exp`` starts from (as :func:`resolve_refs` picks them)."""
    return {ref: Path(resolve_refs(f"{RUN_REF}{ref}", run_dirs, seed)) for ref in sorted(exp.references())}


def _finished_stamp(run_dir: Path) -> str | None:
    return read_status(run_dir).get("finished")


def _unusable_result(
    exp: Experiment,
    seed: int,
    run_dir: Path,
    run_dirs: dict[str, dict[int, Path]],
    data_test_files: frozenset[str] | None = None,
) -> str | None:
    """Why the finished run in ``run_dir`` is not a result of this declaration (``None`` when it is).

    Statuses written before these fields existed carry no declaration or dependency stamps and are taken as they are.
    ``data_test_files``: the test split of the data this call names; a run tested on other files is refused.
    """
    status = read_status(run_dir)
    where = f"{run_dir.parent.name}/{run_dir.name}"
    if status.get("seed", seed) != seed:
        return f"{where} holds seed {status['seed']}, the declaration asks for seed {seed}; move it away to retrain"
    if status.get("declaration", declaration_key(exp, seed)) != declaration_key(exp, seed):
        return f"{where} was trained from another version of {exp.name}'s YAML; move it away to retrain"
    sources = dependency_runs(exp, seed, run_dirs)
    for ref, stamp in status.get("depends_on", {}).items():
        current = _finished_stamp(sources[ref]) if ref in sources else None
        if current != stamp:
            return f"{where} started from a run of {ref} that is no longer there (retrained?); move it away to retrain"
    if data_test_files is not None and (ran := run_test_files(run_dir)) is not None and ran != data_test_files:
        return (
            f"{where} was tested on other images than the test split of this call's dataset ({len(ran)} vs "
            f"{len(data_test_files)} files, {len(ran ^ data_test_files)} differ): pass the dataset it was trained on "
            "(--data), or move it away to retrain"
        )
    return None


def run_test_files(run_dir: Path) -> frozenset[str] | None:
    """The test split of a run (``split.csv``, paths relative to its dataset), None without a split file."""
    path = run_dir / "split.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return frozenset(row["path"] for row in csv.DictReader(f) if row["split"] == "test")


def check_dataset(data: Path) -> None:
    """A missing or unreadable dataset fails once, before any row (not once per row, each leaving a run folder)."""
    from pneumo.data.records import discover

    discover(data)


def data_test_files(data: Path) -> frozenset[str] | None:
    """The official test split of ``data`` as a run's ``split.csv`` names it (relative to the dataset root), so that
    a moved copy of the same dataset matches and another dataset does not; None when ``data`` cannot be read (the
    finished rows are then tabulated unchecked, with a warning)."""
    from pneumo.data.records import DatasetError, dataset_root, discover

    try:
        records = discover(data)
    except DatasetError as exc:
        log.warning("finished rows not checked against the dataset's test split: %s", exc)
        return None
    root = dataset_root(data).resolve()
    files = set()
    for r in records:
        if r.split == "test":
            path = r.path.resolve()
            files.add(path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path))
    return frozenset(files)


@contextmanager
def claimed(run_dir: Path, *, wait: bool = False) -> Iterator[bool]:
    """Hold ``runs/.<row>.lock`` while a row trains and is evaluated, so that two calls on one ``--out`` never train,
    clear or resume the same folder at once. When another process holds it: yields False (and holds nothing), or,
    with ``wait``, waits until it is released (for a row that other rows of this call start from)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            log.info("%s: another process is training it and rows of this call start from it: waiting", run_dir.name)
            fcntl.flock(lock, fcntl.LOCK_EX)  # holding no other row's lock: no two processes can wait on each other
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_started(exp: Experiment, seed: int, run_dir: Path, depends: dict[str, Path]) -> None:
    """Refuse to resume a row started from another declaration or other source runs than today's."""
    started = read_status(run_dir, STARTED_FILE)
    where = f"{run_dir.parent.name}/{run_dir.name}"
    if started.get("declaration", declaration_key(exp, seed)) != declaration_key(exp, seed):
        raise ValueError(f"{where} was started from another version of {exp.name}'s YAML; move it away to retrain")
    stamps = {ref: _finished_stamp(d) for ref, d in depends.items()}
    if started.get("depends_on", stamps) != stamps:
        raise ValueError(f"{where} was started from a run of a source row that has since changed; move it away")


def _resumable(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume from. A folder without one (interrupted while caching,
    generating images or before its first checkpoint) cannot be resumed, and a new run refuses a used folder: it is
    cleared, and the run starts again."""
    from pneumo.runs.format import STATE_TENSORS

    if (run_dir / STATE_TENSORS).exists():
        return True
    if run_dir.is_dir() and any(run_dir.iterdir()):
        log.warning("%s holds no checkpoint (interrupted before its first one): starting it again", run_dir)
        shutil.rmtree(run_dir)
    return False


def _train_one(
    exp: Experiment, seed: int, data: Path, run_dir: Path, run_dirs: dict[str, dict[int, Path]], device: str
) -> Path:
    """Train (or resume) one experiment; returns the folder of the classifier run to evaluate."""
    depends = dependency_runs(exp, seed, run_dirs)
    resuming = _resumable(run_dir)
    if resuming:
        _check_started(exp, seed, run_dir, depends)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        stamps = {ref: _finished_stamp(d) for ref, d in depends.items()}
        write_json(run_dir / STARTED_FILE, {"declaration": declaration_key(exp, seed), "depends_on": stamps})
    if exp.kind == "gan":
        from pneumo.gan.config import load_config
        from pneumo.gan.train import resume_gan, train_gan

        if resuming:
            resume_gan(run_dir, progress=False)
        else:
            overlay = resolve_refs(exp.gan, run_dirs, seed)
            train_gan(load_config(None, data=str(data), seed=seed, device=device, **overlay), run_dir, progress=False)
        return run_dir / "classifier"

    from pneumo.training import build_config, resume, train
    from pneumo.training.config import deep_merge
    from pneumo.trust.ood import fit_after_training

    if resuming:
        resume(
            run_dir, finished_ok=True, after=fit_after_training
        )  # a run that finished training (not yet evaluated) returns at once
        return run_dir
    overlay = resolve_refs(exp.train, run_dirs, seed)
    flags = {"data": str(data), "out": str(run_dir), "seed": seed, "device": device}
    cfg = build_config(flags=deep_merge(overlay, flags))
    train(cfg, command=["pneumo", "reproduce", exp.name], after=fit_after_training)
    return run_dir


def _train_and_evaluate(
    exp: Experiment,
    seed: int,
    data: Path,
    run_dir: Path,
    run_dirs: dict[str, dict[int, Path]],
    device: str,
    n_boot: int,
) -> str | None:
    """Train (or resume) and evaluate one row, then write its status; returns why it failed, None when it did not."""
    from pneumo.evaluation.run import evaluate_run
    from pneumo.trust.ood import report_sections

    depends = dependency_runs(exp, seed, run_dirs)
    unfinished = [f"{ref} ({d.name})" for ref, d in depends.items() if _finished_stamp(d) is None]
    if unfinished:  # never train from a partial run (e.g. the best epoch so far of a failed source)
        return f"needs {', '.join(unfinished)}, which has not finished"
    log.info("experiment %s: training", run_dir.name)
    start = time.perf_counter()
    try:
        eval_dir = _train_one(exp, seed, data, run_dir, run_dirs, device)
        train_s = time.perf_counter() - start
        result = evaluate_run(
            eval_dir, split="test", n_boot=n_boot, device=device, progress=False, report_hooks=(report_sections,)
        )
    except Exception as exc:  # one broken row (e.g. weights offline) must not stop the others
        log.exception("experiment %s failed", run_dir.name)
        return f"{type(exc).__name__}: {exc}"
    # the sources as they were when this row started (stamped now, a source finished again meanwhile, say by a
    # process on a copy of its folder, would pass this row off as trained from the new one)
    now = {ref: _finished_stamp(d) for ref, d in depends.items()}
    started_from = read_status(run_dir, STARTED_FILE).get("depends_on", now)
    if started_from != now:
        changed = sorted(ref for ref in now if started_from.get(ref) != now[ref])
        return (
            f"{', '.join(changed)} finished again while this row trained from the earlier run; move "
            f"{run_dir.name} away to train it again"
        )
    status = {
        "experiment": exp.name,
        "seed": seed,
        "declaration": declaration_key(exp, seed),
        "depends_on": started_from,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s_this_session": round(train_s, 1),
        "evaluated_run": os.path.relpath(eval_dir, run_dir),  # relative: the out folder can move
        "eval_dir": os.path.relpath(result["eval_dir"], run_dir),
        "device": "cuda" if torch.cuda.is_available() and device != "cpu" else "cpu",
    }
    write_json(run_dir / STATUS_FILE, status)
    return None


def reproduce(
    data: Path | None,
    suite: str,
    out: Path,
    *,
    experiments_dir: Path | None = None,
    device: str = "auto",
    n_boot: int = 1000,
    only: list[str] | None = None,
    report_only: bool = False,
    max_seeds: int | None = None,
    only_seeds: Collection[int] = (),
) -> dict[str, Any]:
    """Run every experiment of ``suite`` not yet finished in ``out``, evaluate each on the official test split,
    and write ``out/results.md`` and ``out/results.json``. Safe to interrupt and call again.

    ``report_only``: train nothing; write the table of the experiments already finished in ``out``.
    ``max_seeds``: train only the first N seeds of each experiment (a short GPU lease: one seed of every row first);
    seeds already finished in ``out`` are still tabulated. ``only_seeds``: train only these declared seeds (one row's
    seeds on several machines or processes, each with its own ``--seed``, into copies of ``out`` or ``out`` itself).

    An experiment that raises is logged, listed under ``failed`` in the results, and the others still run; a row that
    starts from it is not trained (listed as failed too) until it has finished. A finished run that no longer matches
    its declaration (another seed, an edited YAML, a retrained source) is listed as failed, not tabulated."""
    from pneumo.reproduce.results import evaluated_n_boot, write_results

    out = out.expanduser().resolve()
    given_data = data
    experiments = load_suite(suite, experiments_dir)
    if only:
        unknown = set(only) - {e.name for e in experiments}
        if unknown:
            raise ValueError(f"not in suite {suite!r}: {sorted(unknown)}")
        only = sorted(with_dependencies(set(only), experiments))
    selected = [e for e in experiments if not only or e.name in only]
    if only_seeds:
        undeclared = set(only_seeds) - {s for e in selected for s in seeds_to_run(e, max_seeds)}
        if undeclared:
            raise ValueError(f"seed(s) {sorted(undeclared)} not among the seeds to run of the selected experiments")
    if data is not None and not report_only:
        check_dataset(data)
    if data is None and not report_only:
        if suite != "quick":
            raise ValueError(f"suite {suite!r} needs --data (the real dataset)")
        from pneumo.data.synth import generate_dataset

        data_root = out / "synthetic-data"
        partial = data_root / "chest_xray"
        data_root.mkdir(parents=True, exist_ok=True)
        # one generator at a time: processes side by side on one --out took each other's half-written folder for an
        # interrupted one and removed it
        with open(data_root / ".generating.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if partial.is_dir() and not (partial / "MANIFEST.csv").exists():  # the manifest is written last
                log.warning("%s: interrupted while being generated; generating it again", partial)
                shutil.rmtree(partial)
            if not partial.is_dir():
                generate_dataset(data_root, n=QUICK_DATA_IMAGES, seed=0, progress=False)
        data = partial
    if data is None and report_only:
        data = recorded_data(out)
        if (data is None or not data.exists()) and (out / "synthetic-data" / "chest_xray").is_dir():
            data = None  # a moved out folder of the quick suite: its runs' recorded path is the old one
    data = data.expanduser().resolve() if data else out / "synthetic-data" / "chest_xray"
    chosen = {(e.name, s) for e in selected for s in seeds_to_run(e, max_seeds, only_seeds)}
    to_train = with_source_seeds(chosen, experiments)
    # rows that others of this call start from are waited for while another process trains them: left to it, they
    # failed every row that needs them (the one-seed GAN of `--seed N` processes side by side)
    needed = {source for run in to_train for source in source_runs(run, experiments)}
    run_dirs: dict[str, dict[int, Path]] = {}
    test_files: frozenset[str] | None = None  # the data's test split, read once, when a finished row needs it
    test_files_read = False
    entries = []
    failures: list[dict[str, Any]] = []
    position: dict[tuple[str, int], int] = {}
    for exp in experiments:
        for seed in exp.seeds:
            run_dirs.setdefault(exp.name, {})[seed] = out / "runs" / run_name(exp, seed)
            position[(exp.name, seed)] = len(position)
    # A row that other rows of this call start from, held by another process, is put off with those rows, so the rows
    # that do not need it train meanwhile; then it is waited for (left to the other process, they would all fail).
    put_off: list[tuple[Experiment, int]] = []

    def visit(exp: Experiment, seed: int, *, last_pass: bool) -> None:
        nonlocal test_files, test_files_read
        name = run_name(exp, seed)
        run_dir = run_dirs[exp.name][seed]
        status_path = run_dir / STATUS_FILE
        skipped = report_only or (exp.name, seed) not in to_train
        if skipped and not status_path.exists():
            return
        if not last_pass and source_runs((exp.name, seed), experiments) & {(e.name, s) for e, s in put_off}:
            put_off.append((exp, seed))  # trained or checked once its source has finished
            return
        trained_here = False
        if not status_path.exists():
            is_needed = (exp.name, seed) in needed
            with claimed(run_dir, wait=last_pass and is_needed) as ours:
                if not ours and is_needed and not last_pass:
                    log.info("%s: another process is training it; the rows that do not need it go first", name)
                    put_off.append((exp, seed))
                    return
                error = None if ours else "another process is training this row (its lock is held); left to it"
                # checked again under the lock: another process may have finished the row since the check above,
                # and evaluating it again would restamp it and invalidate the rows that started from it
                if ours and not status_path.exists():
                    trained_here = True
                    error = _train_and_evaluate(exp, seed, data, run_dir, run_dirs, device, n_boot)
            if error:
                log.error("experiment %s: %s", name, error)
                failures.append({"experiment": exp.name, "seed": seed, "error": error})
                return
        if not trained_here:
            if not test_files_read:
                test_files, test_files_read = data_test_files(data), True
            problem = _unusable_result(exp, seed, run_dir, run_dirs, test_files)
            if problem:
                log.error("experiment %s: %s", name, problem)
                failures.append({"experiment": exp.name, "seed": seed, "error": problem})
                return
        entries.append((exp, seed, run_dir))

    for exp in experiments:
        for seed in exp.seeds:
            visit(exp, seed, last_pass=False)
    for exp, seed in list(put_off):  # in the order of the suite, sources before the rows that start from them
        visit(exp, seed, last_pass=True)
    entries.sort(key=lambda entry: position[(entry[0].name, entry[1])])
    failures.sort(key=lambda failure: position[(failure["experiment"], failure["seed"])])
    if report_only:  # the table states the replicates its rows were evaluated with, not this call's default
        found = {evaluated_n_boot(run_dir) for _, _, run_dir in entries} - {None}
        n_boot = found.pop() if len(found) == 1 else n_boot
    # what reproduces the table (every row, every seed): the arguments that change a number, as the user gave them
    command = " ".join(
        [
            "pneumo reproduce",
            *([f"--data {given_data}"] if given_data is not None else []),
            f"--suite {suite}",
            f"--out {out}",
            *([f"--experiments {experiments_dir}"] if experiments_dir is not None else []),
            *([f"--device {device}"] if device != "auto" else []),
            *([f"--n-boot {n_boot}"] if n_boot != 1000 else []),
        ]
    )
    return write_results(
        out, suite, data, entries, n_boot=n_boot, machine=machine_summary(), failures=failures, command=command
    )
