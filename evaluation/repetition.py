"""Degenerate repetition (Welleck et al., ICLR 2020; the Quark paper's third task), shared by every method.

Each prefix gets a greedy continuation (where degeneration shows) and sampled ones; each decoding is scored
separately. Word-level metrics, on whitespace words of the decoded text, pooled over all completions of a
decoding as `measure_repetition_and_diversity` in SimCTG's `simctg/evaluation.py` counts them (the Quark paper
reports these):
    rep_n       1 - sum over completions of unique n-grams / sum of n-grams (n = 2, 3, 4); as SimCTG counts, a
                completion's n-grams stop one short of its end, and uniqueness is within a completion
    diversity   prod over n = 2..4 of (1 - rep_n), of the pooled rates
    reward      the mean over completions of each completion's own prod (1 - rep_n): the repetition reward Quark
                and the other methods train on (every n-gram counted), not a paper's metric
Token-level metrics, on the model's own token ids, from the unlikelihood paper's code (`custom/metrics.py`):
    seq_rep_4   1 - unique 4-grams / 4-grams of one completion, averaged over completions (seq-rep-4)
    uniq        distinct tokens over all completions of the decoding (uniq-seq)
    repeat_16   share of a completion's tokens that occur among its own previous 16 tokens, averaged over
                completions: that code's `repeat_at_1` window applied to generated text. It is not the paper's
                rep/wrep, which score next-token predictions on human text with a 128-token window.
and `perplexity` of the completion given the prefix, under the base model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from evaluation.metrics import bootstrap_ci, bootstrap_pooled_ci

DECODINGS = ["greedy", "sampling"]
NS = (2, 3, 4)
POOLED = ["rep_2", "rep_3", "rep_4", "diversity"]
PER_COMPLETION = ["reward", "seq_rep_4", "repeat_16", "perplexity"]
NAMES = {
    "rep_2": "Rep-2 ↓",
    "rep_3": "Rep-3 ↓",
    "rep_4": "Rep-4 ↓",
    "diversity": "Diversity ↑",
    "reward": "Reward ↑",
    "seq_rep_4": "Seq-rep-4 ↓",
    "repeat_16": "Repeat-16 ↓",
    "uniq": "Uniq ↑",
    "perplexity": "Perplexity",
}
LABELS = {f"{m}_{d}": f"{NAMES[m]} ({d})" for d in DECODINGS for m in [*POOLED, *PER_COMPLETION, "uniq"]}


def rep_n(tokens: Sequence, n: int) -> float:
    """1 - unique n-grams / n-grams of one sequence, every n-gram counted."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def diversity(tokens: Sequence, ns: Sequence[int] = NS) -> float:
    """One sequence's prod (1 - rep_n): the per-completion repetition reward."""
    return math.prod(1.0 - rep_n(tokens, n) for n in ns)


def simctg_counts(words: Sequence[str], n: int) -> tuple[int, int]:
    """(unique n-grams, n-grams) of one text as SimCTG's `eval_text` counts them: the last n-gram is left out."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n)]
    return len(set(grams)), len(grams)


def pooled_rates(counts: np.ndarray) -> np.ndarray:
    """[..., 2 * len(NS)] summed (unique, total) pairs -> [..., len(POOLED)] rep_2, rep_3, rep_4, diversity."""
    unique, total = counts[..., 0::2], counts[..., 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        rep = np.where(total > 0, 1.0 - unique / np.maximum(total, 1), 0.0)
    return np.concatenate([rep, np.prod(1.0 - rep, axis=-1, keepdims=True)], axis=-1)


def repeat_w(tokens: Sequence[int], w: int = 16, context: Sequence[int] = ()) -> float:
    full = list(context) + list(tokens)
    start = len(context)
    hits = [full[i] in full[max(0, i - w) : i] for i in range(start, len(full))]
    return sum(hits) / len(hits) if hits else 0.0


def uniq(completions: Sequence[Sequence[int]]) -> int:
    return len({t for c in completions for t in c})


def metrics(task: str) -> list[str]:
    return list(LABELS)


def plotted(task: str) -> list[str]:
    return ["rep_4_greedy", "diversity_greedy", "rep_4_sampling", "perplexity_sampling"]


def completion_scores(record: dict) -> dict[str, float]:
    words = record["text"].strip().split()
    ids = record["token_ids"]
    counts = [c for n in NS for c in simctg_counts(words, n)]
    return {
        **{f"count_{i}": c for i, c in enumerate(counts)},
        "reward": diversity(record["text"].split()),
        "seq_rep_4": rep_n(ids, 4),
        "repeat_16": repeat_w(ids, 16),
    }


def text_metrics(records: list[dict]) -> tuple[dict, pd.DataFrame]:
    """Every metric but perplexity, per decoding, with 95% intervals over prefixes; and the per-prefix table."""
    frame = pd.DataFrame(
        [
            {"prompt_id": r["prompt_id"], "decoding": r.get("decoding", "sampling"), **completion_scores(r)}
            for r in records
        ]
    )
    count_cols = [f"count_{i}" for i in range(2 * len(NS))]
    out: dict = {"ci95": {}}
    tables = []
    for d in DECODINGS:
        sub = frame[frame["decoding"] == d]
        if sub.empty:
            continue
        groups = sub.groupby("prompt_id", sort=False)
        counts = groups[count_cols].sum()
        rates = pooled_rates(counts.to_numpy(dtype=float).sum(axis=0))
        per_prompt = pd.DataFrame(pooled_rates(counts.to_numpy(dtype=float)), index=counts.index, columns=POOLED)
        for i, m in enumerate(POOLED):
            out[f"{m}_{d}"] = float(rates[i])
            out["ci95"][f"{m}_{d}"] = bootstrap_pooled_ci(counts.to_numpy(), lambda c, i=i: pooled_rates(c)[..., i])
        means = groups[["reward", "seq_rep_4", "repeat_16"]].mean()
        for m in means.columns:
            out[f"{m}_{d}"] = float(sub[m].mean())
            out["ci95"][f"{m}_{d}"] = bootstrap_ci(means[m].to_numpy())
        out[f"uniq_{d}"] = uniq([r["token_ids"] for r in records if r.get("decoding", "sampling") == d])
        out["ci95"][f"uniq_{d}"] = None  # a count over all completions: no per-prompt resampling
        out[f"num_samples_{d}"] = len(sub)
        tables.append(pd.concat([per_prompt, means], axis=1).add_suffix(f"_{d}"))
    out["num_prompts"] = int(frame["prompt_id"].nunique())
    out["num_samples"] = len(records)
    return out, pd.concat(tables, axis=1) if tables else pd.DataFrame()


def evaluate(
    records: list[dict], scorer, perplexity: list[float], prompts: dict, task: str
) -> tuple[dict, pd.DataFrame]:
    """Metrics per decoding; `scorer` is unused (repetition is measured on the text itself)."""
    out, table = text_metrics(records)
    frame = pd.DataFrame(
        {
            "prompt_id": [r["prompt_id"] for r in records],
            "perplexity": perplexity,
            "decoding": [r.get("decoding", "sampling") for r in records],
        }
    )
    for d in DECODINGS:
        sub = frame[frame["decoding"] == d]
        if sub.empty:
            continue
        per_prompt = sub.groupby("prompt_id", sort=False)["perplexity"].mean()
        out[f"perplexity_{d}"] = float(sub["perplexity"].mean())
        out["ci95"][f"perplexity_{d}"] = bootstrap_ci(per_prompt.to_numpy())
        table[f"perplexity_{d}"] = per_prompt
    return out, table
