"""The package layout (ARCHITECTURE.md): the import spine has no upward arrow, families are siblings,
``analyzers/`` holds only the contract, and what registries and enums know is not copied by hand."""

from __future__ import annotations

import ast
import doctest
import json
from pathlib import Path

import pytest

import explainkit
from explainkit.analyzers import get_analyzer_class, list_analyzers
from explainkit.analyzers.registry import BUILTIN_ANALYZERS
from explainkit.loading import ModelFormat
from explainkit.report import schema_path

ROOT = Path(__file__).resolve().parents[1]
#: The spine, bottom to top. A module may import its own unit and units of lower layers only; units of
#: one layer are siblings and never import each other. ``explainkit`` is the package's ``__init__``.
LAYERS: list[set[str]] = [
    {"errors", "_version", "_io", "_prefetch", "stats", "textsafe", "pixels"},
    {"options", "registry", "provenance", "hooks", "cache", "samples", "device", "outputs"},
    {"loading", "data"},
    {"adapters", "report"},
    {"analyzers"},
    {"cam", "dissect", "information", "invert", "prototypes", "tcav"},
    {"discovery", "reliability", "tasks"},  # composite analyses on the families' libraries (discovery; reliability;
    # segmentation and multi-label metrics with CAMs per region)
    {"backends", "models", "config"},
    {"gate"},
    {"run"},
    {"explainkit"},
    {"datasets"},  # synthetic worlds, the demo, training recipes: top level, above the library
    {"cli"},
    {"__main__"},
]
FAMILIES = LAYERS[5]
COMPOSITES = LAYERS[6]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
_SOURCES = {"explainkit": ROOT / "explainkit", "cli": ROOT / "cli", "datasets": ROOT / "datasets"}


def _unit(module: str) -> str:
    """``explainkit.cam.api`` → ``cam``; ``explainkit.cli.x`` → ``cli``; ``explainkit`` → ``explainkit``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _modules() -> dict[str, Path]:
    out = {}
    for top, folder in _SOURCES.items():
        prefix = "explainkit" if top == "explainkit" else f"explainkit.{top}"
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((prefix, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every ``explainkit`` import of a file (module level, inside functions and under TYPE_CHECKING)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            found += [(node.lineno, f"{base}.{a.name}" if base == "explainkit" else base) for a in node.names]
    return [(line, name) for line, name in found if name == "explainkit" or name.startswith("explainkit.")]


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()}
    assert units <= set(LEVEL), f"place new top-level modules in LAYERS: {sorted(units - set(LEVEL))}"


def test_no_import_runs_up_the_spine_or_across_siblings():
    arrows = []
    for module, path in _modules().items():
        src = _unit(module)
        for line, target in _imports(path, module):
            dst = _unit(target)
            if target == "explainkit" or dst == src:
                continue
            if LEVEL[dst] >= LEVEL[src]:
                arrows.append(f"{path.relative_to(ROOT)}:{line}: {src} (layer {LEVEL[src]}) imports {target} "
                              f"(layer {LEVEL[dst]})")
    assert not arrows, "upward or sideways imports:\n" + "\n".join(arrows)


def test_the_check_sees_an_upward_arrow(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from explainkit.run import analyze\n")
    assert _imports(bad, "explainkit.gate.x") == [(2, "explainkit.run")]
    rel = tmp_path / "__init__.py"
    rel.write_text("from ..datasets import demo\nfrom . import api\n")
    assert [t for _, t in _imports(rel, "explainkit.cam")] == ["explainkit.datasets", "explainkit.cam"]


def test_analyzers_package_holds_only_the_contract():
    files = {p.name for p in (ROOT / "explainkit" / "analyzers").iterdir() if p.suffix == ".py"}
    assert files == {"__init__.py", "base.py", "metric.py", "performance.py", "registry.py"}


@pytest.mark.parametrize("family", sorted(FAMILIES | COMPOSITES))
def test_families_are_a_library_plus_one_analyzer(family):
    folder = ROOT / "explainkit" / family
    assert (folder / "analyzer.py").is_file()
    imported = {t.rpartition(".")[2] for _, t in _imports(folder / "__init__.py", f"explainkit.{family}")}
    assert "analyzer" not in imported, "the library must import without its analyzer"


def test_builtin_analyzers_live_in_their_family():
    assert list_analyzers() == sorted(BUILTIN_ANALYZERS)
    for name, spec in BUILTIN_ANALYZERS.items():
        module = spec.partition(":")[0]
        assert module == "explainkit.analyzers.performance" or (
            module.endswith(".analyzer") and _unit(module) in FAMILIES | COMPOSITES), spec
        assert get_analyzer_class(name).__module__ == module


def test_cam_name_is_the_function_and_the_package_imports():
    from explainkit.cam import methods

    assert callable(explainkit.cam) and explainkit.cam.__module__ == "explainkit.cam.api"
    assert methods.get_method("grad-cam++").name == "gradcampp"


def test_schema_model_formats_are_the_enum():
    schema = json.loads(Path(schema_path()).read_text())
    formats = schema["$defs"]["provenance"]["properties"]["model"]["properties"]["format"]["enum"]
    assert formats == [f.value for f in ModelFormat], "update report.schema.json from loading.sniff.ModelFormat"


@pytest.mark.parametrize("module", ["explainkit.options", "explainkit.analyzers.base"])
def test_docstring_examples_run(module):
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
