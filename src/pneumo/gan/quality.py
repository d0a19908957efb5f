"""``pneumo gan quality``: Frechet distance, KID and class agreement of a GAN run, scored by a classifier run.

Real images: the GAN run's own ``train`` or ``val`` split (never test), at the GAN size, so real and generated images
pass through the same resolution before the classifier resizes both to its own size. Generated images: one per real
image with the same class, so both sets have the same size and class mix (the Frechet distance depends on both).
The classifier should be trained on real images and independent of the GAN; see :mod:`pneumo.gan.fid` for why the
numbers are not Inception FIDs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.data.dataset import build_split
from pneumo.data.records import dataset_root
from pneumo.data.splits import read_split_csv
from pneumo.data.tasks import get_task
from pneumo.gan.checkpoint import load_generator
from pneumo.gan.classifier import MODEL_NAME
from pneumo.gan.config import TASK, read_config
from pneumo.gan.fid import class_agreement, extract_features, frechet_distance, kid
from pneumo.gan.synth import generate, label_distribution, standing_statistics
from pneumo.models.registry import preprocess_contract
from pneumo.runs.checkpoint import load_run
from pneumo.utils.atomic import write_json

log = logging.getLogger(__name__)

NOTE = (
    "Frechet distance and KID on the penultimate features of the given pneumo classifier, NOT Inception-v3: "
    "comparable only between GAN runs scored with the same classifier and real images, never with published FIDs."
)


def sample_quality(
    gan_run_dir: str | Path,
    classifier_run_dir: str | Path,
    *,
    split: str = "val",
    max_images: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    write: bool = True,
    standing_batches: int = 0,
) -> dict[str, Any]:
    """Score a GAN run; with ``write`` the result also goes to ``GAN_RUN/`` :func:`quality_file_name`.

    ``standing_batches``: score the EMA generator with its BatchNorm statistics recomputed from that many batches of
    its own outputs (:func:`~pneumo.gan.synth.standing_statistics`) instead of the exported ones."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val (the test split stays untouched), got {split!r}")
    gan_run_dir, classifier_run_dir = Path(gan_run_dir), Path(classifier_run_dir)
    config = read_config(gan_run_dir / "config.yaml")
    records = read_split_csv(gan_run_dir / "split.csv", dataset_root(config.data or ""))
    task = get_task(TASK)
    contract = preprocess_contract(MODEL_NAME, image_size=config.image_size)  # the GAN trained on these pixels
    real = build_split(split, records, task, contract, progress=False)
    if len(real) < 2:
        raise ValueError(f"the GAN run's {split} split has {len(real)} readable images; need at least 2")
    order = np.random.default_rng(seed).permutation(len(real))[: max_images or len(real)]
    real_images, labels = real.as_tensor()[torch.from_numpy(order)], real.targets[order]

    generator = load_generator(gan_run_dir, device=device)
    if standing_batches:  # what the run would have exported with ema_standing_batches: N
        train = [task.class_names.index(r.subtype) for r in records if r.split == "train" and r.subtype]
        probs = label_distribution(torch.tensor(train), task.num_classes, config.fake_labels)
        generator = standing_statistics(
            generator, probs, batches=standing_batches, batch_size=config.batch_size, seed=config.seed
        )
    generated = generate(generator, labels, seed=seed)
    classifier, meta = load_run(classifier_run_dir, device=device)
    contract = classifier.preprocess_contract
    feats_real = extract_features(classifier, real_images, contract)
    feats_fake = extract_features(classifier, generated, contract)
    # subsets of at most half the images, so that their spread (the reported std) means something for small sets
    kid_mean, kid_std = kid(feats_real, feats_fake, subset_size=min(1000, max(2, len(labels) // 2)), seed=seed)
    agreement = agreement_real = None
    if list(meta["class_names"]) == list(task.class_names):

        def agree(images: torch.Tensor) -> dict[str, Any]:
            result = class_agreement(classifier, images, labels, contract=contract, num_classes=task.num_classes)
            return result.as_dict(task.class_names)

        # the real images at the GAN size: the most a generator can reach at that resolution, not 1.0
        agreement, agreement_real = agree(generated), agree(real_images)
    patients = {r.patient_id for r in real.records}
    seen = patients_seen_by(classifier_run_dir, patients)
    if seen["train"]:
        log.warning(
            "%d of the %d patients of the GAN run's %s split are in %s's train split: its features and class agreement "
            "are measured on images it was trained on",
            seen["train"], len(patients), split, classifier_run_dir,
        )  # fmt: skip
    out: dict[str, Any] = {
        "gan_run": str(gan_run_dir.resolve()),
        "classifier_run": str(classifier_run_dir.resolve()),
        "classifier_task": meta["task"],
        "split": split,
        "seed": seed,
        "max_images": max_images,
        "standing_batches": standing_batches,
        "n_images": len(labels),
        "reference_patients_in_classifier_split": seen,  # train: it learnt from them; val: it chose its epoch on them
        "frechet_distance": frechet_distance(feats_real, feats_fake),
        "kid": {"mean": kid_mean, "std": kid_std},
        "class_agreement": agreement,
        "class_agreement_real": agreement_real,
        "note": NOTE,
    }
    if write:
        write_json(gan_run_dir / quality_file_name(classifier_run_dir, split, seed, max_images, standing_batches), out)
    return out


def quality_file_name(
    classifier_run_dir: Path, split: str, seed: int, max_images: int | None, standing_batches: int
) -> str:
    """``quality-<classifier>-<hash>-<split>[-seedS][-maxN][-standingB].json``: one file per setting that changes the
    result (seed 0 and all images, the defaults, add nothing), so that scoring with another seed leaves the others;
    ``hash`` of the classifier's full path, since every GAN's exported head is a folder named ``classifier``."""
    where = hashlib.sha256(str(classifier_run_dir.resolve()).encode()).hexdigest()[:8]
    parts = [f"quality-{classifier_run_dir.resolve().name}-{where}-{split}"]
    parts += [f"seed{seed}"] if seed else []
    parts += [f"max{max_images}"] if max_images else []
    parts += [f"standing{standing_batches}"] if standing_batches else []
    return "-".join(parts) + ".json"


def patients_seen_by(classifier_run_dir: Path, patients: set[str]) -> dict[str, int]:
    """How many of ``patients`` are in the classifier run's train and val splits (0 without a ``split.csv``)."""
    path = classifier_run_dir / "split.csv"
    records = read_split_csv(path, classifier_run_dir) if path.is_file() else []
    return {name: len(patients & {r.patient_id for r in records if r.split == name}) for name in ("train", "val")}
