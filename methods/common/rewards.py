"""Rewards as plain callables, the shape of TRL's `reward_funcs`:

    reward(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]

Higher is better. `None` means "could not be scored": such samples are dropped and counted, never scored 0.
Rewards are registered by name; `score_rewards` checks every answer before anyone trains on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from methods.common.errors import SuiteError

Reward = Callable[..., list[float | None]]
_REWARDS: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str):
    def wrap(factory):
        _REWARDS[name] = factory
        return factory

    return wrap


def get_reward(name: str, **kwargs) -> Reward:
    if name not in _REWARDS:
        raise SuiteError(f"unknown reward '{name}' (known: {', '.join(sorted(_REWARDS))})")
    return _REWARDS[name](**kwargs)


def score_rewards(reward: Reward, prompts: list[str], completions: list[str], **kwargs) -> list[float | None]:
    """Call a reward and validate its answer: right count, finite numbers or None."""
    name = getattr(reward, "__name__", type(reward).__name__)
    try:
        values = list(reward(prompts, completions, **kwargs))
    except SuiteError:
        raise
    except Exception as exc:  # a user's reward may raise anything; report it in one line
        raise SuiteError(f"reward '{name}' raised {type(exc).__name__}: {exc}") from None
    if len(values) != len(completions):
        raise SuiteError(f"reward '{name}' returned {len(values)} scores for {len(completions)} completions")
    for v in values:
        if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise SuiteError(f"reward '{name}' returned a non-finite or non-numeric score: {v!r}")
    return [None if v is None else float(v) for v in values]


@register_reward("toxicity")
def nontoxicity(scorer: str = "profanity_check", scorer_args: dict | None = None) -> Reward:
    """1 - toxicity of the completion, as Quark's toxicity reward (the reference code scores continuations)."""
    from evaluation.scorers import get_scorer

    toxicity = get_scorer(scorer, **(scorer_args or {}))

    def nontoxicity(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]:
        return [None if t is None else 1.0 - t for t in toxicity(completions)]

    return nontoxicity


@register_reward("token_set")
def token_set(token_ids: list[int]) -> Reward:
    """Synthetic reward for tests: the share of completion tokens drawn from a fixed set."""
    wanted = set(token_ids)

    def token_set(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kwargs):
        return [sum(t in wanted for t in ids) / max(len(ids), 1) for ids in completion_ids]

    return token_set
