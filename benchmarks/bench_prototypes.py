"""Benchmark of the ``prototypes`` analyzer: throughput vs a plain forward pass, and peak memory vs images.

The analyzer sends every image through the model six times (the original and five perturbed
copies) and perturbs each image five times on the CPU, so the ideal model cost is 6× a forward
pass; non-local means (the texture perturbation) usually dominates on the CPU. Printed in the same
run:

* ``forward``: preprocessing + a plain forward pass (images/s);
* ``model part``: preprocessing + the 6 views through the model up to the latent layer, with the
  perturbed images prepared beforehand (images/s; ratio to ``forward``, ideal ≈ 6);
* ``perturb``: the five perturbations alone (images/s);
* ``analyzer``: ``explainkit.analyze(..., ["prototypes"])`` end to end (images/s, ratio), and the
  same with ``calibration="none"`` (the cost of the three re-initialised copies);
* peak resident memory added by the analysis at several probe-set sizes, each in a fresh process
  (flat in the number of images: the state is O(P·C) sums plus a bounded sample).

Usage: ``python benchmarks/bench_prototypes.py [--sizes 100,200,400] [--model demo|protopnet] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import explainkit
from explainkit.data.probe import ProbeSet
from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.models import SYNTHETIC_PREPROCESSING, TinyProtoPNet
from explainkit.prototypes import ChannelPrototypes, VectorPrototypes, local_importance
from explainkit.prototypes.perturb import make_perturbations


def _handle(kind: str) -> explainkit.ModelHandle:
    if kind == "demo":
        from explainkit.datasets.demo import bundled_model_path

        return explainkit.load_model(bundled_model_path())
    torch.manual_seed(0)
    return explainkit.wrap(TinyProtoPNet(num_classes=3, prototypes_per_class=10).eval(),
                           class_names=("circle", "square", "triangle"), **SYNTHETIC_PREPROCESSING)


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def throughput(kind: str, n: int, device: str, batch: int) -> dict:
    handle = _handle(kind).to(device)
    handle.module.eval()
    with tempfile.TemporaryDirectory() as tmp:
        write_world(WorldSpec(n_images=n, seed=5), Path(tmp) / "probe")
        probe = ProbeSet.from_folder(Path(tmp) / "probe")
        images = [probe.load_image(i) for i in range(n)]
        perts = make_perturbations()
        adapter = (VectorPrototypes.from_model(handle, input_size=(64, 64)) if kind == "protopnet"
                   else ChannelPrototypes("features.3").bind(handle, (64, 64)))

        def forward() -> None:
            with torch.no_grad():
                for i in range(0, n, batch):
                    handle.forward(handle.preprocess(images[i : i + batch]).to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        perturbed = [[p(im) for im in images] for p in perts]

        def model_part() -> None:
            with torch.no_grad():
                for i in range(0, n, batch):
                    views = images[i : i + batch] + [im for ims in perturbed for im in ims[i : i + batch]]
                    adapter.similarity_maps(handle, handle.preprocess(views).to(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        def perturb_all() -> None:
            for im in images:
                for p in perts:
                    p(im)

        def core() -> None:
            for i in range(0, n, batch):
                local_importance(adapter, handle, images[i : i + batch], perts, handle.preprocess, device=device)

        def analyzer(calibration: str = "reinit") -> None:
            explainkit.analyze(handle, probe, [("prototypes", {"local_images": 1, "max_shown": 2,
                                                               "calibration": calibration})],
                               device=device, batch_size=batch, progress=False)

        forward()  # warm-up
        t_fwd, t_model, t_pert = _timed(forward), _timed(model_part), _timed(perturb_all, 1)
        t_core, t_an, t_raw = _timed(core, 1), _timed(analyzer, 1), _timed(lambda: analyzer("none"), 1)
    return {"images": n, "forward_ips": n / t_fwd, "model_part_ips": n / t_model, "model_part_ratio": t_model / t_fwd,
            "perturb_ips": n / t_pert, "local_importance_ips": n / t_core, "analyzer_ips": n / t_an,
            "analyzer_ratio": t_an / t_fwd, "uncalibrated_ips": n / t_raw, "calibration_ratio": t_an / t_raw}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory_child(kind: str, n: int, device: str, batch: int) -> None:
    """Peak resident memory during one analysis, sampled every 2 ms, above the resident memory before it."""
    handle = _handle(kind)
    with tempfile.TemporaryDirectory() as tmp:
        write_world(WorldSpec(n_images=n, seed=5), Path(tmp) / "probe")
        probe = ProbeSet.from_folder(Path(tmp) / "probe")
        base = _rss_mb()
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        explainkit.analyze(handle, probe, [("prototypes", {"local_images": 1, "max_shown": 2})], device=device,
                           batch_size=batch, progress=False)
        done.set()
        sampler.join()
    print(json.dumps({"images": n, "peak_rss_mb": peak[0], "growth_mb": peak[0] - base}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,200,400", help="probe-set sizes for the memory check")
    ap.add_argument("--throughput-images", type=int, default=128)
    ap.add_argument("--model", choices=["demo", "protopnet"], default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        peak_memory_child(args.model, args.child, args.device, args.batch_size)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, model {args.model}")
    t = throughput(args.model, args.throughput_images, args.device, args.batch_size)
    print(f"forward                 {t['forward_ips']:9.1f} images/s")
    print(f"model part (6 views)    {t['model_part_ips']:9.1f} images/s   {t['model_part_ratio']:5.2f}x forward "
          "cost (ideal 6)")
    print(f"perturbations (5)       {t['perturb_ips']:9.1f} images/s")
    print(f"local_importance        {t['local_importance_ips']:9.1f} images/s")
    print(f"analyzer (end to end)   {t['analyzer_ips']:9.1f} images/s   {t['analyzer_ratio']:5.2f}x forward cost")
    print(f"  calibration='none'    {t['uncalibrated_ips']:9.1f} images/s   the default (3 re-initialised copies) "
          f"costs {t['calibration_ratio']:4.2f}x")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--model", args.model, "--device",
                              args.device, "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"peak memory, {r['images']:5d} images: {r['peak_rss_mb']:8.1f} MB "
              f"(analysis added {r['growth_mb']:6.1f} MB)")
    growth = [r["growth_mb"] for r in rows]
    print(f"memory added by the analysis: {min(growth):.1f} to {max(growth):.1f} MB while the number of images grows "
          f"{max(r['images'] for r in rows) / min(r['images'] for r in rows):.0f}x")


if __name__ == "__main__":
    main()
