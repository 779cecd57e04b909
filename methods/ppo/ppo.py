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
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup, set_seed
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from core.config import from_dict
from core.data import atomic_output
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Packed, completion_logits, pack, sample
from core.speed import adamw, autocast_weights
from methods.common.checkpoint import Checkpoints
from methods.common.kl import KLController, masked_mean
from methods.common.rollout import score_completions
from methods.common.task import Task
from methods.common.trainer import Resumable, run_identity
from methods.ppo.config import SOURCE, PPOConfig
from methods.ppo.losses import gae, kl_penalised_rewards, ppo_loss, whiten

META_FILE = "ppo.json"
VALUE_HEAD_FILE = "value_head.safetensors"


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


class Trainer(Resumable):
    """Holds the policy, its value head, the frozen reference, the KL controller and the checkpoints; `rollout` then
    `learn` is one PPO iteration."""

    method, resumed = "PPO", ("iteration", "score_norm", "stats")

    def __init__(self, task: Task, base_model: Path, out_dir: Path, cfg: PPOConfig, seed: int, device: str):
        self.task, self.cfg, self.seed, self.out_dir, self.device = task, cfg, seed, Path(out_dir), device
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", "ppo", cfg.keep_checkpoints)
        resume = self.open_run(run_identity(cfg, task, seed))  # before the models load: a bad run directory fails now
        self.policy, self.tokenizer = load_model(base_model, device)  # eval mode: no dropout, ratios start at 1
        self.ref, _ = load_model(base_model, device)
        self.ref.requires_grad_(False)
        if cfg.bf16:  # the reference runs only under autocast: its weights cast once (core/speed.py)
            autocast_weights(self.ref)
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

    def trainable(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by checkpoint name: the policy's parameters and the value head's."""
        return {
            **{f"policy.{n}": p for n, p in self.policy.named_parameters()},
            **{f"value_head.{n}": p for n, p in self.value_head.named_parameters()},
        }

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
        by_length = torch.argsort(packed.prefix_lengths(), stable=True)
        for idx in tqdm(by_length.split(cfg.forward_batch_size), desc=f"iteration {it}: scoring tokens", leave=False):
            batch = packed.rows(idx)
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
        lengths = batch.packed.prefix_lengths()
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
                    logprobs, values, _ = policy_forward(self.policy, self.value_head, batch.packed.rows(micro))
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
                self.save_checkpoint(self.iteration)
        return self.save()

    def save(self) -> Path:
        """Write the model and the value head whole, the statistics, mark the run finished, retire the checkpoints."""
        with atomic_output(self.out_dir / VALUE_HEAD_FILE) as tmp:
            save_file(self.value_head.state_dict(), str(tmp))
        meta = {"final_kl_coef": self.kl_ctl.value, "score_norm": self.score_norm, "config": asdict(self.cfg)}
        model_dir = self.save_model(self.policy, self.tokenizer, META_FILE, meta)
        self.writer.close()
        self.checkpoints.clear()
        return model_dir


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Train the policy with PPO on the task's reward; return the saved model directory (value head beside it)."""
    set_seed(seed)
    cfg = from_dict(PPOConfig, hparams, SOURCE)
    return Trainer(task, base_model, out_dir, cfg, seed, device).run()
