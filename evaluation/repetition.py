"""Degenerate repetition (Welleck et al., ICLR 2020; the Quark paper's third task), shared by every method.

Each prefix gets a greedy continuation (where degeneration shows) and sampled ones; each decoding is scored
separately. Word-level metrics, on whitespace words of the decoded text as SimCTG and the Quark paper count them:
    rep_n       1 - unique n-grams / n-grams of one completion (n = 2, 3, 4), averaged over completions
    diversity   prod over n = 2..4 of (1 - rep_n): the Quark paper's repetition reward and diversity metric
Token-level metrics, on the model's own token ids as the unlikelihood paper counts them:
    seq_rep_4   rep_4 on token ids
    rep_w       share of a completion's tokens that already occur among its previous w = 16 tokens
    uniq        distinct tokens over all completions of the decoding
and `perplexity` of the completion given the prefix, under the base model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from evaluation.metrics import bootstrap_ci

DECODINGS = ["greedy", "sampling"]
PER_COMPLETION = ["rep_2", "rep_3", "rep_4", "diversity", "seq_rep_4", "rep_w", "perplexity"]
NAMES = {"rep_2": "Rep-2 ↓", "rep_3": "Rep-3 ↓", "rep_4": "Rep-4 ↓", "diversity": "Diversity ↑",
         "seq_rep_4": "Seq-rep-4 ↓", "rep_w": "Rep-w ↓", "uniq": "Uniq ↑", "perplexity": "Perplexity"}  # fmt: skip
LABELS = {f"{m}_{d}": f"{NAMES[m]} ({d})" for d in DECODINGS for m in [*PER_COMPLETION, "uniq"]}


def rep_n(tokens: Sequence, n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def diversity(tokens: Sequence, ns: Sequence[int] = (2, 3, 4)) -> float:
    return math.prod(1.0 - rep_n(tokens, n) for n in ns)


def rep_w(tokens: Sequence[int], w: int = 16, context: Sequence[int] = ()) -> float:
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
    words = record["text"].split()
    ids = record["token_ids"]
    return {"rep_2": rep_n(words, 2), "rep_3": rep_n(words, 3), "rep_4": rep_n(words, 4), "diversity": diversity(words),
            "seq_rep_4": rep_n(ids, 4), "rep_w": rep_w(ids, 16)}  # fmt: skip


def evaluate(
    records: list[dict], scorer, perplexity: list[float], prompts: dict, task: str
) -> tuple[dict, pd.DataFrame]:
    """Metrics per decoding; `scorer` is unused (repetition is measured on the text itself)."""
    rows = [{"prompt_id": r["prompt_id"], "decoding": r.get("decoding", "sampling"), **completion_scores(r),
             "perplexity": p} for r, p in zip(records, perplexity)]  # fmt: skip
    frame = pd.DataFrame(rows)
    out: dict = {"ci95": {}}
    tables = []
    for d in DECODINGS:
        sub = frame[frame["decoding"] == d]
        if sub.empty:
            continue
        per_prompt = sub.groupby("prompt_id", sort=False)[PER_COMPLETION].mean()
        for m in PER_COMPLETION:
            out[f"{m}_{d}"] = float(sub[m].mean())
            out["ci95"][f"{m}_{d}"] = bootstrap_ci(per_prompt[m].to_numpy())
        ids = [r["token_ids"] for r in records if r.get("decoding", "sampling") == d]
        out[f"uniq_{d}"] = uniq(ids)
        out["ci95"][f"uniq_{d}"] = None  # a count over all completions: no per-prompt resampling
        out[f"num_samples_{d}"] = len(sub)
        tables.append(per_prompt.add_suffix(f"_{d}"))
    out["num_prompts"] = int(frame["prompt_id"].nunique())
    out["num_samples"] = len(records)
    return out, pd.concat(tables, axis=1) if tables else pd.DataFrame()
