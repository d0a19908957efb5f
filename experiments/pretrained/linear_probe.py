"""Linear probes on frozen ImageNet features: feature set, class weights and C chosen by validation log-loss on
the patient-grouped split of a pneumo run (its split.csv); test AUC and every threshold rule reported.

Usage: python linear_probe.py FEATURES.npz RUN/split.csv
"""

import csv
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

from pneumo.evaluation.threshold import compare_rules

npz, split_csv = sys.argv[1], sys.argv[2]
f = np.load(npz)
with open(split_csv, newline="") as fh:
    split = {r["path"]: r["split"] for r in csv.DictReader(fh)}
paths = f["path"]
own = np.array([split.get(p, "test" if p.startswith("test/") else "none") for p in paths])
label, sub = f["label"], f["subtype"]
sets = {"head": ["head"], "b6+head": ["b6", "head"], "b4-6+head": ["b4", "b5", "b6", "head"]}
tasks = {
    "normal-pneumonia": (np.ones(len(paths), bool), (label == "PNEUMONIA").astype(int)),
    "bacteria-virus": (label == "PNEUMONIA", (sub == "virus").astype(int)),
    "normal-bacteria-virus": (
        np.ones(len(paths), bool),
        np.where(label == "NORMAL", 0, np.where(sub == "bacteria", 1, 2)),
    ),
}
out = {}
for task, (mask, y) in tasks.items():
    best = None
    for name, keys in sets.items():
        X = np.concatenate([f[k] for k in keys], 1)
        tr, va, te = (mask & (own == s) for s in ("train", "val", "test"))
        sc = StandardScaler().fit(X[tr])
        Xtr, Xva, Xte = sc.transform(X[tr]), sc.transform(X[va]), sc.transform(X[te])
        for cw in (None, "balanced"):
            for C in np.logspace(-4, 0, 9):
                m = LogisticRegression(C=C, class_weight=cw, max_iter=3000).fit(Xtr, y[tr])
                pv = m.predict_proba(Xva)
                ll = log_loss(y[va], pv, labels=m.classes_)
                if best is None or ll < best[0]:
                    best = (ll, name, cw, C, m, sc, keys)
    ll, name, cw, C, m, sc, keys = best
    X = np.concatenate([f[k] for k in keys], 1)
    tr, va, te = (mask & (own == s) for s in ("train", "val", "test"))
    pv, pt = m.predict_proba(sc.transform(X[va])), m.predict_proba(sc.transform(X[te]))
    res = {
        "features": name,
        "class_weight": cw,
        "C": C,
        "val_logloss": ll,
        "n": [int(tr.sum()), int(va.sum()), int(te.sum())],
    }
    if pv.shape[1] == 2:
        res["val_auc"], res["test_auc"] = roc_auc_score(y[va], pv[:, 1]), roc_auc_score(y[te], pt[:, 1])
        res["rules"] = [
            {
                "rule": r["rule"],
                "t": round(r["threshold"], 4),
                "test_acc": round(r["evaluated"]["accuracy"], 4),
                "test_sens": round(r["evaluated"]["sensitivity"], 4),
                "test_spec": round(r["evaluated"]["specificity"], 4),
                "val_acc": round(r["val"]["accuracy"], 4),
            }
            for r in compare_rules(y[va], pv[:, 1], y[te], pt[:, 1])
        ]
    else:
        res["val_macro_auc"] = roc_auc_score(y[va], pv, multi_class="ovr", average="macro")
        res["test_macro_auc"] = roc_auc_score(y[te], pt, multi_class="ovr", average="macro")
        res["test_acc_argmax"] = float((pt.argmax(1) == y[te]).mean())
        res["val_acc_argmax"] = float((pv.argmax(1) == y[va]).mean())
    out[task] = res
    print(task, json.dumps(res, indent=1, default=str), flush=True)
with open(npz.replace(".npz", "-probe.json"), "w") as fh:
    json.dump(out, fh, indent=1, default=str)
