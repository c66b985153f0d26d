"""Wheel and editable installs: cli/ and datasets/ live only under the explainkit namespace."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The builds below run without build isolation (no network), with this environment's setuptools.
pytestmark = pytest.mark.skipif(
    int(importlib.metadata.version("setuptools").split(".")[0]) < 77,
    reason="pyproject's SPDX license needs setuptools>=77 in the test environment (pip install -e '.[test]')")

CHECK = r"""
import importlib.util, json, sys
import explainkit, explainkit.cli, explainkit.datasets
from explainkit.datasets.demo import bundled_model_path
from explainkit.report import schema_path
assert importlib.util.find_spec("cli") is None, "top-level cli importable"
spec = importlib.util.find_spec("datasets")
assert spec is None or "explainkit" not in str(spec.origin), spec
assert bundled_model_path().is_file() and open(schema_path()).read().startswith("{")
from explainkit.report.html import _env
_env().get_template("sections/performance.html.j2")
print(json.dumps({"explainkit": explainkit.__file__, "cli": explainkit.cli.__file__}))
"""


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # this environment's packages (and those of a base it extends through a .pth file)
    deps = [sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))]
    (site / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return venv


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", *args], check=True, capture_output=True, cwd=ROOT)


def _check(venv: Path, cwd: Path) -> dict:
    import json

    out = subprocess.run([str(venv / "bin" / "python"), "-c", CHECK], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    cli = subprocess.run([str(venv / "bin" / "explainkit"), "analyzers"], capture_output=True, text=True, cwd=cwd)
    assert cli.returncode == 0 and "performance" in cli.stdout, cli.stderr
    return json.loads(out.stdout)


def test_wheel_install(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w",
                            str(dist), str(ROOT)], check=True, capture_output=True, text=True)
    log = build.stdout + build.stderr
    assert "DeprecationWarning" not in log and "would be ignored" not in log, "the build is not quiet"
    wheel = next(dist.glob("explainkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"explainkit", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "explainkit/cli/main.py" in names and "explainkit/data/probe.py" in names
    assert "explainkit/report/templates/report.html.j2" in names
    assert "explainkit/datasets/assets/demo_model.safetensors" in names
    venv = _venv(tmp_path)
    _pip(venv, str(wheel))
    paths = _check(venv, tmp_path)
    assert "site-packages/explainkit/cli" in paths["cli"]


def test_editable_install(tmp_path):
    venv = _venv(tmp_path)
    _pip(venv, "-e", str(ROOT))
    paths = _check(venv, tmp_path)
    assert paths["cli"] == str(ROOT / "cli" / "__init__.py")
    assert paths["explainkit"] == str(ROOT / "explainkit" / "__init__.py")
