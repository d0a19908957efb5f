"""How stable each threshold rule is on validation alone: the rule refitted on patient-bootstrap resamples of a run's
validation predictions (``pneumo evaluate RUN --split val`` writes them), and the spread of the thresholds it picks.

A threshold that moves across most of (0, 1) between resamples of the same validation split rests on a handful of
images and cannot be expected to transfer; no test image is read here.

Usage: python stability.py RUN/eval-<dataset>-val/predictions.csv [N_BOOT]
"""

import csv
import sys

import numpy as np

from pneumo.evaluation.threshold import RULES, choose_threshold, method_label

path, n_boot = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 500
with open(path, newline="") as fh:
    rows = list(csv.DictReader(fh))
positive = [k for k in rows[0] if k.startswith("p_")][1]
y = np.array([r["true"] == positive.removeprefix("p_") for r in rows], dtype=int)
p = np.array([float(r[positive]) for r in rows])
patients = np.array([r["patient_id"] for r in rows])
groups = {g: np.flatnonzero(patients == g) for g in np.unique(patients)}
keys = list(groups)
rng = np.random.default_rng(0)
picked: dict[str, list[float]] = {method_label({"method": m, **t}): [] for m, t in RULES}
for _ in range(n_boot):
    idx = np.concatenate([groups[keys[i]] for i in rng.integers(0, len(keys), len(keys))])
    if len(np.unique(y[idx])) < 2:
        continue
    for m, t in RULES:
        picked[method_label({"method": m, **t})].append(choose_threshold(y[idx], p[idx], m, **t))
print(f"{path}: {len(y)} validation images, {len(keys)} patients, {n_boot} patient-bootstrap resamples")
print(f"{'rule':28s} {'on all':>8s} {'median':>8s} {'2.5 %':>8s} {'97.5 %':>8s}")
for m, t in RULES:
    label = method_label({"method": m, **t})
    q = np.quantile(picked[label], [0.5, 0.025, 0.975])
    print(f"{label:28s} {choose_threshold(y, p, m, **t):8.3f} {q[0]:8.3f} {q[1]:8.3f} {q[2]:8.3f}")
