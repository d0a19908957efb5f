"""Training throughput of EfficientNet-Lite0 beside ResNet-18 on the CPU: which transfer recipe is affordable here.

    python benchmarks/efficientnet_throughput.py [--sizes 128,160,224] [--variants full,partial,head,features]
        [--layouts nchw,channels_last] [--steps 3] [--threads 1] [--out FILE.json]

Variants (batch 32, AdamW, random images and labels: the arithmetic, not the data, is measured):
  full      every layer trained;
  partial   stem and the first stages frozen (Lite0 ``until:blocks.2``, ResNet-18 ``until:layer2``: both stop at
            stride 8), so no backward pass through them;
  head      the whole backbone frozen (``backbone``): forward through it, backward through the head only;
  features  forward only, in eval mode (what caching the pooled features costs, once per image, for a head trained
            on cached features).
Each in NCHW and channels_last. Random weights (the speed does not depend on them). Prints a table and the
Lite0 / ResNet-18 ratios; writes JSON after every measurement, so an interrupted run keeps what it measured.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from pneumo.models import apply_freeze, get_model

MODELS = {"efficientnet_lite0": "until:blocks.2", "resnet18": "until:layer2"}
VARIANTS = ("full", "partial", "head", "features")


def images_per_s(model_name: str, variant: str, size: int, channels_last: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = get_model(model_name, num_classes=2, in_chans=1, weights=None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    if variant == "features":
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model.forward_head(model.forward_features(x), pre_logits=True)

    else:
        apply_freeze(model, {"full": "none", "partial": MODELS[model_name], "head": "backbone"}[variant])
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,160,224")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/efficientnet-...json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or Path(__file__).parent / "results" / f"efficientnet-throughput-{datetime.now(UTC):%F}.json")
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    layouts = [{"nchw": False, "channels_last": True}[v] for v in args.layouts.split(",")]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    header = {
        "what": "training img/s (features: forward-only img/s), random images, AdamW",
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "batch": args.batch,
        "timed_steps": args.steps,
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
        "rows": [],
    }
    for size in sizes:
        for variant in variants:
            for channels_last in layouts:
                for model_name in MODELS:
                    ips = images_per_s(model_name, variant, size, channels_last, args.steps, args.batch)
                    row = {"model": model_name, "variant": variant, "size": size, "channels_last": channels_last}
                    header["rows"].append({**row, "images_per_s": round(ips, 2)})
                    print(
                        f"{model_name:>18} {variant:>8} {size:>4} px {'CL  ' if channels_last else 'NCHW'} {ips:7.2f}"
                    )
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(header, indent=1))
    _print_table(header["rows"])
    print(f"wrote {out}")


def _print_table(rows: list[dict]) -> None:
    by = {(r["model"], r["variant"], r["size"], r["channels_last"]): r["images_per_s"] for r in rows}
    print("\n| variant | px | layout | Lite0 img/s | ResNet-18 img/s | Lite0 / ResNet-18 |\n|---|---|---|---|---|---|")
    for (model, variant, size, cl), ips in by.items():
        if model != "efficientnet_lite0":
            continue
        res = by.get(("resnet18", variant, size, cl))
        ratio = f"{ips / res:.2f}" if res else "-"
        print(f"| {variant} | {size} | {'channels_last' if cl else 'NCHW'} | {ips:.1f} | {res or 0:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
