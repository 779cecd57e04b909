"""PPO with a KL penalty in the reward (Ziegler et al. 2019, Stiennon et al. 2020): the Quark paper's RL baseline.

for round r = 0 .. R-1, for each rollout batch of that round's prompts:
    rollout   sample one completion per prompt from the policy (top-p 1, temperature 1: the policy itself); score it
              with the task's reward (None: dropped and counted); logprobs and values of the policy, logprobs of the
              frozen reference p0, all on the sampled token ids
    reward    r_t = -beta * (log pi(y_t) - log p0(y_t)) at every completion token, plus the score at the last one
              (scores standardised by the initial policy's mean and std; rewards scaled to unit variance)
    GAE       delta_t = r_t + gamma V_{t+1} - V_t,  A_t = sum_l (gamma lambda)^l delta_{t+l},  R_t = A_t + V_t
    learn     ppo_epochs passes over shuffled minibatches, minimising on completion tokens
                  max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))
                  + vf_coef / 2 * max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)
    control   beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)
generate from the trained policy, a plain causal LM

The job is resumable: after every `checkpoint_every` iterations it writes a checkpoint (methods/common/checkpoint.py)
of the policy and value head, AdamW, the schedule, the RNG states, beta, the score normalisation and the statistics.
A restarted job with the same settings resumes from the newest complete one. Prompt choice comes from (seed, round),
and each iteration's sampling seed and minibatch order from (seed, iteration), so a resumed CPU job ends bitwise
where an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup, set_seed
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from core.config import from_dict_for_task
from core.data import atomic_output, write_json
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Packed, completion_logits, pack, sample
from methods.common.checkpoint import Checkpoints, claim_run, finish_run, rng_state, set_rng_state
from methods.common.kl import KLController, masked_mean
from methods.common.rollout import score_completions
from methods.common.speed import adamw
from methods.common.task import Task

SOURCE = "methods/ppo/method.yaml"
META_FILE = "ppo.json"
VALUE_HEAD_FILE = "value_head.safetensors"
RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints")  # may change between a crash and the restart


@dataclass
class PPOConfig:
    num_rounds: int = field(default=46, metadata={"help": "rounds; each draws prompts_per_round prompts (as Quark's)"})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "train prompts sampled each round (None: all)"}
    )
    samples_per_prompt: int = field(default=1, metadata={"help": "completions sampled per prompt per round"})
    rollout_batch_size: int | None = field(
        default=512, metadata={"help": "scored samples per PPO iteration (None: the whole round; Ziegler: 512)"}
    )
    minibatch_size: int = field(
        default=512, metadata={"help": "sequences per optimizer step (Ziegler: the whole rollout batch)"}
    )
    micro_batch_size: int = field(default=64, metadata={"help": "sequences per forward/backward (memory bound)"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW peak learning rate, decayed linearly to 0"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up optimizer steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient-norm bound (None: no clipping)"})
    kl_coef: float = field(default=0.15, metadata={"help": "initial beta, the per-token KL penalty in the reward"})
    adaptive_kl: bool = field(default=True, metadata={"help": "adapt beta towards target_kl (Ziegler et al. 2019)"})
    target_kl: float = field(default=6.0, metadata={"help": "target KL to the reference per sequence, in nats"})
    horizon: float = field(default=10000.0, metadata={"help": "horizon of the adaptive KL controller, in samples"})
    gamma: float = field(default=1.0, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "epsilon of the clipped policy surrogate"})
    cliprange_value: float = field(default=0.2, metadata={"help": "how far a value may move from its rollout value"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    normalize_scores: bool = field(
        default=True, metadata={"help": "standardise scores by the initial policy's mean and std (first batch)"}
    )
    whiten_rewards: bool = field(
        default=True, metadata={"help": "scale per-token rewards to unit variance per rollout batch (mean kept)"}
    )
    max_prompt_tokens: int = field(default=64, metadata={"help": "prompts are cut from the left to this length"})
    sample_batch_size: int = field(default=64, metadata={"help": "sequences per generate() call in rollouts"})
    forward_batch_size: int = field(default=64, metadata={"help": "sequences per no-grad forward in rollouts"})
    bf16: bool = field(
        default=False, metadata={"help": "bfloat16 autocast for forward passes (fast on CPUs with AVX-512 BF16)"}
    )
    checkpoint_every: int | None = field(
        default=1, metadata={"help": "checkpoint every N PPO iterations, to resume from after a crash (None: never)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "newest complete checkpoints kept while training"})


# ---------------------------------------------------------------------------------------------------------------------
# The loss terms, on [B, C] tensors over completion tokens; `mask` is 1 where a token exists (completions right-padded).


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


# ---------------------------------------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """A scalar value per position from the policy's final hidden state (a head on the shared trunk, as Ziegler's)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return self.linear(hidden.float()).squeeze(-1)


def policy_forward(policy: PreTrainedModel, value_head: ValueHead, packed: Packed) -> tuple[torch.Tensor, ...]:
    """Logprobs of the completion tokens, values at the positions that predict them, and the logits: [B, C] (, V)."""
    C = packed.completion_ids.shape[1]
    out = policy(
        input_ids=packed.input_ids,
        attention_mask=packed.attention_mask,
        position_ids=packed.position_ids(),
        logits_to_keep=C + 1,
        output_hidden_states=True,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()
    values = value_head(out.hidden_states[-1][:, -(C + 1) : -1])
    return selective_log_softmax(logits, packed.completion_ids), values, logits


def prefix_lengths(packed: Packed) -> torch.Tensor:
    return packed.attention_mask[:, : packed.prefix_len].sum(1)


def rows(packed: Packed, idx: torch.Tensor) -> Packed:
    """The rows `idx` of a packed batch, less the leading columns that are padding in all of them.

    Completions stay aligned (they start at the new `prefix_len`), so [B, C] tensors of the batch index as before.
    Rows of similar prompt length, taken together, then cost no compute for the longest prompt of the whole batch.
    """
    cut = packed.prefix_len - int(prefix_lengths(packed)[idx].max())
    return Packed(
        packed.input_ids[idx, cut:],
        packed.attention_mask[idx, cut:],
        packed.completion_ids[idx],
        packed.completion_mask[idx],
        packed.prefix_len - cut,
    )


def plan_batches(cfg: PPOConfig, num_prompts: int, seed: int) -> list[tuple[int, list[int]]]:
    """(round, prompt indices) per PPO iteration: each round draws its prompts, then cuts them into rollout batches.

    A round's draw comes from (seed, round) alone, as Quark's does: the same prompts however the job was interrupted.
    """
    n = num_prompts if cfg.prompts_per_round is None else min(cfg.prompts_per_round, num_prompts)
    batches = []
    for rnd in range(cfg.num_rounds):
        rng = np.random.default_rng([seed, 0, rnd])
        chosen = [int(i) for i in rng.choice(num_prompts, size=n, replace=False)]
        chosen = [i for i in chosen for _ in range(cfg.samples_per_prompt)]
        size = cfg.rollout_batch_size or len(chosen)
        batches += [(rnd, chosen[s : s + size]) for s in range(0, len(chosen), size)]
    return batches


@dataclass
class Rollout:
    """One PPO batch: the packed sequences and, per completion token ([N, C]), what the loss needs."""

    packed: Packed
    mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    stats: dict[str, float]


def iteration_rng(seed: int, it: int) -> np.random.Generator:
    """The draws of PPO iteration `it` (its sampling seed, then its minibatch orders), from (seed, iteration) alone."""
    return np.random.default_rng([seed, 1, it])


class Trainer:
    """Holds the policy, its value head, the frozen reference, the KL controller and the checkpoints; `rollout` then
    `learn` is one PPO iteration."""

    def __init__(self, task: Task, base_model: Path, out_dir: Path, cfg: PPOConfig, seed: int, device: str):
        self.task, self.cfg, self.seed, self.out_dir, self.device = task, cfg, seed, Path(out_dir), device
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", "ppo", cfg.keep_checkpoints)
        resume = self.open_run()  # before the models load: a run directory that cannot be resumed fails at once
        self.policy, self.tokenizer = load_model(base_model, device)  # eval mode: no dropout, ratios start at 1
        self.ref, _ = load_model(base_model, device)
        self.ref.requires_grad_(False)
        self.value_head = ValueHead(self.policy.config.hidden_size).to(device)
        self.prompts = task.train_prompts
        self.prompt_ids = encode_prompts(self.tokenizer, [p.text for p in self.prompts], cfg.max_prompt_tokens)
        self.batches = plan_batches(cfg, len(self.prompts), seed)
        total_steps = sum(cfg.ppo_epochs * math.ceil(len(b) / cfg.minibatch_size) for _, b in self.batches)
        params = list(self.policy.parameters()) + list(self.value_head.parameters())
        self.optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, min(cfg.warmup_steps, total_steps), total_steps
        )
        self.score_norm: tuple[float, float] | None = None
        self.kl_ctl = KLController(cfg.kl_coef, cfg.target_kl if cfg.adaptive_kl else None, cfg.horizon)
        self.stats = {
            "scored_samples": 0,
            "dropped_unscored": 0,
            "explore_tokens": 0,
            "explore_seconds": 0.0,
            "train_sequences": 0,
            "train_seconds": 0.0,
            "resumed_from": [],
            "iterations": [],
        }
        self.iteration = 0  # PPO iterations done
        if resume is not None:
            self.restore(resume)
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    # ---- the run directory: resume a run with these settings, refuse one with others ----

    def identity(self) -> dict:
        config = {k: v for k, v in asdict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        prompts = hashlib.sha256(json.dumps([[p.id, p.text] for p in self.task.train_prompts]).encode()).hexdigest()
        return {"seed": self.seed, "task": self.task.name, "config": config, "prompts_sha256": prompts}

    def open_run(self) -> Path | None:
        """The checkpoint to resume from (None: start afresh); an unfinished run with other settings is an error."""
        resume = claim_run(self.out_dir, self.identity(), "PPO")
        for stale in [*self.out_dir.glob("model.tmp*"), *self.out_dir.glob("value_head.tmp*")]:  # a save cut short
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        if not resume:
            self.checkpoints.clear()
            return None
        latest = self.checkpoints.latest()
        if latest is not None:
            self.checkpoints.check(latest)
        tqdm.write(f"{self.out_dir}: resuming from {latest or 'the start'}")
        return latest

    def trainable(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by checkpoint name: the policy's parameters and the value head's."""
        return {
            **{f"policy.{n}": p for n, p in self.policy.named_parameters()},
            **{f"value_head.{n}": p for n, p in self.value_head.named_parameters()},
        }

    def save_checkpoint(self) -> None:
        rng_tensors, rng_plain = rng_state()
        objects = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_tensors,
        }
        state = {
            "iteration": self.iteration,
            "kl_coef": self.kl_ctl.value,
            "score_norm": self.score_norm,
            "stats": self.stats,
            "rng": rng_plain,
        }
        self.checkpoints.save(self.iteration, self.trainable(), objects, state)

    def restore(self, path: Path) -> None:
        tensors, objects, state = self.checkpoints.load(path)
        params = self.trainable()
        if set(tensors) != set(params):
            raise SuiteError(
                f"{path}/weights.safetensors: its tensors do not match this model's; "
                f"move {self.out_dir} away to start afresh"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name])
        self.optimizer.load_state_dict(objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        set_rng_state(objects["rng"], state["rng"])
        self.kl_ctl.value, self.iteration, self.stats = state["kl_coef"], state["iteration"], state["stats"]
        self.score_norm = None if state["score_norm"] is None else tuple(state["score_norm"])
        self.stats["resumed_from"].append(path.name)

    # ---- one PPO iteration ----

    def autocast(self):
        return torch.autocast("cpu" if self.device == "cpu" else "cuda", dtype=torch.bfloat16, enabled=self.cfg.bf16)

    @torch.no_grad()
    def rollout(self, it: int, chosen: list[int]) -> Rollout:
        cfg = self.cfg
        started = time.perf_counter()
        self.policy.eval()
        with self.autocast():
            sampling = dataclasses.replace(
                self.task.sampling, top_p=1.0, do_sample=True, batch_size=cfg.sample_batch_size
            )
            completions = sample(
                self.policy,
                self.tokenizer,
                [self.prompt_ids[i] for i in chosen],
                sampling,
                desc=f"iteration {it}: sampling",
            )
        explore_seconds, explore_tokens = time.perf_counter() - started, sum(len(c) for c in completions)
        self.stats["explore_seconds"] += explore_seconds
        self.stats["explore_tokens"] += explore_tokens
        _, rewards = score_completions(
            self.task.reward,
            self.tokenizer,
            [self.prompts[i].text for i in chosen],
            completions,
            desc=f"iteration {it}: scoring",
        )
        kept = [k for k, r in enumerate(rewards) if r is not None]
        self.stats["dropped_unscored"] += len(rewards) - len(kept)
        self.stats["scored_samples"] += len(kept)
        if not kept:
            raise SuiteError(f"iteration {it}: the reward returned None for every sample; nothing to learn from")
        scores = torch.tensor([rewards[k] for k in kept], dtype=torch.float32)
        raw_mean, raw_std = scores.mean().item(), scores.std().item() if len(scores) > 1 else 0.0
        packed = pack(
            [self.prompt_ids[chosen[k]] for k in kept], [completions[k] for k in kept], self.tokenizer.pad_token_id
        )
        packed = packed.to(self.device)
        mask = packed.completion_mask.float()
        logprobs, values, ref_logprobs, entropy = (torch.zeros_like(mask) for _ in range(4))
        by_length = torch.argsort(prefix_lengths(packed), stable=True)
        for idx in tqdm(by_length.split(cfg.forward_batch_size), desc=f"iteration {it}: scoring tokens", leave=False):
            batch = rows(packed, idx)
            with self.autocast():
                logprobs[idx], values[idx], logits = policy_forward(self.policy, self.value_head, batch)
                ref_logprobs[idx] = selective_log_softmax(
                    completion_logits(self.ref, batch).float(), batch.completion_ids
                )
            entropy[idx] = entropy_from_logits(logits)
        values = values * mask
        if cfg.normalize_scores:
            if self.score_norm is None:  # the initial policy's score statistics, kept for the whole run
                self.score_norm = (scores.mean().item(), scores.std().item() if len(scores) > 1 else 1.0)
            scores = (scores - self.score_norm[0]) / (self.score_norm[1] if self.score_norm[1] > 1e-6 else 1.0)
        rewards_t, kl = kl_penalised_rewards(scores.to(self.device), logprobs, ref_logprobs, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards_t = whiten(rewards_t, mask, shift_mean=False)
        advantages, returns = gae(rewards_t, values, mask, cfg.gamma, cfg.lam)
        stats = {
            "reward": raw_mean,
            "reward_std": raw_std,
            "kl": kl.sum(1).mean().item(),
            "non_score_reward": (-self.kl_ctl.value * kl).sum(1).mean().item(),
            "entropy": masked_mean(entropy, mask).item(),
            "completion_tokens": mask.sum(1).mean().item(),
            "explore_tokens_per_second": explore_tokens / max(explore_seconds, 1e-9),
        }
        return Rollout(packed, mask, logprobs, values, whiten(advantages, mask), returns, stats)

    def learn(self, batch: Rollout, rng: np.random.Generator) -> dict[str, float]:
        cfg, n = self.cfg, len(batch.mask)
        started, history = time.perf_counter(), []
        lengths = prefix_lengths(batch.packed)
        minibatches = [
            mb for _ in range(cfg.ppo_epochs) for mb in torch.from_numpy(rng.permutation(n)).split(cfg.minibatch_size)
        ]
        for minibatch in tqdm(minibatches, desc="ppo epochs x minibatches", leave=False):
            tokens = batch.mask[minibatch].sum().clamp(min=1)
            minibatch = minibatch[torch.argsort(lengths[minibatch], stable=True)]  # micro-batches of like lengths
            self.optimizer.zero_grad(set_to_none=True)
            for micro in minibatch.split(cfg.micro_batch_size):
                mask = batch.mask[micro]
                with self.autocast():
                    logprobs, values, _ = policy_forward(self.policy, self.value_head, rows(batch.packed, micro))
                loss, stats = ppo_loss(
                    logprobs,
                    values,
                    batch.logprobs[micro],
                    batch.values[micro],
                    batch.advantages[micro],
                    batch.returns[micro],
                    mask,
                    cfg.cliprange,
                    cfg.cliprange_value,
                    cfg.vf_coef,
                )
                (loss * mask.sum() / tokens).backward()  # token-weighted mean over the minibatch
                history.append(stats)
            if cfg.max_grad_norm is not None:
                params = list(self.policy.parameters()) + list(self.value_head.parameters())
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
        seconds = time.perf_counter() - started
        self.stats["train_seconds"] += seconds
        self.stats["train_sequences"] += cfg.ppo_epochs * n
        summary = {key: float(np.mean([h[key] for h in history])) for key in history[0]}
        error = ((batch.values - batch.returns) ** 2 * batch.mask).sum() / batch.mask.sum()
        var = masked_mean((batch.returns - masked_mean(batch.returns, batch.mask)) ** 2, batch.mask)
        summary["explained_variance"] = (1 - error / var.clamp(min=1e-8)).item()  # of the rollout's values
        summary["sequences_per_second"] = cfg.ppo_epochs * n / max(seconds, 1e-9)
        return summary

    def run(self) -> Path:
        total, every = len(self.batches), self.cfg.checkpoint_every
        for it in tqdm(range(self.iteration, total), desc="ppo iterations", initial=self.iteration, total=total):
            rnd, chosen = self.batches[it]
            rng = iteration_rng(self.seed, it)
            torch.manual_seed(int(rng.integers(2**63)))
            started = time.perf_counter()
            batch = self.rollout(it, chosen)
            rollout_seconds = time.perf_counter() - started
            record = {
                "iteration": it,
                "round": rnd,
                "scored": len(batch.mask),
                "kl_coef": self.kl_ctl.value,
                **batch.stats,
                **self.learn(batch, rng),
                "rollout_seconds": rollout_seconds,
            }
            self.kl_ctl.update(batch.stats["kl"], len(batch.mask))
            self.stats["iterations"].append(record)
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"ppo/{key}", value, it)
            tqdm.write(
                f"iteration {it}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
            )
            self.iteration = it + 1
            if every and self.iteration % every == 0 and self.iteration < total:  # the last one: the model instead
                self.save_checkpoint()
        return self.save()

    def save(self) -> Path:
        """Write the model and value head whole, the statistics, mark the run finished, then retire the checkpoints."""
        model_dir = self.out_dir / "model"
        try:
            with atomic_output(model_dir) as tmp:
                self.policy.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                write_json(
                    tmp / META_FILE,
                    {"final_kl_coef": self.kl_ctl.value, "score_norm": self.score_norm, "config": asdict(self.cfg)},
                )
            with atomic_output(self.out_dir / VALUE_HEAD_FILE) as tmp:
                save_file(self.value_head.state_dict(), str(tmp))
            s = self.stats
            s["explore_tokens_per_second"] = s["explore_tokens"] / max(s["explore_seconds"], 1e-9)
            s["train_sequences_per_second"] = s["train_sequences"] / max(s["train_seconds"], 1e-9)
            write_json(self.out_dir / "train_stats.json", s)
            finish_run(self.out_dir)
        except OSError as exc:
            raise SuiteError(f"could not write the model to {model_dir} ({exc.strerror or exc})") from None
        self.writer.close()
        self.checkpoints.clear()
        return model_dir


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Train the policy with PPO on the task's reward; return the saved model directory (value head beside it)."""
    set_seed(seed)
    cfg = from_dict_for_task(PPOConfig, hparams, task.name, SOURCE)
    for name in (
        "num_rounds",
        "samples_per_prompt",
        "minibatch_size",
        "micro_batch_size",
        "ppo_epochs",
        "sample_batch_size",
        "forward_batch_size",
        "keep_checkpoints",
    ):
        if getattr(cfg, name) < 1:
            raise SuiteError(f"{SOURCE}: {name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.checkpoint_every is not None and cfg.checkpoint_every < 1:
        raise SuiteError(f"{SOURCE}: checkpoint_every must be at least 1 or null, got {cfg.checkpoint_every}")
    return Trainer(task, base_model, out_dir, cfg, seed, device).run()
