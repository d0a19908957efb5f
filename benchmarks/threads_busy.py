"""Torch threads on a CPU that another job keeps busy: training speed with 1 thread and with one per core.

    python benchmarks/threads_busy.py [--steps 30] [--out FILE.json]

Trains the CNN of `make demo` (64 px, batch 32, random images: the arithmetic, not the data, is measured) with each
thread count, first on an idle machine, then while a second process spins on one core (a stand-in for another
training). PyTorch starts one thread per core; when a core is taken, its threads wait on each other at every
parallel region, so one thread can be faster. Prints images/s and the ratios of one run; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time

import torch

from pneumo.models import get_model


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def images_per_s(threads: int, steps: int, batch: int = 32, size: int = 64) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_model("cnn", num_classes=2, in_chans=1, weights=None).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    rows = []
    for busy in (False, True):
        stop = mp.Event()
        spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if busy else None
        if spinner:
            spinner.start()
            time.sleep(0.5)
        try:
            for threads in counts:
                rows.append(
                    {"other_core_busy": busy, "threads": threads, "images_per_s": images_per_s(threads, args.steps)}
                )
        finally:
            if spinner:
                stop.set()
                spinner.join()
    print(f"CPU {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}")
    print("| another process spinning on one core | threads | img/s |\n|---|---|---|")
    for r in rows:
        print(f"| {'yes' if r['other_core_busy'] else 'no'} | {r['threads']} | {r['images_per_s']:.1f} |")
    by = {(r["other_core_busy"], r["threads"]): r["images_per_s"] for r in rows}
    ratios = {busy: by[(busy, 1)] / by[(busy, cores)] for busy in (False, True)}
    print(f"1 thread / {cores} threads: idle {ratios[False]:.2f}x, one core busy {ratios[True]:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cores": cores, "torch": torch.__version__, "steps": args.steps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
