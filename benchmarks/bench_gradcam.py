"""Grad-CAM speed and Score-CAM memory, explainkit vs pytorch-grad-cam, in one run (CPU).

Part 1 — ResNet-50 (random weights), batch 16 at 224x224, layer4, predicted class:

* plain forward: the same model in eval mode under ``torch.no_grad()``;
* explainkit ``cam(method="gradcam")``: forward under no_grad up to layer4, autograd graph from the
  hooked layer, ``torch.autograd.grad`` to the layer only;
* pytorch-grad-cam 1.5.7 ``GradCAM``: full forward with grad, ``loss.backward()`` into every
  parameter, NumPy post-processing;
* explainkit ``cams()``: all eight one-pass gradient methods from the same forward and backward.

Targets: Grad-CAM <= 1.25x a plain forward, >= 1.8x faster than pytorch-grad-cam, all gradient CAMs
within 1.1x of Grad-CAM alone.

Part 2 — Score-CAM peak memory (ResNet-18, 2 images at 64x64, layer4 = 512 channels) for several
``batch_size`` values, each in a fresh subprocess, peak RSS sampled every 2 ms from /proc; and
pytorch-grad-cam's ScoreCAM, which builds the whole B x K x C x H x W masked-input tensor first.

Usage: ``python benchmarks/bench_gradcam.py [--repeats 5] [--skip-memory]``. Timings are medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torchvision

import explainkit
from explainkit.cam import GRADIENT_METHODS


def speed(repeats: int) -> dict[str, float]:
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(16, 3, 224, 224)

    def plain():
        with torch.no_grad():
            model(x)

    def ours():
        explainkit.cam(model, x, layer="layer4", method="gradcam")

    def ours_all():
        explainkit.cams(model, x, layer="layer4", methods=GRADIENT_METHODS)

    def theirs():
        with GradCAM(model, [model.layer4]) as peer:
            peer(x, None)

    def cleanup():
        # pytorch-grad-cam leaves parameter .grad and (through its retained graph) the whole
        # forward's activations alive; free them outside the timed region so that they do not
        # slow down the next measurement
        model.zero_grad(set_to_none=True)
        gc.collect()

    def block(fns: dict, tag: str) -> None:
        # interleaved, so that load drifts hit every function of the block alike
        for fn in fns.values():
            fn()
            cleanup()
        for _ in range(repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                results.setdefault(f"{name}{tag}", []).append(time.perf_counter() - t)
                cleanup()

    results: dict[str, list[float]] = {}
    # explainkit first; pytorch-grad-cam in its own block, since the memory it allocates and
    # frees slows down whatever runs right after it; each block has its own plain forward
    block({"forward": plain, "explainkit_gradcam": ours, "explainkit_all_gradient_cams": ours_all}, "")
    block({"forward": plain, "pytorch_grad_cam": theirs}, "_peer_block")
    return {k: statistics.median(v) for k, v in results.items()}


_MEMORY_CHILD = r"""
import json, os, sys, threading, time, torch, torchvision
torch.set_num_threads(int(sys.argv[3]))
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()
x = torch.randn(2, 3, 64, 64)
which, bs = sys.argv[1], int(sys.argv[2])
import explainkit
from pytorch_grad_cam import ScoreCAM
with torch.no_grad():
    model(x.repeat(max(1, bs // 2), 1, 1, 1))  # allocator warm-up at the chunk size
peak, stop = [0], [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
before = rss()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t = time.perf_counter()
if which == "explainkit":
    explainkit.cam(model, x, layer="layer4", method="scorecam", variant="channel_softmax", batch_size=bs)
else:
    import contextlib, io
    with ScoreCAM(model, [model.layer4]) as cam, contextlib.redirect_stderr(io.StringIO()):
        cam.batch_size = bs
        cam(x, None)
elapsed = time.perf_counter() - t
stop[0] = True
thread.join()
print(json.dumps({"peak_mb": (max(peak[0], rss()) - before) / 2**20, "seconds": elapsed}))
"""


def memory(batch_sizes: list[int], threads: int) -> list[dict]:
    rows = []
    for which, bs in [("explainkit", b) for b in batch_sizes] + [("pytorch_grad_cam", 32)]:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, which, str(bs), str(threads)],
                             capture_output=True, text=True, check=True)
        rows.append({"library": which, "batch_size": bs, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--batch-sizes", default="8,32,128")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU, {os.cpu_count()} cores visible")
    print("\n== ResNet-50, batch 16, 224x224, layer4 (median of", args.repeats, "runs)")
    t = speed(args.repeats)
    for name, sec in t.items():
        print(f"{name:30s} {sec:8.3f} s")
    r_fwd = t["explainkit_gradcam"] / t["forward"]
    r_peer = (t["pytorch_grad_cam_peer_block"] / t["forward_peer_block"]) / r_fwd
    r_all = t["explainkit_all_gradient_cams"] / t["explainkit_gradcam"]
    print(f"explainkit Grad-CAM / plain forward          = {r_fwd:.2f}x   (target <= 1.25x)"
          f"  {'OK' if r_fwd <= 1.25 else 'MISSED'}")
    print(f"pytorch-grad-cam / explainkit Grad-CAM       = {r_peer:.2f}x   (target >= 1.8x)"
          f"  {'OK' if r_peer >= 1.8 else 'MISSED'}  (each relative to its block's plain forward)")
    print(f"all 8 gradient CAMs / Grad-CAM alone         = {r_all:.2f}x   (target <= 1.1x)"
          f"  {'OK' if r_all <= 1.1 else 'MISSED'}")
    if not args.skip_memory:
        print("\n== Score-CAM peak extra memory, ResNet-18, 2 images 64x64, layer4 (512 channels)")
        rows = memory([int(b) for b in args.batch_sizes.split(",")], threads)
        for row in rows:
            print(f"{row['library']:18s} batch_size {row['batch_size']:4d}: peak +{row['peak_mb']:7.1f} MiB, "
                  f"{row['seconds']:6.1f} s")
        ours = [r for r in rows if r["library"] == "explainkit"]
        peer = next(r for r in rows if r["library"] == "pytorch_grad_cam")
        same = next((r for r in ours if r["batch_size"] == peer["batch_size"]), ours[-1])
        print(f"pytorch-grad-cam / explainkit peak memory at batch_size {same['batch_size']} = "
              f"{peer['peak_mb'] / max(same['peak_mb'], 1e-3):.1f}x; "
              f"Score-CAM time ratio = {peer['seconds'] / same['seconds']:.2f}x")


if __name__ == "__main__":
    main()
