"""The generated parts of the documentation: parameter tables written from the plugins' declarations.

Every table of parameters in ``docs/`` is rendered from the :class:`~explainkit.options.Option`
declarations (type, range or choices, default, help), never kept by hand. A generated block sits
between two marker comments::

    <!-- BEGIN GENERATED: analyzers -->
    ...
    <!-- END GENERATED: analyzers -->

and everything outside the markers is prose. Regenerate after adding or changing a plugin::

    python -m explainkit.cli.docs          # or: make docs
    python -m explainkit.cli.docs --check  # exit 1 when a block is out of date (what the test checks)

Only the built-in plugins are documented: entry-point plugins of the environment are not loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from explainkit.options import Option, describe_options
from explainkit.registry import AUTOLOAD_ENV

__all__ = ["BLOCKS", "REGENERATE", "main", "options_table", "render_block", "stale_blocks", "update_file"]

#: The command that rewrites every generated block (named in the drift test's message).
REGENERATE = "python -m explainkit.cli.docs"

_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<key>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=key) -->)",
                    re.DOTALL)


# -- tables ---------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    """One table cell: one line, ``|`` escaped, ``<name>`` not read as an HTML tag."""
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", " ".join(str(text).split()).replace("|", "\\|"))


def _value(value: Any) -> str:
    if isinstance(value, str | int | float | bool | list | tuple | dict):
        return f"`{_cell(json.dumps(value))}`"
    return f"`{_cell(repr(value))}`"


def options_table(options: Mapping[str, Option], *, key: str = "Parameter") -> str:
    """A Markdown table of a declaration: name, allowed values, default, meaning (``Option.help``).

    Parameters
    ----------
    options : mapping of str to Option
        The declaration (defaults already bound).
    key : str
        Header of the first column.

    Returns
    -------
    str
        The table, or a sentence saying there is nothing to set.
    """
    if not options:
        return "No parameters.\n"
    lines = [f"| {key} | Allowed values | Default | Meaning |", "|---|---|---|---|"]
    for row in describe_options(options):
        default = "required" if row["required"] else "—" if row["default"] is None else _value(row["default"])
        lines.append(f"| `{row['name']}` | {_cell(row['type'])} | {default} | {_cell(row['help'])} |")
    return "\n".join(lines) + "\n"


# -- the blocks -------------------------------------------------------------------------------------
def _analyzers() -> str:
    from explainkit.analyzers import get_analyzer_class, list_analyzers

    parts = []
    for name in list_analyzers():
        cls = get_analyzer_class(name)
        needs = ", ".join(f"`{r}`" for r in sorted(cls.requires)) or "nothing"
        reads = " and ".join(sorted(cls.inputs))
        parts.append(f"### `{name}`: {_cell(cls.title)}\n\n{_cell(cls.summary)}\n\nNeeds: {needs}. Reads: {reads}. "
                     "Run by default: "
                     f"{'yes' if cls.run_by_default else 'no'}. Module: `{cls.__module__}`.\n\n"
                     f"{options_table(cls.options)}")
    return "\n".join(parts)


def _cam_methods() -> str:
    from explainkit.cam.methods import METHODS

    lines = ["| Method | Title | Kind | Run by default | Other spellings | pytorch-grad-cam peer |",
             "|---|---|---|---|---|---|"]
    aliases: dict[str, list[str]] = {}
    for alias, name in METHODS.aliases.items():
        aliases.setdefault(name, []).append(alias)
    for name, m in METHODS.items():
        spelled = ", ".join(f"`{a}`" for a in aliases.get(name, ())) or "—"
        lines.append(f"| `{name}` | {_cell(m.title)} | {m.kind} | {'yes' if m.default else 'no'} | {spelled} | "
                     f"{f'`{m.peer}`' if m.peer else '—'} |")
    parts = ["\n".join(lines) + "\n"]
    parts += [f"#### `{name}`\n\n{options_table(m.options)}" for name, m in METHODS.items() if m.options]
    return "\n".join(parts)


def _backends() -> str:
    from explainkit.backends.base import BACKENDS

    return "\n".join(f"### `{name}`\n\n{_first_line(cls.__doc__)}\n\n{options_table(cls.options)}"
                     for name, cls in BACKENDS.items())


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "`")


def _policy(table: str) -> Callable[[], str]:
    def render() -> str:
        from explainkit.gate import policy

        options = {"defaults": policy.DEFAULT_OPTIONS, "checks": policy.CHECK_OPTIONS,
                   "waivers": policy.WAIVER_OPTIONS}[table]
        return options_table(options, key="Key")

    return render


def _check_kinds() -> str:
    from explainkit.gate.kinds import get_check_kind, list_check_kinds

    parts = []
    for name in list_check_kinds():
        kind = get_check_kind(name)
        needs = "".join(f"; needs `{r}`" for r in sorted(kind.requires))
        target = "required" if kind.needs_target else "optional"
        parts.append(f"#### `{name}`: {_cell(kind.title)}\n\nDefault severity `{kind.default_severity}`; "
                     f"`target_class` {target}{needs}.\n\n{options_table(kind.options, key='Key')}")
    return "\n".join(parts)


#: Generated block key → (file under the repository root, renderer).
BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "analyzers": ("docs/analyzers.md", _analyzers),
    "cam-methods": ("docs/analyzers.md", _cam_methods),
    "backends": ("docs/analyzers.md", _backends),
    "policy-defaults": ("docs/check.md", _policy("defaults")),
    "policy-checks": ("docs/check.md", _policy("checks")),
    "policy-kinds": ("docs/check.md", _check_kinds),
    "policy-waivers": ("docs/check.md", _policy("waivers")),
}


def render_block(key: str) -> str:
    """The current text of block ``key`` (from the registries)."""
    return BLOCKS[key][1]()


def update_file(path: Path, keys: Iterable[str], *, write: bool = True) -> list[str]:
    """Rewrite the blocks ``keys`` of ``path``; return the keys whose text changed.

    Raises
    ------
    ValueError
        A block is missing from the file, or the file has a block nobody generates.
    """
    text = path.read_text(encoding="utf-8")
    keys = list(keys)
    found = [m.group("key") for m in _BLOCK.finditer(text)]
    missing, unknown = sorted(set(keys) - set(found)), sorted(set(found) - set(keys))
    if missing or unknown:
        raise ValueError(f"{path}: " + "; ".join(
            ([f"no markers for block(s) {', '.join(missing)}"] if missing else []) +
            ([f"unknown generated block(s) {', '.join(unknown)}"] if unknown else [])))
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        body = render_block(m.group("key"))
        if body != m.group("body"):
            changed.append(m.group("key"))
        return f"{m.group(1)}{body}{m.group(4)}"

    new = _BLOCK.sub(sub, text)
    if write and new != text:
        from explainkit._io import atomic_write_text

        atomic_write_text(path, new)
    return changed


def stale_blocks(root: Path, *, write: bool = False) -> dict[str, list[str]]:
    """File → the generated blocks that differ from the declarations (rewritten when ``write``)."""
    files: dict[str, list[str]] = {}
    for key, (rel, _) in BLOCKS.items():
        files.setdefault(rel, []).append(key)
    out = {rel: update_file(root / rel, keys, write=write) for rel, keys in files.items()}
    return {rel: keys for rel, keys in out.items() if keys}


def main(argv: list[str] | None = None) -> int:
    """``python -m explainkit.cli.docs [--check] [--root DIR]``.

    Returns
    -------
    int
        0: written (or up to date); 1: ``--check`` found stale blocks; 2: a file or a marker is missing.
    """
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, write nothing")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: here)")
    args = parser.parse_args(argv)
    os.environ[AUTOLOAD_ENV] = "1"  # the built-ins only, whatever plugins this environment has
    try:
        stale = stale_blocks(args.root, write=not args.check)
    except (OSError, ValueError) as exc:
        print(f"{REGENERATE}: {exc}", file=sys.stderr)
        return 2
    for rel, keys in stale.items():
        print(f"{rel}: {'stale' if args.check else 'rewrote'} {', '.join(keys)}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
