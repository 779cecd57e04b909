"""Repetition metrics of the unlikelihood-training paper (Welleck et al., ICLR 2020), on token ids of one completion.

rep_n      fraction of a completion's n-grams that repeat an earlier n-gram of it (seq-rep-n): 1 - unique / total
rep_w      share of tokens that already occur among the previous w tokens (context included when given)
uniq       number of distinct tokens over all completions
"""

from __future__ import annotations

from collections.abc import Sequence


def rep_n(tokens: Sequence[int], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def rep_w(tokens: Sequence[int], w: int = 16, context: Sequence[int] = ()) -> float:
    full = list(context) + list(tokens)
    start = len(context)
    hits = [full[i] in full[max(0, i - w) : i] for i in range(start, len(full))]
    return sum(hits) / len(hits) if hits else 0.0


def uniq(completions: Sequence[Sequence[int]]) -> int:
    return len({t for c in completions for t in c})
