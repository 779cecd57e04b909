"""KL penalties shared by the online methods: the adaptive controller and masked means over completion tokens."""

from __future__ import annotations

import numpy as np
import torch


class KLController:
    """Fixed beta, or the adaptive controller of Ziegler et al. (2019) that Quark's and PPO's reference code use."""

    def __init__(self, value: float, target: float | None = None, horizon: float = 2500.0):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is not None:
            error = float(np.clip(kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + error * n_samples / self.horizon


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)
