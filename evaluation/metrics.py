"""Metrics every task shares: distinct-n and bootstrap confidence intervals over prompts."""

from __future__ import annotations

import numpy as np
from scipy import stats


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of a prompt's samples (whitespace tokens, as DExperts and Quark count)."""
    grams = [g for t in texts for g in ngrams(t.split(" "), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bootstrap_ci(values, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean over prompts."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    if len(values) == 1 or np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    res = stats.bootstrap(
        (values,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
        random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))
