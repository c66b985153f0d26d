"""The parameter tables of docs/*.md are generated from the declarations and must not drift from them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import pytest

from explainkit.analyzers import get_analyzer_class, list_analyzers
from explainkit.backends.base import BACKENDS
from explainkit.cli import docs
from explainkit.gate import get_check_kind, list_check_kinds
from explainkit.gate.kinds import base as kinds_base
from explainkit.gate.policy import CHECK_OPTIONS, DEFAULT_OPTIONS, WAIVER_OPTIONS
from explainkit.options import Option
from explainkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_match_the_declarations():
    stale = docs.stale_blocks(ROOT)
    assert not stale, (f"generated docs are out of date with the declared options ({stale}); regenerate with "
                       f"`{docs.REGENERATE}` (or `make docs`) and commit the result")


def test_every_documented_option_has_help():
    tables = {"[defaults]": DEFAULT_OPTIONS, "[[checks]]": CHECK_OPTIONS, "[[waivers]]": WAIVER_OPTIONS,
              **{f"analyzer {n}": get_analyzer_class(n).options for n in list_analyzers()},
              **{f"check kind {k}": get_check_kind(k).options for k in list_check_kinds()},
              **{f"backend {n}": cls.options for n, cls in BACKENDS.items()}}
    missing = [f"{where}: {key}" for where, opts in tables.items() for key, o in opts.items() if not o.help]
    assert not missing, f"options without help (it is their documentation): {missing}"


def test_a_new_plugin_appears_when_regenerated(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    for name in ("analyzers.md", "check.md"):
        shutil.copyfile(ROOT / "docs" / name, tmp_path / "docs" / name)

    class Watermark(kinds_base.CheckKind):
        name = "watermark_probe"
        title = "Watermark probe"
        options: ClassVar[dict[str, Option]] = {
            "opacity": Option("float", 0.5, low=0, high=1, help="opacity of the | pasted <mark>"),
        }

    fresh = Registry("check kind", builtins=kinds_base.CHECK_KINDS.builtins, check=kinds_base._check)
    monkeypatch.setattr(kinds_base, "CHECK_KINDS", fresh)
    kinds_base.register_check_kind(Watermark)
    assert docs.stale_blocks(tmp_path) == {"docs/check.md": ["policy-checks", "policy-kinds"]}
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert docs.main(["--root", str(tmp_path)]) == 0
    assert docs.stale_blocks(tmp_path) == {}
    text = (tmp_path / "docs" / "check.md").read_text()
    assert ("| `opacity` | a finite number >= 0 and <= 1 | `0.5` | opacity of the \\| pasted &lt;mark> |" in text)
    assert "'transform', 'watermark_probe'" in text  # the kind key's choices come from the registry


def test_markers_must_match_the_blocks(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "check.md").write_text("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->\n")
    (tmp_path / "docs" / "analyzers.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no markers for block"):
        docs.update_file(tmp_path / "docs" / "analyzers.md", ["analyzers"])
    with pytest.raises(ValueError, match="unknown generated block"):
        docs.update_file(tmp_path / "docs" / "check.md", [])
    assert docs.main(["--root", str(tmp_path)]) == 2
    assert "no markers" in capsys.readouterr().err
