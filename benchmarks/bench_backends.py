"""Scale-out: 2 workers vs 1 on this machine, and a cached rerun vs a cold run, in one run.

Data: a synthetic probe world (the demo's probe recipe, ``--images`` images at 64 px, stamp
artifact) and the bundled demo model. Analyzers: ``--analyzers`` (default: performance, invert,
gradcam, prototypes — every analyzer the demo model supports).

Runs, each a fresh ``explainkit analyze`` process (so start-up costs are counted), wall time:

* ``serial, 1 thread``: the reference backend with ``OMP_NUM_THREADS=1`` (one worker);
* ``serial, N threads``: the same with ``OMP_NUM_THREADS=N`` (intra-op parallelism only);
* ``torchrun x2``: ``torchrun --standalone --nproc_per_node=2``, one thread per rank (gloo);
* ``ray x2``: ``--backend ray --workers 2``, one thread per actor (if ``ray`` is installed);
* ``invert cold`` / ``invert cached rerun``: ``--cache-dir`` set, the rerun changes only
  ``alpha`` and ``auroc_floor``, so every batch comes from the cache.

Every parallel run's sections must equal the serial run's (floats to 1e-6 relative: float32 rounding); the script
says so. Ratios are speed-ups over ``serial, 1 thread``.

Usage: ``python benchmarks/bench_backends.py [--images 960] [--batch-size 32] [--skip-ray]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from explainkit.datasets.demo import PROBE_WORLD, bundled_model_path
from explainkit.datasets.synthetic import write_world


def close(a: object, b: object, rel: float = 1e-6) -> bool:
    """JSON values equal, floats up to float32 rounding (batch composition changes the last bits)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
    return a == b


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    return wall


def sections(out: Path) -> list:
    return json.loads((out / "report.json").read_text())["sections"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--analyzers", default="performance,invert,gradcam,prototypes")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ek-bench-backends-"))
    world = write_world(dataclasses.replace(PROBE_WORLD, n_images=args.images), tmp / "world")
    base = ["analyze", str(bundled_model_path()), "--data", str(world), "--batch-size", str(args.batch_size),
            "--no-progress", *[x for a in args.analyzers.split(",") for x in ("--analyzer", a)]]
    ek = [sys.executable, "-m", "explainkit"]
    rows: list[tuple[str, float, str]] = []

    serial = run([*ek, *base, "--out", str(tmp / "serial1")], 1)
    rows.append(("serial, 1 thread", serial, "reference"))
    wall = run([*ek, *base, "--out", str(tmp / "serialN")], args.threads)
    rows.append((f"serial, {args.threads} threads", wall, "same" if close(sections(tmp / "serialN"),
                                                                          sections(tmp / "serial1")) else "DIFFERS"))
    wall = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "explainkit", *base, "--backend", "torchrun", "--out", str(tmp / "ddp")], 1)
    rows.append(("torchrun x2", wall, "same" if close(sections(tmp / "ddp"), sections(tmp / "serial1"))
                 else "DIFFERS"))
    if not args.skip_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray not installed: skipped (pip install 'explainkit[ray]')")
        else:
            wall = run([*ek, *base, "--backend", "ray", "--workers", "2", "--out", str(tmp / "ray")], 1)
            rows.append(("ray x2", wall, "same" if close(sections(tmp / "ray"), sections(tmp / "serial1"))
                         else "DIFFERS"))

    inv = ["analyze", str(bundled_model_path()), "--data", str(world), "--batch-size", str(args.batch_size),
           "--no-progress", "--cache-dir", str(tmp / "cache")]
    cold = run([*ek, *inv, "--analyzer", "invert", "--out", str(tmp / "cold")], args.threads)
    warm = run([*ek, *inv, "--analyzer", "invert:alpha=0.1,auroc_floor=0.7", "--out", str(tmp / "warm")],
               args.threads)

    print(f"{args.images} images at 64 px, batch {args.batch_size}, analyzers {args.analyzers}, "
          f"{os.cpu_count()} CPUs; wall time of a fresh process per run")
    print(f"{'run':<24}{'wall s':>9}{'speed-up':>10}  sections vs serial")
    for name, wall, same in rows:
        print(f"{name:<24}{wall:>9.1f}{serial / wall:>9.2f}x  {same}")
    print(f"{'invert cold':<24}{cold:>9.1f}")
    print(f"{'invert cached rerun':<24}{warm:>9.1f}{cold / warm:>9.2f}x  (alpha, auroc_floor changed)")
    print(f"outputs in {tmp}")


if __name__ == "__main__":
    main()
