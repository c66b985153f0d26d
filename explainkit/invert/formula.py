"""Left-deep Boolean formulas over concepts: ``((l1 op l2) op l3) …`` with literals ``c`` or ``¬c``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explainkit.invert.concepts import ConceptMatrix

__all__ = ["OPS", "Formula"]

#: Binary operators, in the order the search tries them.
OPS = ("and", "or")
_SYMBOL = {"and": "&", "or": "|"}
_SPECIAL = set("&|~()\"")


@dataclass(frozen=True)
class Formula:
    """A left-deep formula.

    Attributes
    ----------
    terms : tuple of (str or None, int, bool)
        ``(op, concept column, negated)``; the first term's op is ``None``, later ops are
        ``"and"`` or ``"or"`` and combine everything before with the new literal.
    """

    terms: tuple[tuple[str | None, int, bool], ...]

    @classmethod
    def literal(cls, concept: int, negated: bool = False) -> Formula:
        """The one-literal formula ``c`` or ``¬c``."""
        return cls(((None, int(concept), bool(negated)),))

    def extend(self, op: str, concept: int, negated: bool = False) -> Formula:
        """``(self) op literal``."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {op!r}")
        return Formula((*self.terms, (op, int(concept), bool(negated))))

    @property
    def length(self) -> int:
        """Number of literals (the search step that produced the formula)."""
        return len(self.terms)

    def concepts(self) -> tuple[int, ...]:
        """Concept columns used, in order of appearance (with repeats removed)."""
        return tuple(dict.fromkeys(c for _, c, _ in self.terms))

    def evaluate(self, table: ConceptMatrix) -> np.ndarray:
        """The (N,) bool mask of samples satisfying the formula."""
        mask = np.zeros(table.n_samples, dtype=bool)
        for op, c, neg in self.terms:
            lit = table.column(c)
            if neg:
                lit = ~lit
            mask = lit if op is None else (mask & lit if op == "and" else mask | lit)
        return mask

    def to_terms(self, names: Sequence[str]) -> list[list]:
        """Machine form ``[[None, name, negated], [op, name, negated], …]``."""
        return [[op, names[c], neg] for op, c, neg in self.terms]

    def to_string(self, names: Sequence[str]) -> str:
        """Readable form, e.g. ``box & ~mailbox`` or ``(a | b) & ~c``.

        Names containing operator characters are double-quoted; a run of the same operator needs
        no parentheses, a change of operator wraps everything before it.
        """
        out = ""
        prev_op = None
        for op, c, neg in self.terms:
            name = names[c]
            if _SPECIAL & set(name) or name != name.strip():
                name = '"' + name.replace('"', '\\"') + '"'
            lit = f"~{name}" if neg else name
            if op is None:
                out = lit
            else:
                if prev_op is not None and op != prev_op:
                    out = f"({out})"
                out = f"{out} {_SYMBOL[op]} {lit}"
                prev_op = op
        return out
