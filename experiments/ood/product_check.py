"""Fit pneumo's shipped OOD check on a copy of a run (``fit_ood``, the path of ``pneumo train`` and ``pneumo audit
ood-fit``) and measure it through the same paths users take: test pass rate (``ood_rates``), and the flag rate of
each adult source (``pneumo audit ood``, via Predictor). A source used as negatives is marked as such.

    PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/ood/product_check.py RUN_COPY --negatives ieee.csv \
        --source ieee=ieee.csv --source actualmed=actualmed.csv --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pneumo.trust.ood import fit_ood, ood_rates
from pneumo.trust.ood_audit import audit_ood, image_files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--negatives", type=Path)
    parser.add_argument("--pass-rate", type=float)
    parser.add_argument("--source", action="append", default=[], help="NAME=folder-or-manifest")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t = time.time()
    params = fit_ood(args.run, negatives=args.negatives, pass_rate=args.pass_rate)
    out = {
        "run": str(args.run),
        "negatives": str(args.negatives),
        "threshold": params["threshold"],
        "pass_rate_target": params["pass_rate_target"],
        "val_pass_rate": params["val_pass_rate"],
        "fit_s": round(time.time() - t),
        "test": ood_rates(args.run, "test"),
    }
    for spec in args.source:
        name, path = spec.split("=", 1)
        r = audit_ood(args.run, path)
        out[name] = {k: r[k] for k in ("n", "n_flagged", "flagged_rate")}
        fitted = {f.resolve() for f in image_files(args.negatives)[1]} if args.negatives else set()
        out[name]["used_for_fitting"] = bool(fitted & {f.resolve() for f in image_files(path)[1]})
    print(json.dumps(out, indent=1))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
