"""Samples sized by the precision asked for: a seeded order of images, stages, and a stopping rule.

An expensive per-image quantity (a faithfulness curve, a perturbation response) is measured on a
sample of the probe set that grows in stages until its confidence interval is narrow enough:

* **order**: every image gets a priority from a hash of ``(seed, salt, sample id)``; the sample of
  size ``n`` is the ``n`` images of lowest priority. The order depends on the ids only, not on the
  probe set's order, its size, the batch size or how the data is sharded, so every worker knows
  which of its images belong to stage ``k`` without talking to the others, and adding images to a
  probe set leaves the existing ones' places unchanged;
* **stages**: ``minimum``, then doubling (``minimum``, ``2 minimum``, ``4 minimum``, ...) up to
  ``maximum`` or every image;
* **stopping**: after each stage, the half-width of the 95 % confidence interval of the mean of the
  quantity of interest, ``t(0.975, n - 1) * sd / sqrt(n)``, is compared with the target; the
  sample stops growing when it is at or below the target (every quantity, if there are several),
  at the maximum, when the images run out, or when the next stage does not fit the time budget.

Stopping on the *width* of the interval (never on the estimate itself) keeps the estimate close to
unbiased; the reported CIs are computed as usual on the final sample. The decision is a function of
the merged per-image values, so it is deterministic for a seed and the same for every backend.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["Moments", "SampleLog", "SampleSchedule", "StageDecision", "half_width", "priority_order"]


def _priority(seed: int, salt: str, key: str) -> int:
    digest = hashlib.blake2b(f"{int(seed)}\x1f{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def priority_order(keys: Sequence[str], seed: int, salt: str = "") -> np.ndarray:
    """Positions of ``keys`` sorted by a seeded hash of each key (a uniform random order).

    Parameters
    ----------
    keys : sequence of str
        Stable sample ids.
    seed : int
        The run seed.
    salt : str
        Separates independent samples of one run (e.g. ``"metrics"``, ``"road"``).

    Returns
    -------
    ndarray
        (N,) int64 positions into ``keys``, lowest priority first (ties by id, then position).
    """
    prio = [_priority(seed, salt, str(k)) for k in keys]
    return np.array(sorted(range(len(keys)), key=lambda i: (prio[i], str(keys[i]), i)), dtype=np.int64)


def half_width(values: np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the t confidence interval of the mean of the finite ``values`` (inf when n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return math.inf
    return float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


@dataclass
class Moments:
    """Mergeable running moments of a vector quantity per image: n, mean and centred sum of squares.

    Kept as mean and sum of squared deviations (merged with Chan et al.'s pairwise update), not as
    raw sums, so the variance of a quantity that barely varies between images does not cancel
    catastrophically, and merges in any order agree to rounding.

    Attributes
    ----------
    n : int
        Images added.
    centre : ndarray
        (Q,) means of the values.
    spread : ndarray
        (Q,) sums of squared deviations from the mean.
    """

    n: int = 0
    centre: np.ndarray = field(default_factory=lambda: np.zeros(0))
    spread: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of (B, Q) values (rows with a non-finite value are skipped)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v).all(axis=1)] if v.ndim == 2 else v.reshape(0, 0)
        if not v.shape[0]:
            return cls()
        centre = v.mean(axis=0)
        return cls(int(v.shape[0]), centre, ((v - centre) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        """Pooled moments of two states (associative and commutative up to rounding)."""
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.centre - self.centre
        centre = self.centre + delta * (other.n / n)
        spread = self.spread + other.spread + delta**2 * (self.n * other.n / n)
        return Moments(n, centre, spread)

    def mean(self) -> np.ndarray:
        """(Q,) means."""
        return self.centre

    def half_width(self, confidence: float = 0.95) -> np.ndarray:
        """(Q,) t-interval half-widths of the means (inf when n < 2)."""
        if self.n < 2:
            return np.full(self.centre.shape, math.inf)
        var = np.maximum(self.spread, 0.0) / (self.n - 1)
        return stats.t.ppf(0.5 + confidence / 2, self.n - 1) * np.sqrt(var / self.n)


@dataclass
class SampleLog:
    """The stages a sequential sample went through and why it stopped (``None``: still growing)."""

    stages: list[int] = field(default_factory=list)
    stopped: str | None = None


@dataclass(frozen=True)
class StageDecision:
    """What a :class:`SampleSchedule` decided after a stage.

    Attributes
    ----------
    size : int or None
        The sample size to grow to (``None``: stop at the current size).
    reason : str
        Why (for the report).
    """

    size: int | None
    reason: str


@dataclass(frozen=True)
class SampleSchedule:
    """Stage sizes and the stopping rule of one sequential sample.

    Attributes
    ----------
    minimum : int
        First stage (always measured, whatever the precision or the budget).
    maximum : int
        Largest sample.
    target : float or None
        Stop when every quantity's CI half-width is at or below this (``None``: grow to ``maximum``).
    quantity : str
        What the target applies to (for the report), with its unit.
    """

    minimum: int
    maximum: int
    target: float | None
    quantity: str = ""

    def first(self, available: int) -> int:
        """Size of the first stage for ``available`` images."""
        return max(0, min(self.minimum, self.maximum, available))

    def decide(self, n: int, widths: Sequence[float], available: int, *, cost_per_image: float | None = None,
               allowance_s: float | None = None) -> StageDecision:
        """Whether to grow the sample after a stage of ``n`` images, and to what size.

        Parameters
        ----------
        n : int
            Images measured so far (the sample is the first ``n`` of the order).
        widths : sequence of float
            Current CI half-width of every quantity of interest.
        available : int
            Images that can be sampled at all.
        cost_per_image : float, optional
            Measured seconds per sampled image (for the time budget).
        allowance_s : float, optional
            Seconds this sample may still spend (``None``: no budget).

        Returns
        -------
        StageDecision
            The next size, or ``None`` and the reason to stop.
        """
        cap = min(self.maximum, available)
        worst = max((float(w) for w in widths), default=math.inf)
        if self.target is not None and worst <= self.target:
            return StageDecision(None, f"precision reached: CI half-width {worst:.3g} <= target {self.target:g}")
        if n >= cap:
            return StageDecision(None, "every image used" if cap == available and available < self.maximum
                                 else f"maximum sample size ({self.maximum}) reached")
        size = min(cap, max(2 * n, self.minimum))
        if allowance_s is not None and cost_per_image is not None and cost_per_image > 0:
            fits = int(max(0.0, allowance_s) // cost_per_image)
            if n + fits < size:
                if fits < max(1, n // 4):
                    left = max(0.0, allowance_s)
                    return StageDecision(None, f"time budget: another stage does not fit the {left:.0f} s left "
                                               f"(about {cost_per_image:.2g} s per image)")
                return StageDecision(n + fits, f"time budget: grown to {n + fits} images, not {size}")
        return StageDecision(size, f"CI half-width {worst:.3g} above target" if self.target is not None
                             else "growing to the maximum")

    def advance(self, log: SampleLog, n: int, widths: Sequence[float], available: int, *,
                cost_per_image: float | None = None, allowance_s: float | None = None) -> int | None:
        """Decide after a stage and record it in ``log``: the size to grow to, or ``None`` (stopped).

        See :meth:`decide`; a log that already stopped stays stopped.
        """
        if log.stopped is not None:
            return None
        if not log.stages and n:
            log.stages.append(int(n))
        d = self.decide(n, widths, available, cost_per_image=cost_per_image, allowance_s=allowance_s)
        if d.size is None:
            log.stopped = d.reason
        else:
            log.stages.append(int(d.size))
        return d.size

    def report(self, log: SampleLog | None, n: int, widths: Sequence[float], available: int,
               **extra: Any) -> dict[str, Any]:
        """:meth:`describe` from a log (a sample that never planned a round is judged now)."""
        log = log or SampleLog([int(n)] if n else [])
        reason = log.stopped or self.decide(n, widths, available).reason
        return self.describe(n, widths, reason, log.stages or [int(n)], **extra)

    def describe(self, n: int, widths: Sequence[float], reason: str, stages: Sequence[int],
                 **extra: Any) -> dict[str, Any]:
        """JSON-ready account of the sample: n, the rule, the precision reached and why it stopped."""
        worst = max((float(w) for w in widths), default=math.inf)
        return {"n": int(n), "minimum": self.minimum, "maximum": self.maximum, "target_half_width": self.target,
                "half_width": worst if math.isfinite(worst) else None, "quantity": self.quantity,
                "stages": [int(s) for s in stages], "stopped": reason,
                "rule": "seeded hash order of sample ids; stages double from the minimum until the 95% t-interval "
                        "half-width of every quantity is at or below the target", **extra}
