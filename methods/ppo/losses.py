"""PPO's loss terms, on [B, C] tensors over completion tokens; `mask` is 1 where a token exists (completions
right-padded). Pure functions, each tested against a hand computation in tests/methods/test_ppo.py."""

from __future__ import annotations

import torch

from methods.common.kl import masked_mean


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the masked entries; subtract the mean too unless `shift_mean` is False."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards -beta * (log pi - log p0), with each sequence's score [B] added at its last token.

    Returns (rewards, kl), both [B, C] and zero on padding; kl is the sampled per-token KL estimate.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    lengths = mask.sum(1).long()
    last = (lengths - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores * (lengths > 0)
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns, [B, C]; the value after a sequence's last token is 0."""
    rewards, values = rewards * mask, values * mask  # padding then adds nothing, and V after the end is 0
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def ppo_loss(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy surrogate plus vf_coef times the clipped value loss, masked means over completion tokens."""
    ratio = torch.exp((logprobs - old_logprobs) * mask)  # 1 on padding, whatever sits there
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
    loss = pg_loss + vf_coef * vf_loss
    stats = {
        "policy_loss": pg_loss.item(),
        "value_loss": vf_loss.item(),
        "clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), mask).item(),
        "value_clipfrac": masked_mean((vf_losses_clipped > vf_losses).float(), mask).item(),
        "approx_kl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask).item(),
    }
    return loss, stats
