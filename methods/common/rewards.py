"""Rewards as plain callables, the shape of TRL's `reward_funcs`:

    reward(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]

Higher is better. `None` means "could not be scored": such samples are dropped and counted, never scored 0.
Rewards are registered by name; `score_rewards` checks every answer before anyone trains on it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import SuiteError

Reward = Callable[..., list[float | None]]
_REWARDS: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str):
    def wrap(factory):
        _REWARDS[name] = factory
        return factory

    return wrap


@dataclass(frozen=True)
class Retry:
    """How a reward that raises (a network error, a flaky scorer) is retried before its batch counts as unscored."""

    attempts: int = 4  # calls in all
    delay: float = 1.0  # seconds before the second call, doubled before each further one
    max_delay: float = 60.0


def reward_names() -> list[str]:
    return sorted(_REWARDS)


def get_reward(name: str, retries: int = 3, backoff: float = 1.0, **kwargs) -> Reward:
    """A registered reward; `retries` and `backoff` (seconds, doubled each time) set how a raising call is retried."""
    if name not in _REWARDS:
        raise SuiteError(f"unknown reward '{name}' (known: {', '.join(reward_names())})")
    reward = _REWARDS[name](**kwargs)
    reward.retry = Retry(attempts=int(retries) + 1, delay=float(backoff))
    return reward


def score_rewards(
    reward: Reward, prompts: list[str], completions: list[str], retry: Retry | None = None, **kwargs
) -> list[float | None]:
    """Call a reward and validate its answer: right count, finite numbers or None.

    A call that raises is an outage, not a bug: it is retried with exponential backoff (`retry`, else the reward's
    own `retry` attribute, else `Retry()`), and if every attempt fails the whole batch comes back unscored (None),
    with one line on stderr. A SuiteError from the reward (its configuration) stops the job at once, and so does an
    answer of the wrong length or with NaN, infinity or a non-number: those are bugs that retrying cannot fix.
    """
    name = getattr(reward, "__name__", type(reward).__name__)
    retry = retry or getattr(reward, "retry", None) or Retry()
    for attempt in range(1, retry.attempts + 1):
        try:
            values = list(reward(prompts, completions, **kwargs))
            break
        except SuiteError:
            raise
        except Exception as exc:  # a user's reward may raise anything
            failure = f"reward '{name}' raised {type(exc).__name__}: {exc}".replace("\n", " ")
            if attempt == retry.attempts:
                print(
                    f"{failure}; {attempt} attempts failed, {len(completions)} samples count as unscored",
                    file=sys.stderr,
                    flush=True,
                )
                return [None] * len(completions)
            wait = min(retry.delay * 2 ** (attempt - 1), retry.max_delay)
            print(
                f"{failure}; retrying in {wait:g} s (attempt {attempt + 1} of {retry.attempts})",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(wait)
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


@register_reward("sentiment")
def sentiment(wanted: str = "positive", scorer: str = "vader", scorer_args: dict | None = None) -> Reward:
    """P(wanted sentiment) of the completion under a judge that gives P(positive) (VADER by default)."""
    from evaluation.scorers import get_scorer

    if wanted not in ("positive", "negative"):
        raise SuiteError(f"sentiment reward: 'wanted' must be positive or negative, got {wanted!r}")
    p_positive = get_scorer(scorer, **(scorer_args or {}))

    def sentiment(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]:
        scores = p_positive(completions)
        return [None if p is None else (p if wanted == "positive" else 1.0 - p) for p in scores]

    return sentiment


@register_reward("diversity")
def diversity(ns: list[int] = (2, 3, 4)) -> Reward:
    """The Quark paper's repetition reward: prod over n of (1 - rep_n) of the completion's words."""
    from evaluation.repetition import diversity as word_diversity

    def diversity(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]:
        return [word_diversity(c.split(), tuple(ns)) for c in completions]

    return diversity


@register_reward("token_set")
def token_set(token_ids: list[int]) -> Reward:
    """Synthetic reward for tests: the share of completion tokens drawn from a fixed set."""
    wanted = set(token_ids)

    def token_set(prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kwargs):
        return [sum(t in wanted for t in ids) / max(len(ids), 1) for ids in completion_ids]

    return token_set
