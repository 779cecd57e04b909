"""Scoring sampled completions with the task's reward, the step every online method shares."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.sampling import Sampling, sample
from methods.common.rewards import Reward, score_rewards


def score_completions(
    reward: Reward,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[list[int]],
    desc: str = "scoring",
    chunk: int = 256,
) -> tuple[list[str], list[float | None]]:
    """Decode completions (skipping special tokens) and reward them in chunks; returns (texts, rewards).

    A reward of None means the sample could not be scored: callers drop and count it, never score it 0.
    """
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    rewards: list[float | None] = []
    for start in tqdm(range(0, len(texts), chunk), desc=desc, unit="chunk", leave=False):
        sl = slice(start, start + chunk)
        rewards += score_rewards(reward, prompts[sl], texts[sl], completion_ids=completions[sl])
    return texts, rewards


@dataclass
class ScoredSamples:
    """Scored samples, one per chosen prompt; the samples the reward could not score are dropped and counted."""

    prompt_index: list[int]  # index into the prompt list of each kept sample
    completions: list[list[int]]
    texts: list[str]
    rewards: list[float]  # None only where the caller kept unscored samples
    dropped: int
    tokens: int  # tokens generated, dropped samples included
    seconds: float  # sampling time, scoring excluded


def sample_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward: Reward,
    prompts: list[str],
    prefixes: list[list[int]],
    chosen: list[int],
    sampling: Sampling,
    suppress_ids: list[int] | None = None,
    desc: str = "rollout",
    logits_processor: list | None = None,
    keep_unscored: bool = False,
) -> ScoredSamples:
    """Sample one completion of `prefixes[i]` for each i in `chosen` and score it against `prompts[i]`;
    `logits_processor` reweights the model's scores as `core.sampling.sample` describes (decoding-time methods).
    With `keep_unscored`, samples the reward could not score stay in, rewarded None, one per `chosen` entry."""
    started = time.perf_counter()
    batch = [prefixes[i] for i in chosen]
    completions = sample(model, tokenizer, batch, sampling, suppress_ids, f"{desc}: sampling", logits_processor)
    seconds = time.perf_counter() - started
    texts, rewards = score_completions(
        reward, tokenizer, [prompts[i] for i in chosen], completions, desc=f"{desc}: scoring"
    )
    keep = [k for k, r in enumerate(rewards) if keep_unscored or r is not None]
    return ScoredSamples(
        [chosen[k] for k in keep],
        [completions[k] for k in keep],
        [texts[k] for k in keep],
        [rewards[k] for k in keep],
        sum(r is None for r in rewards),
        sum(map(len, completions)),
        seconds,
    )
