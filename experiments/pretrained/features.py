"""Frozen ImageNet EfficientNet-Lite0 features (pooled at several depths) for every image of a dataset.

Usage: python features.py SIZE [GEOMETRY [DATA [OUT.npz]]]; then linear_probe.py OUT.npz RUN/split.csv.
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

from pneumo.data.cache import ImageCache
from pneumo.data.preprocess import PreprocessContract, normalize
from pneumo.data.records import discover
from pneumo.models import get_model

size, geometry = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "squash"
data = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/work/shared/data/chest_xray")
out = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(f"/work/exp/feats{size}-{geometry}.npz")
torch.set_num_threads(1)
recs = discover(data)
contract = PreprocessContract(image_size=size, geometry=geometry, mean=127 / 255, std=128 / 255)
images = ImageCache(contract, None).build([r.path for r in recs], progress=False)
model = get_model("efficientnet_lite0", num_classes=2, weights="imagenet").eval().to(memory_format=torch.channels_last)
feats = {}


def hook(name):
    def f(_m, _i, o):
        feats[name] = torch.cat([o.mean((2, 3)), o.amax((2, 3))], 1) if name == "head" else o.mean((2, 3))

    return f


for i in (2, 3, 4, 5, 6):
    model.blocks[i].register_forward_hook(hook(f"b{i}"))
model.bn2.register_forward_hook(hook("head"))
rows = np.flatnonzero(images.ok)
collected = {k: [] for k in ("b2", "b3", "b4", "b5", "b6", "head")}
t0 = time.time()
with torch.inference_mode():
    for s in range(0, len(rows), 64):
        idx = rows[s : s + 64]
        x = torch.from_numpy(np.ascontiguousarray(images.array[images.rows[idx]])).unsqueeze(1)
        model(normalize(x, contract).contiguous(memory_format=torch.channels_last))
        for k in collected:
            collected[k].append(feats[k].numpy().astype(np.float32))
        if s % 640 == 0:
            print(s, len(rows), f"{time.time() - t0:.0f}s", flush=True)
kept = [recs[i] for i in rows]
np.savez(
    out,
    **{k: np.concatenate(v) for k, v in collected.items()},
    path=np.array([str(r.path.relative_to(data)) if r.path.is_relative_to(data) else str(r.path) for r in kept]),
    split=np.array([r.split for r in kept]),
    label=np.array([r.label for r in kept]),
    subtype=np.array([str(r.subtype) for r in kept]),
    patient=np.array([r.patient_id for r in kept]),
)
print("done", len(rows), f"{time.time() - t0:.0f}s")
