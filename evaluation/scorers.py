"""Attribute scorers: `scorer(texts) -> list[float]`, higher meaning more of the attribute (for toxicity, more toxic)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

from core.errors import SuiteError

Scorer = Callable[[list[str]], list[float | None]]  # None: could not be scored (dropped and counted, never 0)
_SCORERS: dict[str, Callable[..., Scorer]] = {}
# Registered on import; imported only when asked for.
_ELSEWHERE = {"perspective": "evaluation.perspective", "minilm_toxicity": "evaluation.toxicity_head"}


def register_scorer(name: str):
    def wrap(factory):
        _SCORERS[name] = factory
        return factory

    return wrap


def scorer_names() -> list[str]:
    """Every scorer get_scorer() knows, those registered on first use included."""
    return sorted({*_SCORERS, *_ELSEWHERE})


def get_scorer(name: str, **kwargs) -> Scorer:
    if name in _ELSEWHERE:
        importlib.import_module(_ELSEWHERE[name])
    if name not in _SCORERS:
        raise SuiteError(f"unknown scorer '{name}' (known: {', '.join(scorer_names())})")
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


@register_scorer("vader")
def vader() -> Scorer:
    """VADER (Hutto & Gilbert 2014; its lexicon ships with `vaderSentiment`): P(positive) as (compound + 1) / 2."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(texts: list[str]) -> list[float]:
        return [(analyzer.polarity_scores(t)["compound"] + 1.0) / 2.0 for t in texts]

    return score


@register_scorer("hf_classifier")
def hf_classifier(model: str, label: str, flip: bool = False, device: str = "cpu", batch_size: int = 64) -> Scorer:
    """Any sequence-classification model (Hub id or directory): the probability of `label`, or 1 - it with `flip`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model).to(device).eval()
    labels = {name.lower(): i for i, name in classifier.config.id2label.items()}
    if label.lower() not in labels:
        raise SuiteError(f"classifier {model} has no label '{label}' (its labels: {', '.join(labels)})")
    index = labels[label.lower()]

    @torch.no_grad()
    def score(texts: list[str]) -> list[float]:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
            probs = classifier(**batch.to(device)).logits.softmax(-1)[:, index]
            out += (1 - probs if flip else probs).tolist()
        return out

    return score
