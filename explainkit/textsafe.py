"""Make untrusted text inert before it reaches a terminal, a CI log or a step summary.

Class names, concept names, file names, policy descriptions and waiver reasons come from files an
attacker may control. Written raw, they can move the cursor or rewrite the screen (ANSI CSI and OSC
escape sequences, other C0/C1 control characters), or become a GitHub Actions *workflow command*:
the runner executes any output line that starts with ``::`` (``::error::``, ``::add-mask::``,
``::stop-commands::``) or with the legacy ``##[``, after leading whitespace.

:func:`escape` is the one function every user-controlled string goes through on its way to
stdout, stderr, ``$GITHUB_STEP_SUMMARY`` and annotations. It removes escape sequences and control
characters and applies the workflow-command encoding (``%`` → ``%25``, CR → ``%0D``, LF → ``%0A``),
so an untrusted string is always one line, and it encodes the first character of a leading ``::``
or ``##[`` so that the string cannot start a command even when it starts an output line. A ``%`` is
encoded only where it starts an escape (``%`` and two hex digits): the result decodes exactly as
the runner decodes command values, and "95% CI" stays readable on a terminal.
:func:`inert_lines` is the last line of defence for whole blocks of text: it strips control
characters and neutralises every line that would start a command.
"""

from __future__ import annotations

import re

__all__ = ["escape", "escape_markdown", "escape_property", "inert_lines", "strip_controls"]

#: ANSI/ECMA-48 escape sequences: CSI (``ESC [`` ... final byte), OSC (``ESC ]`` ... BEL or ``ESC \\``),
#: DCS/SOS/PM/APC strings, the 8-bit CSI/OSC introducers, and two-byte ``ESC x`` sequences.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x9d\x90\x98\x9e\x9f].*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[ -~]?",
    re.DOTALL,
)
#: C0 controls except TAB, LF, CR; DEL; C1 controls.
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: A ``%`` that a decoder would read as the start of an escape.
_PERCENT = re.compile(r"%(?=[0-9A-Fa-f]{2})")
#: The start of a workflow command (``::name``) or of a legacy one (``##[name]``), after whitespace.
_COMMAND_START = re.compile(r"^(\s*)(:(?=:)|#(?=#\[))")


def _defuse(line: str) -> str:
    """Encode the first character of a leading ``::`` or ``##[`` (after whitespace)."""
    return _COMMAND_START.sub(lambda m: m.group(1) + ("%3A" if m.group(2) == ":" else "%23"), line)


def strip_controls(text: str) -> str:
    """Remove escape sequences and control characters (TAB, LF and CR are kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", str(text)))


def escape(text: object) -> str:
    """One inert line: no control characters, workflow-command encoding, no command at its start.

    Parameters
    ----------
    text : object
        An untrusted value (converted with ``str``).

    Returns
    -------
    str
        The value with escape sequences and control characters removed, TAB as a space, ``%``
        (before two hex digits), CR and LF encoded as ``%25``, ``%0D`` and ``%0A``, and a leading
        ``::`` or ``##[`` encoded as ``%3A:`` or ``%23#[``.
    """
    clean = _PERCENT.sub("%25", strip_controls(str(text)).replace("\t", " "))
    return _defuse(clean.replace("\r", "%0D").replace("\n", "%0A"))


def escape_property(text: object) -> str:
    """:func:`escape` plus the encoding of ``:`` and ``,`` (workflow-command property values)."""
    return escape(text).replace(":", "%3A").replace(",", "%2C")


def escape_markdown(text: object) -> str:
    """:func:`escape` for a Markdown table cell: no HTML, links, images, emphasis or cell breaks."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", escape(text))


def inert_lines(text: str) -> str:
    """A block of output lines with control characters removed and no line starting a command.

    Parameters
    ----------
    text : str
        Several lines (LF or CRLF); the line structure is kept.

    Returns
    -------
    str
        The text, each line passed through :func:`strip_controls` with a leading ``::`` / ``##[``
        encoded.
    """
    lines = strip_controls(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(_defuse(line) for line in lines)
