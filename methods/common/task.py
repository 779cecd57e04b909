"""What a train entry point is given about its task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.data import Prompt, Text
from core.sampling import Sampling
from methods.common.rewards import Reward

if TYPE_CHECKING:
    from methods.common.base_samples import BaseSamples


@dataclass
class Task:
    name: str  # e.g. "toxicity", "sentiment-positive", "repetition"
    train_prompts: list[Prompt]
    reward: Reward  # higher is better
    sampling: Sampling  # exploration settings: completion length, nucleus top-p
    corpus: list[Text] = field(default_factory=list)  # labelled texts: attribute experts, fine-tuning corpora
    base_samples: BaseSamples | None = (
        None  # the DAG's shared scored base-model samples (methods/common/base_samples.py)
    )
