"""Scoring sampled completions with the task's reward, the step every online method shares."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

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
