"""Sentiment steering on OpenWebText prompts (the DExperts protocol, as the Quark paper uses it), shared by every method.

Each eval prompt has a type (negative, neutral, positive) from the sentiment of the base model's own continuations.
Per prompt: N samples at top-p 0.9; the judge scores prompt + completion, and a sample is positive when the judge's
P(positive) exceeds 0.5. `positive_rate_<type>` is the share of positive samples over the prompts of that type.
`sentiment-positive` (unlearning negativity) is scored on negative and neutral prompts, `sentiment-negative`
(unlearning positivity) on positive and neutral ones, as in the paper's table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.metrics import bootstrap_ci, distinct_metrics
from evaluation.scorers import Scorer

PROMPT_TYPES = {"sentiment-positive": ["negative", "neutral"], "sentiment-negative": ["positive", "neutral"]}
LABELS = {
    "positive_rate_negative": "% positive, negative prompts",
    "positive_rate_neutral": "% positive, neutral prompts",
    "positive_rate_positive": "% positive, positive prompts",
    "perplexity": "Perplexity ↓",
    "dist_1": "Dist-1 ↑",
    "dist_2": "Dist-2 ↑",
    "dist_3": "Dist-3 ↑",
}
PERCENT = {"positive_rate_negative", "positive_rate_neutral", "positive_rate_positive"}


def labels(task: str) -> dict[str, str]:
    """LABELS with the task's direction on its rates: up where positivity is wanted, down where it is unlearned."""
    arrow = "↑" if task == "sentiment-positive" else "↓"
    return {k: f"{v} {arrow}" if k in PERCENT else v for k, v in LABELS.items()}


# The Quark paper's Table 2 (GPT-2 large, DistilBERT-SST-2 judge, % positive; perplexity where given), for reference:
# not comparable in scale or judge with the rows this suite computes.
PAPER_ROWS = {
    "sentiment-positive": {
        "GPT-2": (0.00, 50.02, 11.42),
        "PPLM": (8.72, 52.68, None),
        "CTRL": (18.88, 61.81, None),
        "GeDi": (26.80, 86.01, None),
        "DExperts": (36.42, 94.46, None),
        "DAPT": (14.17, 77.24, None),
        "PPO": (43.13, 94.10, 15.16),
        "Quark": (46.55, 95.00, 14.54),
    },
    "sentiment-negative": {
        "GPT-2": (99.08, 50.02, None),
        "PPLM": (89.74, 39.05, None),
        "CTRL": (79.05, 37.63, None),
        "GeDi": (39.57, 8.73, None),
        "DExperts": (35.99, 3.77, None),
        "DAPT": (87.43, 33.28, None),
        "PPO": (32.22, 3.65, None),
        "Quark": (27.50, 2.75, None),
    },
}
PAPER_SOURCE = "Lu et al. (NeurIPS 2022), Table 2: GPT-2 large, DistilBERT-SST-2 judge"


def metrics(task: str) -> list[str]:
    return [f"positive_rate_{t}" for t in PROMPT_TYPES[task]] + ["perplexity", "dist_1", "dist_2", "dist_3"]


def plotted(task: str) -> list[str]:
    return [f"positive_rate_{t}" for t in PROMPT_TYPES[task]] + ["perplexity"]


def paper_rows(task: str) -> list[dict]:
    """The paper's numbers as rows keyed like this suite's metrics (rates as fractions)."""
    first, second = (f"positive_rate_{t}" for t in PROMPT_TYPES[task])
    return [
        {"method": name, first: a / 100, second: b / 100, "perplexity": ppl}
        for name, (a, b, ppl) in PAPER_ROWS[task].items()
    ]


def text_metrics(records: list[dict]) -> tuple[dict, pd.DataFrame]:
    """The metrics that depend on the judged samples' text alone: distinct-n."""
    return distinct_metrics(records)


def evaluate(
    records: list[dict], scorer: Scorer, perplexity: list[float], prompts: dict, task: str
) -> tuple[dict, pd.DataFrame]:
    """Positive rate per prompt type; samples the judge could not score (None) are left out and counted."""
    positive = scorer([r["prompt"] + r["text"] for r in records])
    frame = pd.DataFrame(
        {
            "prompt_id": [r["prompt_id"] for r in records],
            "text": [r["text"] for r in records],
            "p_positive": positive,
            "perplexity": perplexity,
        }
    )
    frame["type"] = [prompts[r["prompt_id"]].meta.get("sentiment_type") for r in records]
    unscored = int(frame["p_positive"].isna().sum())
    frame = frame.dropna(subset=["p_positive"])
    frame["positive"] = (frame["p_positive"] > 0.5).astype(float)
    groups = frame.groupby("prompt_id", sort=False)
    table = pd.DataFrame(
        {
            "type": groups["type"].first(),
            "positive_rate": groups["positive"].mean(),
            "perplexity": groups["perplexity"].mean(),
        }
    )
    out: dict = {"ci95": {}}
    for t in PROMPT_TYPES[task]:
        rates = table.loc[table["type"] == t, "positive_rate"].to_numpy()
        out[f"positive_rate_{t}"] = float(rates.mean()) if len(rates) else float("nan")
        out["ci95"][f"positive_rate_{t}"] = bootstrap_ci(rates)
        out[f"num_prompts_{t}"] = int(len(rates))
    out["perplexity"] = float(np.mean(frame["perplexity"]))
    out["ci95"]["perplexity"] = bootstrap_ci(table["perplexity"].to_numpy())
    distinct, distinct_table = text_metrics(frame.to_dict("records"))
    out["ci95"] |= distinct.pop("ci95")
    out |= distinct
    table = table.join(distinct_table)
    out["num_prompts"] = int(len(table))
    out["num_samples"] = int(len(frame))
    out["num_unscored"] = unscored
    return out, table


def assign_prompt_types(positive_share: list[float], mean_p_positive: list[float], fraction: float) -> list[str]:
    """Type prompts by their base-model continuations, as DExperts split OpenWebText prompts.

    DExperts kept prompts whose 25 continuations were all negative, all positive, or evenly split. With fewer
    samples and a smaller pool this ranks instead: prompts are ordered by the share of positive continuations
    (ties by the mean P(positive)); the lowest `fraction` are negative, the highest `fraction` positive, and the
    `fraction` whose share is closest to one half neutral. The rest are untyped ("").
    """
    n = len(positive_share)
    k = max(1, int(n * fraction))
    order = sorted(range(n), key=lambda i: (positive_share[i], mean_p_positive[i]))
    types = [""] * n
    for i in order[:k]:
        types[i] = "negative"
    for i in order[-k:]:
        types[i] = "positive"
    middle = sorted(
        (i for i in order[k:-k]), key=lambda i: (abs(positive_share[i] - 0.5), abs(mean_p_positive[i] - 0.5))
    )
    for i in middle[:k]:
        types[i] = "neutral"
    return types
