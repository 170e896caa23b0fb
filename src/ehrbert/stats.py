"""Statistics over seeds, shared by the comparison and the error analysis: mean (SD), Welch's t-test, formatting;
and the rule every setting is chosen on dev by (`first_best`).

Every table reports a model as the mean over its seeds with the *sample* SD (ddof=1; undefined, NaN, with one
seed), and compares two models with Welch's two-sided t-test (unequal variances: the seeds of two models are
independent samples of unequal spread).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
from scipy import stats

T = TypeVar("T")


def first_best(grid: Sequence[T], objective: Callable[[T], float]) -> tuple[T, list[tuple[T, float]]]:
    """The grid value with the highest objective, the earliest on a tie (grids list the plainer choice first);
    and every value with its objective, in grid order."""
    tried = [(value, objective(value)) for value in grid]
    best = max(range(len(tried)), key=lambda i: (tried[i][1], -i))
    return tried[best][0], tried


def mean_sd_columns(group: pd.DataFrame, metrics: Sequence[str]) -> dict[str, float]:
    """{metric_mean, metric_sd} for each of `metrics` over the rows (seeds) of `group`."""
    out = {}
    for metric in metrics:
        out[f"{metric}_mean"], out[f"{metric}_sd"] = (
            group[metric].mean(),
            (group[metric].std(ddof=1) if len(group) > 1 else math.nan),
        )
    return out


def welch(a, b) -> tuple[float, float]:
    """Welch's two-sided t-test of mean(a) vs mean(b): (t, p); (NaN, NaN) where it is undefined."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan, math.nan
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def percent(value: float, sd: float = math.nan, digits: int = 2, sd_style: str = "({})") -> str:
    """A fraction as a percentage with `digits` decimals, and its SD in `sd_style` ("({})" -> "87.71 (0.20)",
    " ± {}" written right after); "–" for a missing value."""
    if pd.isna(value):
        return "–"
    text = f"{100 * value:.{digits}f}"
    if not pd.isna(sd):
        text += (" " if sd_style.startswith("(") else "") + sd_style.format(f"{100 * sd:.{digits}f}")
    return text


def mean_sd(values: Sequence[float]) -> str:
    """`percent` of the seeds' mean and sample SD (0 for one seed)."""
    return percent(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def p_text(value: float, alpha: float) -> str:
    """A p-value as tables print it: three decimals or "<0.001", starred below `alpha`; "n/a" when undefined."""
    if pd.isna(value):
        return "n/a"
    text = "<0.001" if value < 0.001 else f"{value:.3f}"
    return text + (" *" if value < alpha else "")
