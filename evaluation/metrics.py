"""Metrics every task shares: distinct-n and bootstrap confidence intervals over prompts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams among one prompt's samples over the samples' total number of words, the same denominator
    for every n: `distinctness` in DExperts' `scripts/evaluation/evaluate_generations.py` and in Quark's
    `sample.py` (words split on single spaces). Tables average it over prompts, as both do."""
    words = [t.split(" ") for t in texts]
    total = sum(len(w) for w in words)
    return len({g for w in words for g in ngrams(w, n)}) / total if total else float("nan")


def distinct_table(records: list[dict]) -> pd.DataFrame:
    """dist-1, dist-2 and dist-3 of each prompt's samples, one row per prompt."""
    frame = pd.DataFrame({"prompt_id": [r["prompt_id"] for r in records], "text": [r["text"] for r in records]})
    groups = frame.groupby("prompt_id", sort=False)["text"]
    return pd.DataFrame({f"dist_{n}": groups.agg(lambda t, n=n: distinct_n(list(t), n)) for n in (1, 2, 3)})


def distinct_metrics(records: list[dict]) -> tuple[dict, pd.DataFrame]:
    """dist-1, dist-2 and dist-3 averaged over prompts, with 95% intervals over prompts; and the per-prompt table.
    The metrics of a task that depend on the generated text alone."""
    table = distinct_table(records)
    out = {m: float(table[m].mean()) for m in table.columns}
    return out | {"ci95": {m: bootstrap_ci(table[m].to_numpy()) for m in table.columns}}, table


def bootstrap_ci(values, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean over prompts."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    if len(values) == 1 or np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    return _bootstrap(values, np.mean, confidence, n_resamples, seed)


def bootstrap_pooled_ci(
    counts: np.ndarray,
    pooled: Callable[[np.ndarray], np.ndarray],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval, over prompts, of a statistic of counts summed over prompts.

    counts: [prompts, k], each prompt's counts; pooled: [..., k] summed counts -> [...] statistic (a pooled rate
    such as SimCTG's rep-n is a ratio of sums, not a mean over prompts, so prompts are resampled whole).
    """
    counts = np.asarray(counts, dtype=float)
    if len(counts) < 2:
        value = float(pooled(counts.sum(axis=0)))
        return (value, value)
    return _bootstrap(
        np.arange(len(counts)), lambda idx, axis=-1: pooled(counts[idx].sum(axis=-2)), confidence, n_resamples, seed
    )


def _bootstrap(data, statistic, confidence, n_resamples, seed) -> tuple[float, float]:
    res = stats.bootstrap(
        (data,),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))
