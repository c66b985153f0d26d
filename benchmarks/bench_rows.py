"""Chunked model passes on the CPU: time per image and memory against one pass over the whole batch.

The shared pass and the analyzers' extra passes run a batch in chunks of
:func:`explainkit.backends.passes.rows_per_pass` rows (a memory budget, ``PASS_MEMORY_BYTES``).
This benchmark times a torchvision ResNet-50 (random weights) at 224 px, with and without an
autograd graph (forward plus input gradient), in those chunks and in chunks of the whole batch
(the naive baseline), and prints CPU seconds per image, the ratio and the peak RSS each adds
(measured in a child process per setting, so peaks do not mask each other).

Usage::

    python benchmarks/bench_rows.py [--batch-size 32] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torchvision

from explainkit.backends.passes import rows_per_pass

SHAPE = (3, 224, 224)


def one(rows: int, batch: int, gradients: bool, repeats: int, threads: int) -> dict[str, float]:
    """CPU seconds per image and the peak RSS added by ``repeats`` passes over ``batch`` images in chunks."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(batch, *SHAPE)
    with torch.no_grad():
        model(x[:1])  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.process_time()
    for _ in range(repeats):
        for start in range(0, batch, rows):
            xi = x[start : start + rows].clone().requires_grad_(gradients)
            with torch.set_grad_enabled(gradients):
                out = model(xi)
                if gradients:
                    torch.autograd.grad(out[:, 0].sum(), xi)
    per_image = (time.process_time() - t) / (repeats * batch)
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"s_per_image": per_image, "peak_added_mb": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rows, gradients = json.loads(args.child)
        print(json.dumps(one(rows, args.batch_size, gradients, args.repeats, args.threads)))
        return
    for gradients in (False, True):
        chunk = rows_per_pass(args.batch_size, SHAPE, torch.device("cpu"), gradients=gradients)
        res = {}
        for rows in (chunk, args.batch_size):
            cmd = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--child", json.dumps([rows, gradients])]
            res[rows] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        mine, naive = res[chunk], res[args.batch_size]
        what = "forward + input gradient" if gradients else "forward (no graph)"
        print(f"{what}: chunks of {chunk}: {mine['s_per_image']:.3f} s/image, +{mine['peak_added_mb']:.0f} MB peak; "
              f"whole batch of {args.batch_size}: {naive['s_per_image']:.3f} s/image, "
              f"+{naive['peak_added_mb']:.0f} MB peak; time ratio {mine['s_per_image'] / naive['s_per_image']:.2f}x, "
              f"memory ratio {mine['peak_added_mb'] / max(naive['peak_added_mb'], 1):.2f}x")


if __name__ == "__main__":
    main()
