"""Turn a finished run folder into a shipped model (``experiments/ready_models/build.py`` drives it).

A run is trained by ``pneumo reproduce`` (:func:`train_experiment`) or given; :func:`ship` copies it without
optimiser and resume state, evaluates the copy on the official test split (patient-bootstrap CIs), adds the shipping
section to its model card, writes ``SHA256SUMS`` and installs it as ``<name>-v<N>`` in the zoo folder, replacing
older versions of that name. :func:`write_expected` records what the shipped models say about the example images.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pneumo.data.tasks import TASKS
from pneumo.inference.meta import META_FILE, WEIGHTS_FILE
from pneumo.utils.digest import file_sha256
from pneumo.zoo.catalog import INDEX_FILE, PREFIX, ZOO_DIR, _base, _index, _version, write_checksums

# Resume and bookkeeping state that a user of the model never needs (the optimiser state alone is 8 MB for the CNN).
LEFT_OUT = ("last.*", "*.state.*", ".*", "*.lock", "reproduce*.json", "MODEL_CARD.md", "*.onnx")
EVAL_KEPT = ("metrics.json",)  # predictions.csv names dataset files, report.html embeds plots: not shipped
MAX_FILE_BYTES = 50_000_000
ATTRIBUTION = (
    "Kermany, D., Zhang, K., Goldbaum, M. (2018). *Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    'Images for Classification*. Mendeley Data, v2. doi:10.17632/rscbjbr9sj.2 (part "ChestXRay2017"); '
    "Kermany, D. S., Goldbaum, M., Cai, W., et al. (2018). *Identifying Medical Diagnoses and Treatable Diseases by "
    "Image-Based Deep Learning*. Cell 172(5):1122-1131.e9. doi:10.1016/j.cell.2018.02.010. Licence: CC BY 4.0 "
    "(Creative Commons Attribution 4.0 International). pneumo trained on a copy squashed to 224x224 and re-encoded "
    "as JPEG; the weights are derived from these images: attribute the authors above when you use them."
)


def train_experiment(data: Path, work: Path, suite: str, experiment: str, seed: int, device: str = "auto") -> Path:
    """Train and evaluate one declared experiment with ``pneumo reproduce`` (resumable; a finished one is reused)
    and return the run folder that was evaluated (a GAN row: its classifier)."""
    from pneumo.reproduce.runner import reproduce, run_name
    from pneumo.reproduce.status import STATUS_FILE
    from pneumo.reproduce.suite import load_suite

    result = reproduce(data, suite, work, only=[experiment], only_seeds=[seed], device=device)
    failed = [f for f in result["failed"] if f["experiment"] == experiment]
    if failed:
        raise RuntimeError(f"{experiment} seed {seed} failed: {failed[0]}")
    exp = next(e for e in load_suite(suite) if e.name == experiment)
    run_dir = work.expanduser().resolve() / "runs" / run_name(exp, seed)
    status = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    return (run_dir / status.get("evaluated_run", ".")).resolve()


def _left_out(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in LEFT_OUT)


def copy_run(run_dir: Path, dest: Path) -> None:
    """The files of ``run_dir`` a user needs (weights, checkpoint.json, config, split, training log, environment),
    without optimiser, resume state or earlier evaluations."""
    if not (run_dir / META_FILE).is_file() or not (run_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (no {META_FILE} or {WEIGHTS_FILE})")
    dest.mkdir(parents=True)
    for path in sorted(run_dir.iterdir()):
        if path.is_dir() or _left_out(path.name):
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: {path.stat().st_size / 1e6:.0f} MB, too large to ship")
        shutil.copy2(path, dest / path.name)


def next_version(zoo_dir: Path, base: str, weights_sha256: str) -> int:
    """The shipped version of these weights if ``base`` ships them already, else one more than its highest."""
    versions = {name: _version(name) for name in _index(zoo_dir).get("models", {}) if _base(name) == base}
    for name, version in versions.items():
        weights = zoo_dir / name / WEIGHTS_FILE
        if weights.is_file() and file_sha256(weights) == weights_sha256:
            return version
    return max(versions.values(), default=0) + 1


def card_section(name: str, base: str, source: dict[str, Any], stage: Path) -> str:
    """The model card's part about the shipped model: how to use and rebuild it, where it came from, its data."""
    meta = json.loads((stage / META_FILE).read_text(encoding="utf-8"))
    env = json.loads((stage / "env.json").read_text(encoding="utf-8")) if (stage / "env.json").is_file() else {}
    ood = meta.get("ood") or {}
    negatives = source.get("ood_negatives")
    fitted_with = (
        f" and, as negatives, the images of `{Path(negatives).parent.name}/{Path(negatives).name}` (so its flag rate "
        "on that set below is no held-out measure: see docs/TRUST.md for the rate on a source held out of the fit)"
        if negatives
        else ""
    )
    ood_text = (
        f"{ood.get('method', 'yes')}, fitted on the training split's features{fitted_with}; each prediction says "
        "`in_distribution`. It flags images unlike the training X-rays; it does not make the model valid on other "
        "populations (adults, other hospitals, other scanners)."
        if ood
        else "none fitted (`in_distribution` is empty); fit one with `pneumo audit ood-fit`."
    )
    if source.get("experiment"):
        trained = (
            f"`pneumo reproduce --suite {source['suite']} --only {source['experiment']} --seed {source['seed']} "
            "--data DATA` (every setting is in `config.yaml`)"
        )
    else:
        trained = f"`{' '.join(env.get('command') or ['(not recorded)'])}` (every setting is in `config.yaml`)"
    lines = [
        f"## Shipped with pneumo as `{PREFIX}{name}`\n",
        "> **Research use only. Not a medical device.** Not for diagnosis, triage or treatment.\n",
        f"- Use: `pneumo predict {PREFIX}{base} xray.jpeg`, `pneumo serve {PREFIX}{base}`, "
        f'`pneumo.load("{base}")`; `{PREFIX}{base}` is its latest version, `{PREFIX}{name}` this one.',
        f"- Weights: `{WEIGHTS_FILE}`, SHA-256 `{file_sha256(stage / WEIGHTS_FILE)}`; every file is listed with its "
        "SHA-256 in `SHA256SUMS`, checked whenever the model is loaded by name.",
        f"- Trained with: {trained}; pneumo {env.get('pneumo', meta.get('pneumo_version', '?'))}, git commit "
        f"`{env.get('git_commit', 'not recorded')}`, torch {env.get('torch', '?')} on {env.get('device', '?')}.",
        f"- Rebuild: `python experiments/ready_models/build.py --data DATA --only {base}` (trains, evaluates on the "
        "official test split, strips optimiser state and installs the folder with its checksums).",
        f"- Out-of-distribution check: {ood_text}",
        f"- Built: {dt.datetime.now(dt.UTC).date().isoformat()}.",
        "\n### Data and licence\n",
        ATTRIBUTION + "\n",
    ]
    return "\n".join(lines) + "\n"


def describe_run(folder: Path, source: dict[str, Any]) -> str:
    """``cnn, 128 px, NORMAL vs PNEUMONIA (cpu suite cnn-normal-pneumonia, seed 0)``."""
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    where = (
        f"{source['suite']} suite {source['experiment']}, seed {source['seed']}"
        if source.get("experiment")
        else f"run {Path(source.get('run', '?')).name}"
    )
    classes = " vs ".join(meta["class_names"])
    return f"{meta['model']['name']}, {meta['preprocess']['image_size']} px, {classes} ({where})"


def tidy(stage: Path) -> None:
    """Leave out what evaluating the copy added besides metrics.json (its lock file, predictions, report), and write
    paths inside the temporary folder as the model's name."""
    for path in [p for p in stage.rglob("*") if p.is_file()]:
        in_eval = path.parent.name.startswith("eval-")
        if (in_eval and path.name not in EVAL_KEPT) or (_left_out(path.name) and path.name != "MODEL_CARD.md"):
            path.unlink()
    for path in [stage / "MODEL_CARD.md", *stage.glob("eval-*/metrics.json")]:
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace(str(stage), stage.name), encoding="utf-8")


def behaviour_section(stage: Path, examples: list[Path], external: Path | None) -> str:
    """The model card's part on what the model does with the example images and with an external set."""
    from collections import Counter

    from pneumo.api import load

    if not examples and external is None:
        return ""
    predictor = load(stage)
    lines = ["\n### Behaviour on the example images and on external images\n"]
    if examples:
        lines += [
            "The images in `examples/` (official test split images and one picture that is not an X-ray; see its "
            "README):\n",
            "| file | label | probabilities | in_distribution |",
            "| --- | --- | --- | --- |",
        ]
        for r in predictor.predict([str(p) for p in examples]):
            probs = ", ".join(f"{k} {v:.3f}" for k, v in r.probabilities.items())
            lines.append(f"| {Path(r.source).name} | {r.label} | {probs} | {r.in_distribution} |")
    if external is not None:
        from pneumo.data.records import discover

        records = discover(external)
        results = predictor.predict([str(r.path) for r in records])
        flagged = sum(r.in_distribution is False for r in results)
        checked = any(r.in_distribution is not None for r in results)
        labels = Counter(r.label for r in results)
        truth = Counter(r.label for r in records)
        name = external.parent.name if external.is_file() else external.name
        ood = (
            f"the out-of-distribution check flags {flagged} ({flagged / len(results):.0%}) as not in distribution"
            if checked
            else "the model has no out-of-distribution check"
        )
        lines += [
            f"\nOn `{name}` ({len(records)} images: {', '.join(f'{k} {v}' for k, v in sorted(truth.items()))}), "
            f"images this model was not made for, {ood}; the labels given are "
            f"{', '.join(f'{k} {v}' for k, v in sorted(labels.items()))}. A prediction on such images means nothing.",
        ]
    return "\n".join(lines) + "\n"


def ship(
    run_dir: Path,
    base: str,
    *,
    zoo_dir: Path = ZOO_DIR,
    source: dict[str, Any] | None = None,
    description: str = "",
    default: bool = False,
    n_boot: int = 1000,
    device: str = "cpu",
    examples: list[Path] | None = None,
    external: Path | None = None,
) -> Path:
    """Install ``run_dir`` as the shipped model ``base`` (``<base>-v<N>``); returns its folder. Its model card also
    shows its predictions on ``examples`` and, with ``external`` (a dataset folder or manifest of images from
    elsewhere), how many of those its out-of-distribution check flags and which labels it gives them."""
    from pneumo.evaluation.run import evaluate_run

    source = source or {"run": str(run_dir)}
    zoo_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{base}-", dir=zoo_dir) as tmp:
        copied = Path(tmp) / "copy"
        copy_run(Path(run_dir), copied)
        task = json.loads((copied / META_FILE).read_text(encoding="utf-8"))["task"]
        if base in TASKS and task != base:
            raise ValueError(f"{run_dir}: a {task} model cannot ship as {base!r}")
        name = f"{base}-v{next_version(zoo_dir, base, file_sha256(copied / WEIGHTS_FILE))}"
        stage = copied.rename(Path(tmp) / name)  # the evaluation and the model card are titled by the folder's name
        evaluate_run(stage, split="test", n_boot=n_boot, device=device, plots=False, progress=False)
        tidy(stage)
        behaviour = behaviour_section(stage, examples or [], external)
        card = stage / "MODEL_CARD.md"
        card.write_text(card.read_text(encoding="utf-8") + "\n" + card_section(name, base, source, stage) + behaviour)
        write_checksums(stage)
        index = _index(zoo_dir)
        models = index.setdefault("models", {})
        for old in [n for n in models if _base(n) == base]:
            shutil.rmtree(zoo_dir / old, ignore_errors=True)
            del models[old]
        shutil.move(stage, zoo_dir / name)
    models[name] = {"description": description or describe_run(zoo_dir / name, source), "source": source}
    if default or not index.get("default"):
        index["default"] = base
    index["models"] = dict(sorted(models.items()))
    (zoo_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return zoo_dir / name


def expected_predictions(images: list[Path], zoo_dir: Path = ZOO_DIR) -> dict[str, Any]:
    """What every shipped model says about ``images``: ``{model: {file name: result}}`` (for the regression test)."""
    from pneumo.api import load
    from pneumo.zoo.catalog import list_models

    out: dict[str, Any] = {}
    for model in list_models(zoo_dir):
        predictor = load(model.path)
        results = predictor.predict([str(p) for p in images])
        out[model.name] = {
            Path(r.source).name: {k: v for k, v in r.to_dict().items() if k != "source"} for r in results
        }
    return out
