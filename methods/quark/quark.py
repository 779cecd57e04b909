"""Quark: Quantized Reward Konditioning (Lu et al., NeurIPS 2022).

for round r = 0 .. R-1:
    explore   sample completions: the frozen reference p0 at r = 0 (the DAG's shared base samples,
              methods/common/base_samples.py), else the policy given the best reward token
    score     reward each sample; commit it to the pool (samples whose reward is None are kept out and counted)
    quantize  re-rank the whole pool into K equal quantiles; quantile k is marked by reward token r_k (r_0 best)
              (quantile_scope 'prompt': rank each prompt's own samples instead)
    learn     minimise NLL + beta * KL(pi(.|r_k, x, y<t) || p0(.|x, y<t)) - alpha * H(pi) on completion tokens
              (+ unlikelihood_coef * an unlikelihood term, for the paper's Quark + UL on repetition)
generate conditioned on r_0 (or any r_k: the trained model is a dial; methods/quark/generation.py)

The models, pool, probe set and checkpoints live in methods/quark/state.py. The job is resumable: every scored batch
is committed to the SQLite pool before anyone trains on it, and a checkpoint (methods/common/checkpoint.py) is written
at every round end and every `checkpoint_every` steps. A restarted job resumes from the newest complete checkpoint and
pays the reward only for the slots its round has not committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm
from transformers import set_seed

from core.config import from_dict
from core.errors import SuiteError
from core.sampling import completion_logits, pack
from methods.common.distributed import in_waves, reduce_stats
from methods.common.kl import masked_mean
from methods.common.task import Task
from methods.common.tokens import rows_step_scaled
from methods.quark.config import SOURCE, QuarkConfig
from methods.quark.pool import assign_quantiles, assign_quantiles_within
from methods.quark.state import QuarkState, derived_seed
from methods.unlikelihood.losses import unlikelihood_term


def quark_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    entropy_coef: float,
    unlikelihood: Callable[[torch.Tensor], torch.Tensor] | None = None,
    unlikelihood_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Quark's objective on completion tokens, optionally plus unlikelihood_coef times an unlikelihood term.

    logits:     [B, C, V0] policy logits over the original vocabulary (reward-token logits removed)
    ref_logits: [B, C, V0] reference logits, computed without the reward token
    labels, mask: [B, C] completion token ids and 1 where a token exists
    unlikelihood: maps the policy's [B, C, V0] log-probabilities to [B, C] per-position terms (methods/unlikelihood)
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)
    ref_logprobs = F.log_softmax(ref_logits.float(), dim=-1)
    probs = logprobs.exp()
    nll = -logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [B, C]
    kl = (probs * (logprobs - ref_logprobs)).sum(-1)  # [B, C], exact over V0
    entropy = -(probs * logprobs).sum(-1)  # [B, C]
    mask = mask.float()
    per_token = nll + kl_coef * kl - entropy_coef * entropy
    if unlikelihood is not None:
        ul = unlikelihood(logprobs)  # [B, C]
        per_token = per_token + unlikelihood_coef * ul
    loss = masked_mean(per_token, mask)
    stats = {
        "loss": loss.item(),
        "nll": masked_mean(nll, mask).item(),
        "kl": masked_mean(kl, mask).item(),
        "kl_per_sequence": ((kl * mask).sum(-1)).mean().item(),
        "entropy": masked_mean(entropy, mask).item(),
    }
    if unlikelihood is not None:
        stats["unlikelihood"] = masked_mean(ul, mask).item()
    return loss, stats


class Trainer(QuarkState):
    """`explore` and `learn` are one round's two halves; `run` is the loop of the algorithm box above."""

    def explore(self, rnd: int) -> list[float]:
        """Sample and score this round's batches not yet in the pool; returns the round's scored rewards (main)."""
        cfg = self.cfg
        started = time.perf_counter()
        if rnd == 0:  # p0's samples: the run's base samples, committed at once
            if self.main and not self.pool.explored_slots(0):
                self.pool.add(self.base_samples(0))
        else:
            m = len(self.explore_idx)
            n = m if cfg.prompts_per_round is None else min(cfg.prompts_per_round, m)
            chosen = np.random.default_rng([self.seed, rnd, 0]).choice(m, size=n, replace=False)
            chosen = [self.explore_idx[i] for i in chosen for _ in range(cfg.samples_per_prompt)]
            batches = self.batches(chosen)
            if self.main and cfg.clear_pool_each_round:
                self.pool.clear(before_round=rnd)
            done = broadcast_object_list([self.pool.explored_slots(rnd) if self.main else None])[0]
            todo = [b for b, slots in enumerate(batches) if not set(slots) <= done]
            self.policy.eval()
            for rows in in_waves(
                self.acc, todo, lambda b: self.sample_batch(rnd, b, batches[b], chosen), f"round {rnd}: exploring"
            ):
                if self.main:
                    self.pool.add(sorted(rows, key=lambda s: s.slot))  # committed before anyone trains on it
        self.stats["explore_seconds"] += time.perf_counter() - started
        if not self.main:
            return []
        explored = self.pool.samples(rnd, scored_only=False)
        if cfg.pool_max_size is not None:
            self.pool.keep_newest(cfg.pool_max_size)
        self.stats["explore_tokens"] += sum(len(s.completion_ids) for s in explored)
        self.stats["scored_samples"] = self.stats.get("scored_samples", 0) + len(explored)  # the probe's not counted
        self.stats["dropped_unscored"] = self.pool.unscored()
        return [s.reward for s in explored if s.reward is not None]

    def learn(self, rnd: int) -> tuple[dict[str, float], list]:
        """Train on the whole pool from step `self.step`; returns the round's mean statistics and its quantile cuts."""
        cfg = self.cfg
        pool = broadcast_object_list([self.pool.samples() if self.main else None])[0]
        if not pool:
            raise SuiteError(f"round {rnd}: the pool is empty (the reward returned None for every sample)")
        rewards = np.array([s.reward for s in pool])
        if cfg.quantile_scope == "prompt":  # which of a prompt's own completions was better (README, "Experiments")
            groups = [s.prompt_id for s in pool]
            quantiles = assign_quantiles_within(rewards, groups, cfg.num_quantiles, [self.seed, rnd, 2])
        else:
            quantiles = assign_quantiles(rewards, cfg.num_quantiles, [self.seed, rnd, 2])
        members = [rewards[quantiles == k] for k in range(cfg.num_quantiles)]
        cuts = [float(m.min()) if len(m) else None for m in members]
        if self.main and self.step == 0:
            for k, m in enumerate(members):
                if len(m):
                    self.writer.add_scalar(f"reward/quantile_{k}", float(m.mean()), rnd)
        order = np.random.default_rng([self.seed, rnd, 1]).permutation(len(pool))
        if self.step == 0:  # mid-round, the checkpoint restored the RNG
            torch.manual_seed(derived_seed(self.seed, rnd, 1))
        self.policy.train()
        started, first_step = time.perf_counter(), self.step
        for step in tqdm(
            range(self.step, cfg.steps_per_round), desc=f"round {rnd}: training", leave=False, **self.quiet
        ):
            batch = [order[(step * cfg.batch_size + j) % len(pool)] for j in range(cfg.batch_size)]
            idx = batch[self.rank :: self.world]  # this process's share of the global batch
            prompts, completions = [pool[i].prompt_ids for i in idx], [pool[i].completion_ids for i in idx]
            pad = self.tokenizer.pad_token_id
            conditioned = pack([self.condition(p, quantiles[i]) for i, p in zip(idx, prompts)], completions, pad)
            with self.autocast():
                logits = completion_logits(self.policy, conditioned)[..., : self.vocab_size]
                with torch.no_grad(), self.reference() as ref:
                    ref_logits = completion_logits(ref, pack(prompts, completions, pad))[..., : self.vocab_size]
            loss, stats = quark_loss(
                logits,
                ref_logits,
                conditioned.completion_ids,
                conditioned.completion_mask,
                self.kl_ctl.value,
                cfg.entropy_coef,
                unlikelihood_term(conditioned, cfg.unlikelihood_level, cfg.unlikelihood_ngram_n)
                if cfg.unlikelihood_coef
                else None,
                cfg.unlikelihood_coef,
            )
            if self.world > 1:  # DDP averages the processes' gradients: weight each by its share of the tokens
                tokens = conditioned.completion_mask.sum().item()
                all_tokens = self.acc.reduce(torch.tensor(float(tokens), device=self.device), "sum").item()
                loss = loss * tokens * self.world / all_tokens
                stats = reduce_stats(self.acc, stats, tokens, len(idx))
            self.optimizer.zero_grad(set_to_none=True)
            self.acc.backward(loss)
            if cfg.clip_grad:
                self.acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            embeddings = self.acc.unwrap_model(self.policy).get_input_embeddings().weight
            with rows_step_scaled(embeddings, self.reward_ids, cfg.reward_token_lr_scale):
                self.optimizer.step()
            self.scheduler.step()
            self.kl_ctl.update(stats["kl_per_sequence"], cfg.batch_size)
            self.history.append(stats)
            self.step = step + 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps_per_round:
                self.checkpoint()
        seconds = time.perf_counter() - started
        self.stats["train_seconds"] += seconds
        sequences = (cfg.steps_per_round - first_step) * cfg.batch_size
        self.stats["train_sequences"] += sequences
        summary = (
            {key: float(np.mean([h[key] for h in self.history])) for key in self.history[0]} if self.history else {}
        )
        summary["sequences_per_second"] = sequences / max(seconds, 1e-9)
        return summary, cuts

    def run(self) -> Path:
        self.probe_samples = self.probe_set() if self.main and self.cfg.probe_prompts > 0 else []
        if self.probe_samples and self.round == 0 and self.step == 0:
            self.stats["probe_initial"] = self.probe()
        for rnd in tqdm(range(self.round, self.cfg.num_rounds), desc="quark rounds", **self.quiet):
            if self.step == 0:
                started = time.perf_counter()
                rewards = self.explore(rnd)
                self.explored = {
                    "explored": len(rewards),
                    "explore_reward": float(np.mean(rewards)) if rewards else None,
                    "samples_per_second": len(rewards) / max(time.perf_counter() - started, 1e-9),
                }
            summary, cuts = self.learn(rnd)
            # every process must reach the round's end with the same step count, pool and quantile boundaries
            ends = gather_object([[rnd, rnd * self.cfg.steps_per_round + self.step, cuts]])
            if any(end != ends[0] for end in ends):
                raise RuntimeError(f"round {rnd}: processes out of lock-step: {ends}")
            self.round, self.step = rnd + 1, 0
            if self.main:
                record = {"round": rnd, **self.explored, "pool_size": len(self.pool), "kl_coef": self.kl_ctl.value}
                record |= {"dropped_unscored": self.stats["dropped_unscored"], **summary, **self.probe()}
                record["process_ends"] = ends
                self.stats.update({k: v for k, v in record.items() if k.startswith("probe_")})  # the latest
                self.stats["rounds"].append(record)
                numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "round"}
                for key, value in numbers.items():
                    if isinstance(value, float):
                        self.writer.add_scalar(f"quark/{key}", value, rnd)
                tqdm.write(f"round {rnd}: " + ", ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
            self.history, self.explored = [], {}
            self.checkpoint()
        return self.save()


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    set_seed(seed)
    cfg = from_dict(QuarkConfig, hparams, SOURCE)
    return Trainer(task, base_model, out_dir, cfg, seed, device).run()
