"""The controllability probe of a reward-conditioned model (Quark, DT-style): does its control token steer?

On a fixed set of scored samples that training never sees (the base samples of the probe split of the training
prompts, methods/common/base_samples.py):

    delta(y) = log p(y | worst token, x) - log p(y | best token, x)      summed over the completion's tokens

A dial that works makes low-reward samples likelier under the worst token than under the best, so -delta ranks
the samples by reward. The probe's AUC is that ranking's concordance with the reward: over every pair of samples
with different rewards, the share that -delta orders as the reward does (ties in delta count half; 0.5 is chance,
1 a perfect dial). `auc_within` counts only pairs of samples of one prompt, so that a model that credits the
prompt rather than its own completion gets no credit. Teacher-forced, it takes seconds and has none of the noise
of sampled evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from core.sampling import completion_logits, pack


class ProbeSample(NamedTuple):
    """One scored sample of the probe set (Quark's pool samples carry the same fields)."""

    prompt_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    reward: float


def concordance(scores: Sequence[float], rewards: Sequence[float], groups: Sequence | None = None) -> float:
    """Share of pairs with different rewards (within one group, if given) that `scores` order the same way."""
    s, r = np.asarray(scores, dtype=float), np.asarray(rewards, dtype=float)
    ds, dr = s[:, None] - s[None, :], r[:, None] - r[None, :]
    pairs = dr > 0  # [N, N]: i better than j, each unordered pair once
    if groups is not None:
        g = np.asarray(groups)
        pairs &= g[:, None] == g[None, :]
    n = pairs.sum()
    if n == 0:
        return float("nan")
    return float(((ds > 0) & pairs).sum() + 0.5 * ((ds == 0) & pairs).sum()) / float(n)


@torch.no_grad()
def sequence_logprobs(
    model: PreTrainedModel,
    prefixes: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    vocab_size: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Sum over completion tokens of log p(token | prefix, earlier tokens); the softmax over the first
    `vocab_size` ids (control tokens left out, as the methods train). [N]"""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prefixes), batch_size):
        packed = pack(prefixes[start : start + batch_size], completions[start : start + batch_size], pad_id)
        packed = packed.to(device)
        logits = completion_logits(model, packed)[..., :vocab_size].float()  # [B, C, V0]
        logprobs = F.log_softmax(logits, dim=-1).gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1)
        out.append((logprobs * packed.completion_mask).sum(-1).cpu().numpy())
    return np.concatenate(out)


def controllability(
    model: PreTrainedModel,
    samples: Sequence,
    condition: Callable[[list[int], int], list[int]],
    best: int,
    worst: int,
    pad_id: int,
    vocab_size: int | None = None,
) -> dict[str, float]:
    """The probe on `samples` (each with prompt_id, prompt_ids, completion_ids, reward); `condition(prompt_ids,
    k)` builds the prefix for control token k. Returns the two AUCs and the mean delta."""
    was_training = model.training
    model.eval()
    completions = [s.completion_ids for s in samples]
    logp = {
        k: sequence_logprobs(model, [condition(s.prompt_ids, k) for s in samples], completions, pad_id, vocab_size)
        for k in (best, worst)
    }
    model.train(was_training)
    delta = logp[worst] - logp[best]
    rewards = [s.reward for s in samples]
    return {
        "probe_auc": concordance(-delta, rewards),
        "probe_auc_within": concordance(-delta, rewards, [s.prompt_id for s in samples]),
        "probe_delta": float(delta.mean()),
    }
