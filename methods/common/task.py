"""What a train entry point is given about its task."""

from __future__ import annotations

from dataclasses import dataclass

from methods.common.data import Prompt
from methods.common.rewards import Reward
from methods.common.sampling import Sampling


@dataclass
class Task:
    name: str  # e.g. "toxicity"
    train_prompts: list[Prompt]
    reward: Reward  # higher is better
    sampling: Sampling  # exploration settings: completion length, nucleus top-p
