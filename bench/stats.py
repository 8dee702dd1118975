"""Summaries of timing samples and checks of measurements against targets. Pure functions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


class NoSamples(ValueError):
    """A summary was asked of an empty sample (the scenario produced no measurement)."""


def percentile(samples: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest sample with ``pct`` % of samples at or
    below it (always an observed value, never interpolated)."""
    if not samples:
        raise NoSamples("no samples to take a percentile of")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Summary:
    count: int
    median: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise NoSamples("no samples to summarise")
        return cls(
            count=len(samples),
            median=statistics.median(samples),
            p99=percentile(samples, 99),
            mean=statistics.fmean(samples),
            min=min(samples),
            max=max(samples),
        )


Comparison = Literal["<=", ">="]


@dataclass(frozen=True)
class Check:
    """One target: ``measured`` compared with ``target`` (``<=``: at most, ``>=``: at least).

    ``measured`` is None when the measurement was not run (``--only``) or failed.
    """

    label: str
    measured: float | None
    comparison: Comparison
    target: float
    unit: str
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.comparison == "<=":
            return self.measured <= self.target
        return self.measured >= self.target

    @property
    def verdict(self) -> str:
        return {True: "met", False: "SHORT", None: "not run"}[self.met]


def factor(baseline: float | None, candidate: float | None) -> float | None:
    """How many times smaller ``candidate`` is than ``baseline`` (None when either is
    missing; infinite when the candidate took no time at all)."""
    if baseline is None or candidate is None:
        return None
    return math.inf if candidate <= 0 else baseline / candidate
