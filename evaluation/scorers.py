"""Attribute scorers: `scorer(texts) -> list[float]`, higher meaning more of the attribute (for toxicity, more toxic)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

from methods.common.errors import SuiteError

Scorer = Callable[[list[str]], list[float | None]]  # None: could not be scored (dropped and counted, never 0)
_SCORERS: dict[str, Callable[..., Scorer]] = {}
_ELSEWHERE = {"perspective": "evaluation.perspective"}  # registered on import; imported only when asked for


def register_scorer(name: str):
    def wrap(factory):
        _SCORERS[name] = factory
        return factory

    return wrap


def get_scorer(name: str, **kwargs) -> Scorer:
    if name in _ELSEWHERE:
        importlib.import_module(_ELSEWHERE[name])
    if name not in _SCORERS:
        raise SuiteError(f"unknown scorer '{name}' (known: {', '.join(sorted(_SCORERS))})")
    return _SCORERS[name](**kwargs)


@register_scorer("profanity_check")
def profanity_check() -> Scorer:
    """alt-profanity-check's linear model (ships with the package): toxicity probability per text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn version notes on the pickled model
        from profanity_check import predict_prob

    def score(texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(x) for x in predict_prob(list(texts))]

    return score
