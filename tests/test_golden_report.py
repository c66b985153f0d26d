"""Behaviour lock: the reduced demo's report JSON (analyze + check) equals a committed golden file.

The reduced demo is the bundled demo model on a 48-image probe world like the demo's, every default
analyzer (light settings, one thread) and the demo policy (every gate kind, fewer images). Run-dependent
fields are removed before the comparison (creation time, versions, timings, elapsed seconds) and
temporary paths are written relative to the demo folder (and the checkout's paths relative to
its root); image assets are compared by their decoded
pixels. Numbers must agree to ``rtol=1e-6`` (plus ``atol=1e-9``), everything else exactly.

A branch that changes the report *on purpose* regenerates the golden file with one command, and
commits it with the change that explains it::

    OMP_NUM_THREADS=1 .venv/bin/python tests/test_golden_report.py

(about 15 s; it rewrites ``tests/golden/demo_report.json``). Look at ``git diff`` of the golden file
before committing: every changed number should be one the change meant to change.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "golden" / "demo_report.json"
TODAY = dt.date(2026, 1, 1)
N_IMAGES = 48
#: Light settings of the heavier analyzers (every default method still runs).
PARAMS: dict[str, dict[str, Any]] = {
    "gradcam": {"metric_images": 6, "road_images": 2, "steps": 4, "sanity_images": 2, "sanity_steps": 2,
                "n_examples": 2, "n_resamples": 200},
    "captum": {"metric_images": 4, "road_images": 2, "steps": 4, "sanity_images": 2, "sanity_steps": 2,
               "n_examples": 2, "n_resamples": 200},
    "invert": {"top_images": 2, "max_image_neurons": 3},
    "prototypes": {"per_class": 1, "n_resamples": 50, "local_images": 1, "max_shown": 2, "prototypes": list(range(12))},
    "performance": {"n_resamples": 500},
}
#: Keys whose values differ between runs of the same code.
_VOLATILE = frozenset({"created_utc", "versions", "timings_s", "elapsed_s", "used_bytes"})
RTOL, ATOL = 1e-6, 1e-9


def _asset_digest(uri: str) -> str:
    """Mode, size and SHA-256 of the decoded pixels (independent of the encoder's byte stream)."""
    from PIL import Image

    _, _, payload = uri.partition(",")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as im:
        im.load()
        return f"{im.mode} {im.size[0]}x{im.size[1]} {hashlib.sha256(im.tobytes()).hexdigest()[:16]}"


#: The checkout's own root (bundled assets are named by absolute path in provenance).
_REPO = str(Path(__file__).resolve().parents[1])


def _normalise(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, root) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_normalise(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<demo>").replace(_REPO, "<repo>")
    return value


def _document(report: dict[str, Any], root: str) -> dict[str, Any]:
    doc = _normalise(report, root)
    doc["assets"] = {k: _asset_digest(v) for k, v in sorted(report.get("assets", {}).items())}
    return doc


def build_document() -> dict[str, Any]:
    """Run the reduced demo (analyze + check) and return both reports, normalised."""
    import torch

    import explainkit
    from explainkit.datasets.demo import PROBE_WORLD, bundled_asset, bundled_model_path
    from explainkit.datasets.synthetic import write_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="explainkit-golden-"))
    try:
        write_world(replace(PROBE_WORLD, n_images=N_IMAGES), folder / "probe")
        shutil.copyfile(bundled_asset("stamp.png"), folder / "stamp.png")
        policy = bundled_asset("demo_policy.toml").read_text()
        policy = re.sub(r"^max_images = \d+", "max_images = 24", policy, flags=re.MULTILINE)
        (folder / "demo_policy.toml").write_text(policy)
        handle = explainkit.load_model(bundled_model_path())
        probe = explainkit.ProbeSet.from_folder(folder / "probe")
        defaults = [n for n in explainkit.list_analyzers() if explainkit.get_analyzer(n).run_by_default
                    and not explainkit.get_analyzer(n).missing_requirements(handle, probe)]
        analysis = explainkit.analyze(handle, probe, [(n, PARAMS.get(n, {})) for n in defaults], seed=0,
                                      batch_size=16, progress=False, config={"demo": "golden"})
        gate = explainkit.check(handle, folder / "demo_policy.toml", batch_size=16, progress=False, today=TODAY)
        root = str(folder)
        return {"analyze": _document(analysis.to_dict(), root), "check": _document(gate.report.to_dict(), root)}
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(folder, ignore_errors=True)


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if len(out) >= 20:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys()):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing' if k not in a else 'unexpected'}")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != golden {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif (isinstance(a, float) or isinstance(b, float)) and isinstance(a, int | float) and isinstance(b, int | float) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        if not math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL):
            out.append(f"{path}: {a!r} != golden {b!r}")
    elif a != b or type(a) is not type(b):
        out.append(f"{path}: {a!r} != golden {b!r}")


def test_reduced_demo_report_matches_golden():
    """Same report as the committed golden file (regenerate: see the module docstring)."""
    golden = json.loads(GOLDEN.read_text())
    current = json.loads(json.dumps(build_document()))
    problems: list[str] = []
    _diff(current, golden, "", problems)
    assert not problems, "report differs from tests/golden/demo_report.json:\n" + "\n".join(problems)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(build_document(), indent=1, sort_keys=True, allow_nan=False) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
