"""The cost of a default audit: ``explainkit analyze`` of a ResNet-50 against one plain forward pass.

For each probe-set size N, in one run:

1. a torchvision ResNet-50 with random weights (seeded) is saved as safetensors with explainkit
   metadata (architecture, preprocessing, 1,000 class names of which the synthetic world's three
   classes are the first);
2. the synthetic world is written at 224 x 224 px with N images, labels, concepts (with the planted
   ``stamp`` artifact) and masks, so that every default analyzer runs (performance, gradcam,
   captum, invert, prototypes);
3. **forward**: the same images, decoded and preprocessed batch by batch (untimed), through the
   model under ``torch.no_grad()`` (timed): one plain forward pass over the probe set;
4. **analyze**: ``python -m explainkit analyze model.safetensors --data probe --out out`` in a child
   process with stderr not a terminal (its progress lines are kept in ``analyze.stderr``); the
   child's peak resident memory comes from ``os.wait4`` (``ru_maxrss`` of that child alone);
5. printed: wall time of analyze, its ratio to the forward pass, the report's own timings per
   analyzer (map and finalize), peak RSS, sizes of ``report.html`` and ``samples/``, and what the
   analyzers sampled (n and why).

The machine this was written on is shared (2 cores, several jobs): absolute times are noisy, so
compare the ratios, measured in the same run; the ratio of **CPU times** (the forward pass's
``time.process_time``, the child's ``ru_utime + ru_stime``) does not depend on how much of the
machine other jobs take, the wall-time ratio does. With two or more sizes, the fixed cost (samples
capped in size, sanity check, fitting) and the cost per image are fitted by least squares and the
ratio at the issue's 1,000 images is extrapolated.

Usage::

    python benchmarks/bench_audit.py --n 1000 [--n 250] [--batch-size 32] [--threads 2] \
        [--workdir DIR] [-- EXTRA ANALYZE ARGS, e.g. --time-budget 10m]

``--json FILE`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import explainkit
from explainkit.data.probe import ProbeSet
from explainkit.datasets.synthetic import WorldSpec, write_world
from explainkit.loading.save import save_model

ARCH = "torchvision:resnet50(num_classes=1000)"
PREPROCESSING = {"input_size": (224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def build_model(path: Path, class_names: list[str]) -> Path:
    """A seeded random-weight ResNet-50 saved as safetensors with metadata."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=1000).eval()
    names = list(class_names) + [f"class_{i}" for i in range(len(class_names), 1000)]
    return save_model(model, path, arch=ARCH, class_names=names, preprocessing=PREPROCESSING)


def build_probe(path: Path, n: int) -> ProbeSet:
    """The synthetic world at 224 px: labels, concepts (stamp artifact) and masks."""
    if not (path / "world.json").exists():
        write_world(WorldSpec(n_images=n, size=224, artifact="stamp", seed=3), path)
    return ProbeSet.from_folder(path)


def time_forward(model_path: Path, probe: ProbeSet, batch_size: int) -> tuple[float, float]:
    """Wall and CPU seconds of the plain forward pass over the probe set (decoding and preprocessing untimed)."""
    handle = explainkit.load_model(model_path)
    prep = handle.require_preprocessing()
    wall = cpu = 0.0
    with torch.no_grad():
        for _, images in probe.iter_batches(batch_size):
            x = prep(images)
            t, c = time.perf_counter(), time.process_time()
            handle.forward(x)
            wall += time.perf_counter() - t
            cpu += time.process_time() - c
    return wall, cpu


def run_analyze(model_path: Path, probe_dir: Path, out: Path, batch_size: int, extra: list[str],
                env: dict[str, str]) -> dict:
    """Run the CLI in a child process; return wall time, exit code and the child's peak RSS."""
    cmd = [sys.executable, "-m", "explainkit", "analyze", str(model_path), "--data", str(probe_dir),
           "--out", str(out), "--batch-size", str(batch_size), *extra]
    err_path = out.parent / f"{out.name}.stderr"
    t = time.perf_counter()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "exit_code": proc.returncode,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "stderr": err_path, "command": " ".join(cmd[1:])}


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def _sampling(section: dict) -> dict:
    """What an analyzer says it sampled (``data.sampling``), if anything."""
    return (section.get("data") or {}).get("sampling") or {}


def one_size(n: int, workdir: Path, batch_size: int, threads: int, extra: list[str]) -> dict:
    root = workdir / f"n{n}"
    root.mkdir(parents=True, exist_ok=True)
    probe = build_probe(root / "probe", n)
    model_path = root / "resnet50.safetensors"
    if not model_path.exists():
        build_model(model_path, list(probe.class_names or ()))
    forward, forward_cpu = time_forward(model_path, probe, batch_size)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    out = root / "out"
    res = run_analyze(model_path, root / "probe", out, batch_size, extra, env)
    result = {"n": n, "forward_s": forward, "forward_cpu_s": forward_cpu,
              **{k: v for k, v in res.items() if k != "stderr"}, "ratio": res["wall_s"] / forward,
              "cpu_ratio": res["cpu_s"] / forward_cpu, "stderr": str(res["stderr"])}
    report_json = out / "report.json"
    if report_json.exists():
        doc = json.loads(report_json.read_text())
        result["timings_s"] = doc["provenance"]["timings_s"]
        result["report_html_mb"] = _size_mb(out / "report.html")
        result["report_json_mb"] = _size_mb(report_json)
        result["samples_mb"] = _size_mb(out / "samples")
        result["sampling"] = {s["analyzer"]: _sampling(s) for s in doc["sections"] if _sampling(s)}
        result["findings"] = [f["message"][:160] for f in doc["findings"]]
    forward_in_run = (result.get("timings_s") or {}).get("forward")
    if forward_in_run:
        result["ratio_to_forward_in_run"] = res["wall_s"] / forward_in_run
    return result


def _print(r: dict) -> None:
    print(f"\n=== N = {r['n']} images (224 px, ResNet-50, batch {r.get('batch_size', '')}) ===")
    print(f"plain forward            {r['forward_s']:9.1f} s")
    print(f"analyze (wall, exit {r['exit_code']})  {r['wall_s']:9.1f} s   ratio {r['ratio']:.1f}x forward")
    print(f"CPU time: forward {r['forward_cpu_s']:.1f} s, analyze {r['cpu_s']:.1f} s   ratio {r['cpu_ratio']:.1f}x "
          "(robust to other jobs on the machine)")
    for key, value in (r.get("timings_s") or {}).items():
        print(f"  {key:26s}{value:9.1f} s   ({value / r['forward_s']:.1f}x)")
    print(f"peak RSS                 {r['peak_rss_mb']:9.0f} MB")
    for key in ("report_html_mb", "report_json_mb", "samples_mb"):
        if key in r:
            print(f"{key:25s}{r[key]:9.1f} MB")
    for name, s in (r.get("sampling") or {}).items():
        print(f"sampling[{name}]: {json.dumps(s)[:600]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append", help="probe images (repeatable); default 1000")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--workdir", type=Path, help="keep worlds, model and outputs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("extra", nargs="*", help="extra arguments for explainkit analyze (after --)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = args.n or [1000]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for n in sizes:
            r = one_size(n, workdir, args.batch_size, args.threads, args.extra)
            r["batch_size"] = args.batch_size
            _print(r)
            results.append(r)
    if len(results) > 1:
        _extrapolate(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _extrapolate(results: list[dict], target: int = 1000) -> None:
    """Least-squares ``cpu = fixed + n * per_image`` for analyze and forward; the CPU ratio at ``target`` images."""
    n = np.array([r["n"] for r in results], dtype=float)
    design = np.stack([np.ones_like(n), n], 1)
    (a0, a1), (f0, f1) = (np.linalg.lstsq(design, np.array([r[k] for r in results]), rcond=None)[0]
                          for k in ("cpu_s", "forward_cpu_s"))
    print(f"\nanalyze CPU = {a0:.0f} s + {a1:.2f} s/image; forward CPU = {f0:.1f} s + {f1:.3f} s/image; "
          f"extrapolated CPU ratio at {target} images: {(a0 + a1 * target) / (f0 + f1 * target):.1f}x")
    print("peak RSS by n: " + ", ".join(f"{r['n']}: {r['peak_rss_mb']:.0f} MB" for r in results))


if __name__ == "__main__":
    main()
