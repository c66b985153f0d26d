"""Why the ``captum`` analyzer runs Saliency only by default: Integrated Gradients' cost and its convergence.

On the bundled demo model (trained on the stamped synthetic world, 64 px) and N probe images, in one run:

* **Saliency**: one forward and one backward per image (the runner's shared pass gives it for free
  when ``gradcam`` runs too);
* **Integrated Gradients** (all-zero baseline, Gauss–Legendre points as captum's default) at
  ``n_steps`` 4 … 64: seconds per image against Saliency, and captum's convergence delta as a
  fraction of the explained gap, ``|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|`` (median and 90th
  percentile over images);
* IG with ``delta_tolerance=0.05`` (steps doubled per image from 8 until the relative delta is at
  most 5 %): the steps the images needed and the cost.

Usage: ``python benchmarks/bench_captum.py [--n 64] [--threads 1]``. Timings are noisy on a shared
machine; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import explainkit
from explainkit.cam.captum_bridge import integrated_gradients, saliency
from explainkit.cam.engine import CamRun
from explainkit.datasets.demo import bundled_model_path
from explainkit.datasets.synthetic import WorldSpec, write_world

STEPS = (4, 8, 16, 32, 64)


def _timed(fn, *args, **kwargs) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="probe images")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    handle = explainkit.load_model(bundled_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "probe"
        write_world(WorldSpec(n_images=args.n, artifact="stamp", seed=3), root)
        probe = explainkit.ProbeSet.from_folder(root)
        x = handle.preprocess([probe.load_image(i) for i in range(len(probe))])
    run = CamRun.create(handle, x, layer=None, targets=None, needs_layers=False, batch_size=len(x))
    run.record(gradients=False)
    classes = run.bound.classes
    with torch.no_grad():
        gap = (handle.forward(x).gather(1, classes[:, None]) -
               handle.forward(torch.zeros_like(x)).gather(1, classes[:, None]))[:, 0].abs().double()
    saliency(run)  # warm-up
    _, base = _timed(saliency, run)
    print(f"N = {len(x)} images, demo model (64 px), {args.threads} thread(s)")
    print(f"Saliency                     {1e3 * base / len(x):8.2f} ms/image   1.0x")
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(handle.forward)
    for steps in STEPS:
        (_, delta), t = _timed(ig.attribute, x, target=classes.tolist(), baselines=0.0, n_steps=steps,
                               internal_batch_size=len(x), return_convergence_delta=True)
        rel = (delta.detach().abs().double() / gap).numpy()
        print(f"IG n_steps={steps:<3d}              {1e3 * t / len(x):8.2f} ms/image {t / base:5.1f}x   "
              f"relative delta median {np.median(rel):.3f}, p90 {np.quantile(rel, 0.9):.3f}")
    _, t = _timed(integrated_gradients, run, n_steps=8, delta_tolerance=0.05, max_steps=128)
    used = run.cache["integrated_gradients_steps"].numpy()
    counts = {int(s): int((used == s).sum()) for s in np.unique(used)}
    print(f"IG delta_tolerance=0.05      {1e3 * t / len(x):8.2f} ms/image {t / base:5.1f}x   steps used {counts}")


if __name__ == "__main__":
    main()
