"""Measure out-of-distribution detectors on one trained run (issue 24): which check keeps the official test split
and flags adult chest X-rays, other modalities, photographs, noise, blank and text images.

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/ood/measure.py RUN_DIR \
        --adult ../shared/data/external_adult_dev/MANIFEST.csv --out /tmp/ood/measure.json

Every threshold is a quantile of the run's VALIDATION scores (split.csv); the official test split, the adult set and
the foreign probes are only scored. Candidates fitted with adult images are scored on the other source only.
Features are cached next to ``--out`` (``*.features.npz``) so that a rerun only re-fits.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from pneumo.data.dataset import build_split
from pneumo.data.decode import decode_bytes
from pneumo.data.preprocess import resize_gray
from pneumo.data.records import discover
from pneumo.models.depth_features import depth_features, split_depths
from pneumo.runs.context import load_model, open_run, split_images
from pneumo.trust.ood import fit_scorer
from pneumo.trust.ood_negatives import corruptions, synthetic_images

QUANTILES = (0.95, 0.975, 0.99)
SKIMAGE_CROPS = 40
SKIMAGE_FIT = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "grass", "horse", "logo", "page")
SKIMAGE_EVAL = (
    "binary_blobs", "cat", "checkerboard", "coffee", "coins", "colorwheel", "gravel", "hubble_deep_field",
    "immunohistochemistry", "microaneurysms", "moon", "retina", "rocket", "shepp_logan_phantom", "stereo_motorcycle",
    "text",
)  # fmt: skip
DICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "liver_1frame.dcm", "rtdose_1frame.dcm", "JPEG2000.dcm", "US1_J2KR.dcm")


# --- probe images -------------------------------------------------------------------------------------------------


def _gray_of(arr: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return decode_bytes(buf.getvalue(), name)


def skimage_images(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    import skimage.data as d

    out = {}
    for n in names:
        a = getattr(d, n)()
        out[f"skimage:{n}"] = _gray_of(a[0] if isinstance(a, tuple) else a, n)
    return out


def dicom_images() -> dict[str, np.ndarray]:
    from pydicom.data import get_testdata_file

    out = {}
    for n in DICOM_FILES:
        path = get_testdata_file(n)
        if path is None:
            continue
        try:
            out[f"dicom:{n}"] = decode_bytes(Path(path).read_bytes(), n)
        except Exception as exc:  # a test file this decoder refuses (a codec plugin missing) is left out, and said
            print(f"  (skipped {n}: {exc})")
    return out


def xray_variants(images: np.ndarray, seed: int, prefix: str) -> dict[str, np.ndarray]:
    """Inverted, rotated (90/180) and upside-down versions of a few in-distribution images (model size)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), 8, replace=False)
    out = {}
    for i in pick:
        x = images[i]
        out[f"{prefix}:inverted-{i}"] = 255 - x
        out[f"{prefix}:rot90-{i}"] = np.rot90(x).copy()
        out[f"{prefix}:rot180-{i}"] = np.rot90(x, 2).copy()
    return out


def augmented(images: np.ndarray, seed: int) -> np.ndarray:
    """Train images under the training and acquisition augmentations (mild positives: still this population)."""
    from pneumo.data.augment import AcquisitionAugmentConfig, AugmentConfig, BatchAugmenter

    aug = BatchAugmenter(AugmentConfig(), AcquisitionAugmentConfig(enabled=True))
    g = torch.Generator().manual_seed(seed)
    return aug(torch.from_numpy(images).unsqueeze(1), g).squeeze(1).numpy()


def skimage_crops(grays: dict[str, np.ndarray], size: int, n_per: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for g in grays.values():
        h, w = g.shape
        for _ in range(n_per):
            side = int(rng.uniform(0.4, 1.0) * min(h, w))
            r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(g[r : r + side, c : c + side]).resize((size, size), Image.BILINEAR)
            out.append(np.asarray(crop))
    return np.stack(out)


# --- features -----------------------------------------------------------------------------------------------------


def collect(run_dir: Path, adult: Path, cache: Path) -> dict[str, np.ndarray]:
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    ctx = open_run(run_dir)
    model = load_model(ctx, "cpu")
    contract = ctx.contract
    size = contract.image_size
    arrays: dict[str, np.ndarray] = {}
    groups: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        data = ctx.split(split)
        groups[split] = split_images(data)
        arrays[f"{split}_y"] = np.asarray(data.targets)
    adult_records = discover(adult)
    adult_data = build_split("test", adult_records, ctx.task, contract, cache_root=ctx.cache_root, progress=False)
    groups["adult"] = split_images(adult_data)
    arrays["adult_y"] = np.asarray(adult_data.targets)
    arrays["adult_source"] = np.array([r.name.split("_")[0] for r in adult_data.records])
    foreign = {
        **skimage_images(SKIMAGE_EVAL),
        **dicom_images(),
        **synthetic_images(1),
        **synthetic_images(2),
    }
    resized = {k: resize_gray(v, contract) for k, v in foreign.items()}
    resized.update(xray_variants(groups["test"], 0, "xray-test"))
    arrays["foreign_names"] = np.array(list(resized))
    groups["foreign"] = np.stack(list(resized.values()))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(groups["train"]), 1500, replace=False)
    groups["oe_corrupt"] = corruptions(groups["train"][pick], 1)
    groups["train_aug"] = augmented(groups["train"][pick[:1000]], 3)
    fit_grays = skimage_images(SKIMAGE_FIT)
    synth_fit = {}
    for seed in (11, 12, 13):
        synth_fit.update(synthetic_images(seed))
    groups["oe_natural"] = np.concatenate(
        [
            skimage_crops(fit_grays, size, SKIMAGE_CROPS, 2),
            np.stack([resize_gray(v, contract) for v in synth_fit.values()]),
        ]
    )
    for name, imgs in groups.items():
        t = time.time()
        raw, pen, dep, dims = depth_features(model, imgs, contract, batch_size=64)
        arrays[f"{name}_raw"], arrays[f"{name}_pen"], arrays[f"{name}_dep"] = raw, pen, dep
        arrays["dims"] = np.asarray(dims)
        print(f"  features of {name}: {len(imgs)} images, {time.time() - t:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)
    return arrays


# --- candidates ---------------------------------------------------------------------------------------------------


def maha(train: np.ndarray, y: np.ndarray, val: np.ndarray):
    scorer = fit_scorer(train, y, val)
    return scorer.score


def energy(raw: np.ndarray) -> np.ndarray:
    return -logsumexp(raw, axis=1)  # higher = less like training (Liu et al. 2020)


def candidates(a: dict[str, np.ndarray], sets: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Scores (higher = more unusual) of every candidate on every set."""
    dims = [int(d) for d in a["dims"]]
    y = a["train_y"]
    out: dict[str, dict[str, np.ndarray]] = {}

    f = maha(a["train_pen"], y, a["val_pen"])
    out["1 last-layer Mahalanobis"] = {s: f(a[f"{s}_pen"]) for s in sets}
    out["3 energy"] = {s: energy(a[f"{s}_raw"]) for s in sets}

    per_depth: dict[str, list[np.ndarray]] = {s: [] for s in sets}
    per_depth_mean: dict[str, list[np.ndarray]] = {s: [] for s in sets}
    blocks = {s: split_depths(a[f"{s}_dep"], dims) for s in sets}
    train_blocks = split_depths(a["train_dep"], dims)
    val_blocks = split_depths(a["val_dep"], dims)
    for d in range(len(dims)):
        f = maha(train_blocks[d], y, val_blocks[d])
        half = dims[d] // 2
        fm = maha(train_blocks[d][:, :half], y, val_blocks[d][:, :half])
        for s in sets:
            per_depth[s].append(f(blocks[s][d]))
            per_depth_mean[s].append(fm(blocks[s][d][:, :half]))
    for label, source in (("mean+std", per_depth), ("mean", per_depth_mean)):
        val = np.stack(source["val"], 1)
        mu, sd = val.mean(0), val.std(0)
        z = {s: (np.stack(source[s], 1) - mu) / sd for s in sets}
        out[f"2 multi-depth Mahalanobis ({label}, max)"] = {s: z[s].max(1) for s in sets}
        out[f"2 multi-depth Mahalanobis ({label}, sum)"] = {s: z[s].sum(1) for s in sets}
        if label == "mean+std":
            last = {s: out["1 last-layer Mahalanobis"][s] for s in sets}
            lmu, lsd = last["val"].mean(), last["val"].std()
            out["2 multi-depth + last (mean+std, max)"] = {
                s: np.maximum(z[s].max(1), (last[s] - lmu) / lsd) for s in sets
            }
    for d in range(len(dims)):
        out[f"  depth {d + 1} only (mean+std)"] = {s: per_depth[s][d] for s in sets}

    # outlier exposure: a logistic head on standardised multi-depth features, train images vs generated negatives
    negatives = np.concatenate([a["oe_corrupt_dep"], a["oe_natural_dep"]])
    generated = np.concatenate([a["oe_corrupt_dep"], a["oe_natural_dep"][len(SKIMAGE_FIT) * SKIMAGE_CROPS :]])
    src_of_adult = a["adult_source"]

    def src_of_adult_dep(name: str) -> np.ndarray:
        return a["adult_dep"][src_of_adult == name]

    scaler = StandardScaler().fit(a["train_dep"])

    def oe(
        extra_neg: np.ndarray | None,
        pos_aug: bool = False,
        c: float = 0.05,
        base: np.ndarray | None = None,
        extra_share: float | None = None,
    ) -> LogisticRegression:
        """``extra_share``: the real negatives' share of the negatives' total weight (None: one weight per image)."""
        base = negatives if base is None else base
        neg = base if extra_neg is None else np.concatenate([base, extra_neg])
        pos = np.concatenate([a["train_dep"], a["train_aug_dep"]]) if pos_aug else a["train_dep"]
        x = scaler.transform(np.concatenate([pos, neg]))
        t = np.r_[np.zeros(len(pos)), np.ones(len(neg))]
        w = np.ones(len(t))
        if extra_share is not None and extra_neg is not None:
            w[len(pos) : len(pos) + len(base)] = (1 - extra_share) * len(neg) / len(base)
            w[len(pos) + len(base) :] = extra_share * len(neg) / len(extra_neg)
        return LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(x, t, sample_weight=w)

    for fit_src in ("ieee", "actualmed"):
        for share, c in ((0.5, 0.05), (0.5, 0.01), (None, 0.01)):
            head = oe(src_of_adult_dep(fit_src), pos_aug=True, base=generated, extra_share=share, c=c)
            name = f"4 OE (generated, aug, + adult {fit_src}, share {share}, C={c})"
            out[name] = {s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets}
            out[name]["fitted_on"] = fit_src  # type: ignore[assignment]

    for c in (0.005, 0.5):
        head = oe(None, c=c)
        out[f"4 outlier exposure (C={c})"] = {s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets}
    head = oe(None, pos_aug=True, base=generated)
    out["4 outlier exposure (generated only, augmented positives)"] = {
        s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets
    }
    for fit_src in ("ieee", "actualmed"):
        head = oe(a["adult_dep"][src_of_adult == fit_src], pos_aug=True, base=generated)
        name = f"4 outlier exposure (generated only, augmented positives, + adult {fit_src})"
        out[name] = {s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets}
        out[name]["fitted_on"] = fit_src  # type: ignore[assignment]
    head = oe(None, pos_aug=True)
    out["4 outlier exposure (augmented positives)"] = {
        s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets
    }
    for fit_src in ("ieee", "actualmed"):
        head = oe(a["adult_dep"][src_of_adult == fit_src], pos_aug=True)
        name = f"4 outlier exposure (augmented positives, + adult {fit_src})"
        out[name] = {s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets}
        out[name]["fitted_on"] = fit_src  # type: ignore[assignment]

    head = oe(None)
    out["4 outlier exposure (corruptions + skimage)"] = {
        s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets
    }
    src = a["adult_source"]
    for fit_src in ("ieee", "actualmed"):
        head = oe(a["adult_dep"][src == fit_src])
        out[f"4 outlier exposure (+ adult {fit_src})"] = {
            s: head.decision_function(scaler.transform(a[f"{s}_dep"])) for s in sets
        }
        out[f"4 outlier exposure (+ adult {fit_src})"]["fitted_on"] = fit_src  # type: ignore[assignment]

    # outlier exposure on the per-depth Mahalanobis scores (a learned combination of 5 numbers)
    neg_sets = ["oe_corrupt", "oe_natural"]
    zsets = {s: np.column_stack([*per_depth[s], out["1 last-layer Mahalanobis"][s]]) for s in sets if s in per_depth}
    zneg = np.concatenate([zsets[s] for s in neg_sets])
    x = np.log1p(np.concatenate([zsets["train"], zneg]))
    t = np.r_[np.zeros(len(zsets["train"])), np.ones(len(zneg))]
    lr = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(x, t)
    out["4 outlier exposure on depth scores"] = {s: lr.decision_function(np.log1p(zsets[s])) for s in sets}

    def z(name: str) -> dict[str, np.ndarray]:
        v = out[name]["val"]
        return {s: (out[name][s] - v.mean()) / v.std() for s in sets}

    za, zb = z("4 outlier exposure (corruptions + skimage)"), z("2 multi-depth Mahalanobis (mean+std, sum)")
    out["2+4 OE + multi-depth Mahalanobis (max of z)"] = {s: np.maximum(za[s], zb[s]) for s in sets}
    out["2+4 OE + multi-depth Mahalanobis (sum of z)"] = {s: za[s] + zb[s] for s in sets}
    return out


# --- report -------------------------------------------------------------------------------------------------------


def auc_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            vals.append(roc_auc_score(y[i], p[i]))
    return float(roc_auc_score(y, p)), float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def threshold_at(val_scores: np.ndarray, q: float) -> float:
    s = np.sort(val_scores)
    return float(s[max(0, math.ceil(q * len(s)) - 1)])


def evaluate(a: dict[str, np.ndarray], scores: dict[str, np.ndarray], q: float) -> dict[str, object]:
    thr = threshold_at(scores["val"], q)
    src = a["adult_source"]
    fitted_on = scores.get("fitted_on")
    adult_mask = np.ones(len(src), bool) if fitted_on is None else src != fitted_on
    flagged_adult = scores["adult"] > thr
    p_test = torch.softmax(torch.from_numpy(a["test_raw"][:, :2]), 1).numpy()[:, 1]
    passing = scores["test"] <= thr
    foreign_flag = scores["foreign"] > thr
    names = a["foreign_names"]
    kinds = np.array([str(n).split(":")[0] for n in names])
    return {
        "quantile": q,
        "threshold": thr,
        "val_pass": float(np.mean(scores["val"] <= thr)),
        "test_pass": float(passing.mean()),
        "adult_flag_unseen": float(flagged_adult[adult_mask].mean()),
        "adult_flag_ieee": float(flagged_adult[src == "ieee"].mean()) if fitted_on != "ieee" else None,
        "adult_flag_actualmed": float(flagged_adult[src == "actualmed"].mean()) if fitted_on != "actualmed" else None,
        "foreign_flag": float(foreign_flag.mean()),
        "foreign_missed": [str(n) for n, f in zip(names, foreign_flag, strict=True) if not f],
        "foreign_by_kind": {k: float(foreign_flag[kinds == k].mean()) for k in sorted(set(kinds))},
        "test_auc_passing": float(roc_auc_score(a["test_y"][passing], p_test[passing])),
        "n_test_passing": int(passing.sum()),
        "adult_fitted_on": fitted_on,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--adult", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    a = collect(args.run, args.adult, args.out.with_suffix(".features.npz"))
    print(f"features ready in {time.time() - t0:.0f} s")
    sets = ["train", "val", "test", "adult", "foreign", "oe_corrupt", "oe_natural", "train_aug"]
    p_test = torch.softmax(torch.from_numpy(a["test_raw"][:, :2]), 1).numpy()[:, 1]
    full = auc_ci(a["test_y"], p_test)
    results = {
        "run": str(args.run),
        "n": {s: len(a[f"{s}_raw"]) for s in sets},
        "adult_sources": {
            str(k): int(v) for k, v in zip(*np.unique(a["adult_source"], return_counts=True), strict=True)
        },
        "test_auc_full": {"auc": full[0], "ci95": [full[1], full[2]]},
        "candidates": {},
    }
    print(f"test AUC (all {len(p_test)}): {full[0]:.4f} [{full[1]:.4f}, {full[2]:.4f}]")
    header = f"{'candidate':48s} {'q':>5s} {'val':>6s} {'test':>6s} {'adult*':>7s} {'ieee':>6s} {'actmd':>6s} "
    header += f"{'foreign':>8s} {'AUCpass':>8s}"
    print(header)
    for name, scores in candidates(a, sets).items():
        rows = [evaluate(a, scores, q) for q in QUANTILES]
        results["candidates"][name] = rows
        for r in rows:

            def pct(v: float | None) -> str:
                return "   -  " if v is None else f"{100 * v:6.1f}"

            print(
                f"{name:48s} {r['quantile']:5.3f} {pct(r['val_pass'])} {pct(r['test_pass'])} "
                f"{pct(r['adult_flag_unseen'])} {pct(r['adult_flag_ieee'])} {pct(r['adult_flag_actualmed'])}  "
                f"{pct(r['foreign_flag'])}   {r['test_auc_passing']:.4f}"
            )
            if r["foreign_missed"] and r["quantile"] == QUANTILES[-1]:
                print(f"{'':48s}   missed at {r['quantile']}: {', '.join(r['foreign_missed'][:8])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
