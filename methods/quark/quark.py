"""Quark: Quantized Reward Konditioning (Lu et al., NeurIPS 2022).

for round r = 0 .. R-1:
    explore   sample completions: the frozen reference p0 at r = 0, else the policy given the best reward token
    score     reward each sample; add it to the pool (samples whose reward is None are dropped and counted)
    quantize  re-rank the whole pool into K equal quantiles; quantile k is marked by reward token r_k (r_0 best)
    learn     minimise NLL + beta * KL(pi(.|r_k, x, y<t) || p0(.|x, y<t)) - alpha * H(pi) on completion tokens
generate conditioned on r_0 (or any r_k: the trained model is a dial)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup, set_seed

from methods.common.config import from_dict
from methods.common.data import Prompt, write_json
from methods.common.errors import SuiteError
from methods.common.generate import generate_jsonl
from methods.common.kl import KLController, masked_mean
from methods.common.models import encode_prompts, load_model
from methods.common.rollout import score_completions
from methods.common.sampling import Sampling, completion_logits, pack, sample
from methods.common.task import Task
from methods.common.tokens import add_control_tokens
from methods.quark.pool import Pool, Sample, assign_quantiles

META_FILE = "quark.json"


@dataclass
class QuarkConfig:
    num_quantiles: int = field(default=5, metadata={"help": "K, the number of reward quantiles and reward tokens"})
    num_rounds: int = field(default=6, metadata={"help": "exploration rounds (the reference samples every 500 steps)"})
    steps_per_round: int = field(default=500, metadata={"help": "gradient steps between two explorations"})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "train prompts explored each round (None: all)"}
    )
    samples_per_prompt: int = field(default=1, metadata={"help": "completions sampled per prompt per round"})
    explore_top_p: float = field(default=1.0, metadata={"help": "nucleus top-p while exploring (reference: 1.0)"})
    batch_size: int = field(default=128, metadata={"help": "sequences per gradient step"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_steps: int = field(default=500, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta, the weight of KL(pi || p0)"})
    adaptive_kl: bool = field(default=False, metadata={"help": "adapt beta towards target_kl (Ziegler et al. 2019)"})
    target_kl: float = field(default=3.0, metadata={"help": "target per-sequence KL for the adaptive controller"})
    horizon: float = field(default=2500.0, metadata={"help": "horizon of the adaptive KL controller"})
    entropy_coef: float = field(default=0.06, metadata={"help": "alpha, the weight of the entropy bonus"})
    clip_grad: bool = field(default=False, metadata={"help": "clip the gradient norm"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient-norm bound when clip_grad is on"})
    pool_max_size: int | None = field(default=None, metadata={"help": "keep only the newest N samples (None: all)"})
    clear_pool_each_round: bool = field(default=False, metadata={"help": "drop earlier rounds' samples each round"})
    max_prompt_tokens: int = field(default=64, metadata={"help": "prompts are cut from the left to this length"})
    sample_batch_size: int = field(default=64, metadata={"help": "sequences per generate() call while exploring"})
    bf16: bool = field(
        default=False, metadata={"help": "bfloat16 autocast for forward passes (fast on CPUs with AVX-512 BF16)"}
    )


def reward_token_names(k: int) -> list[str]:
    return [f"<|quark_{i}|>" for i in range(k)]


def add_reward_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, k: int) -> list[int]:
    """K reward tokens, r_0 the best quantile, as control tokens with distinct embedding rows."""
    return add_control_tokens(model, tokenizer, reward_token_names(k))


def quark_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    entropy_coef: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Quark's objective on completion tokens.

    logits:     [B, C, V0] policy logits over the original vocabulary (reward-token logits removed)
    ref_logits: [B, C, V0] reference logits, computed without the reward token
    labels, mask: [B, C] completion token ids and 1 where a token exists
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)
    ref_logprobs = F.log_softmax(ref_logits.float(), dim=-1)
    probs = logprobs.exp()
    nll = -logprobs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [B, C]
    kl = (probs * (logprobs - ref_logprobs)).sum(-1)  # [B, C], exact over V0
    entropy = -(probs * logprobs).sum(-1)  # [B, C]
    mask = mask.float()
    loss = masked_mean(nll + kl_coef * kl - entropy_coef * entropy, mask)
    stats = {
        "loss": loss.item(),
        "nll": masked_mean(nll, mask).item(),
        "kl": masked_mean(kl, mask).item(),
        "kl_per_sequence": ((kl * mask).sum(-1)).mean().item(),
        "entropy": masked_mean(entropy, mask).item(),
    }
    return loss, stats


class Trainer:
    """Holds the models and the pool; `explore` and `learn` are one round's two halves."""

    def __init__(self, task: Task, base_model: Path, out_dir: Path, cfg: QuarkConfig, seed: int, device: str):
        self.task, self.cfg, self.out_dir, self.device = task, cfg, Path(out_dir), device
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self.policy, self.tokenizer = load_model(base_model, device)
        self.ref, _ = load_model(base_model, device)
        self.ref.requires_grad_(False)
        self.vocab_size = self.ref.get_input_embeddings().num_embeddings  # V0, the original vocabulary
        self.reward_ids = add_reward_tokens(self.policy, self.tokenizer, cfg.num_quantiles)
        self.prompts = task.train_prompts
        self.prompt_ids = encode_prompts(self.tokenizer, [p.text for p in self.prompts], cfg.max_prompt_tokens)
        pool_path = self.out_dir / "pool.sqlite"
        for stale in (pool_path, pool_path.with_name("pool.sqlite-wal"), pool_path.with_name("pool.sqlite-shm")):
            stale.unlink(missing_ok=True)  # a fresh job starts a fresh pool; resuming one is issue 6's checkpointing
        self.pool = Pool(pool_path)
        total_steps = cfg.num_rounds * cfg.steps_per_round
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, min(cfg.warmup_steps, total_steps), total_steps
        )
        self.kl_ctl = KLController(cfg.kl_coef, cfg.target_kl if cfg.adaptive_kl else None, cfg.horizon)
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        self.stats = {"dropped_unscored": 0, "explore_tokens": 0, "explore_seconds": 0.0, "train_sequences": 0,
                      "train_seconds": 0.0, "rounds": []}  # fmt: skip

    def autocast(self):
        return torch.autocast("cpu" if self.device == "cpu" else "cuda", dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def explore(self, rnd: int) -> list[float]:
        cfg = self.cfg
        n = len(self.prompts) if cfg.prompts_per_round is None else min(cfg.prompts_per_round, len(self.prompts))
        chosen = self.rng.choice(len(self.prompts), size=n, replace=False)
        chosen = [i for i in chosen for _ in range(cfg.samples_per_prompt)]
        sampling = Sampling(self.task.sampling.max_new_tokens, cfg.explore_top_p, batch_size=cfg.sample_batch_size)
        started = time.perf_counter()
        if rnd == 0:
            model, prefixes, suppress = self.ref, [self.prompt_ids[i] for i in chosen], None
        else:
            best = self.reward_ids[0]
            model, prefixes, suppress = self.policy, [[best] + self.prompt_ids[i] for i in chosen], self.reward_ids
        self.policy.eval()
        with self.autocast():
            completions = sample(model, self.tokenizer, prefixes, sampling, suppress, desc=f"round {rnd}: exploring")
        self.stats["explore_seconds"] += time.perf_counter() - started
        self.stats["explore_tokens"] += sum(len(c) for c in completions)

        prompt_texts = [self.prompts[i].text for i in chosen]
        texts, rewards = score_completions(self.task.reward, self.tokenizer, prompt_texts, completions,
                                           desc=f"round {rnd}: scoring")  # fmt: skip
        kept = [
            Sample(self.prompts[i].id, self.prompt_ids[i], c, self.prompts[i].text, t, r, rnd)
            for i, c, t, r in zip(chosen, completions, texts, rewards)
            if r is not None
        ]
        self.stats["dropped_unscored"] += len(rewards) - len(kept)
        if cfg.clear_pool_each_round:
            self.pool.clear()
        self.pool.add(kept)
        if cfg.pool_max_size is not None:
            self.pool.keep_newest(cfg.pool_max_size)
        return [s.reward for s in kept]

    def learn(self, rnd: int) -> dict[str, float]:
        cfg = self.cfg
        pool = self.pool.samples()
        if not pool:
            raise SuiteError(f"round {rnd}: the pool is empty (the reward returned None for every sample)")
        quantiles = assign_quantiles(np.array([s.reward for s in pool]), cfg.num_quantiles)
        for k in range(cfg.num_quantiles):
            in_k = [s.reward for s, q in zip(pool, quantiles) if q == k]
            if in_k:
                self.writer.add_scalar(f"reward/quantile_{k}", float(np.mean(in_k)), rnd)
        order = self.rng.permutation(len(pool))
        self.policy.train()
        started, history = time.perf_counter(), []
        for step in tqdm(range(cfg.steps_per_round), desc=f"round {rnd}: training", leave=False):
            idx = [order[(step * cfg.batch_size + j) % len(pool)] for j in range(cfg.batch_size)]
            prompts = [pool[i].prompt_ids for i in idx]
            completions = [pool[i].completion_ids for i in idx]
            conditioned = pack([[self.reward_ids[quantiles[i]]] + p for i, p in zip(idx, prompts)], completions,
                               self.tokenizer.pad_token_id)  # fmt: skip
            plain = pack(prompts, completions, self.tokenizer.pad_token_id)
            with self.autocast():
                logits = completion_logits(self.policy, conditioned)[..., : self.vocab_size]
                with torch.no_grad():
                    ref_logits = completion_logits(self.ref, plain)
            loss, stats = quark_loss(logits, ref_logits, conditioned.completion_ids, conditioned.completion_mask,
                                     self.kl_ctl.value, cfg.entropy_coef)  # fmt: skip
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.kl_ctl.update(stats["kl_per_sequence"], cfg.batch_size)
            history.append(stats)
        seconds = time.perf_counter() - started
        self.stats["train_seconds"] += seconds
        self.stats["train_sequences"] += cfg.steps_per_round * cfg.batch_size
        summary = {key: float(np.mean([h[key] for h in history])) for key in history[0]} if history else {}
        summary["sequences_per_second"] = cfg.steps_per_round * cfg.batch_size / max(seconds, 1e-9)
        return summary

    def run(self) -> Path:
        for rnd in tqdm(range(self.cfg.num_rounds), desc="quark rounds"):
            started = time.perf_counter()
            rewards = self.explore(rnd)
            explore_seconds = time.perf_counter() - started
            summary = self.learn(rnd)
            record = {"round": rnd, "explored": len(rewards), "explore_reward": float(np.mean(rewards)) if rewards else None,
                      "pool_size": len(self.pool), "kl_coef": self.kl_ctl.value,
                      "samples_per_second": len(rewards) / max(explore_seconds, 1e-9), **summary}  # fmt: skip
            self.stats["rounds"].append(record)
            for key, value in record.items():
                if isinstance(value, float) and key != "round":
                    self.writer.add_scalar(f"quark/{key}", value, rnd)
            tqdm.write(f"round {rnd}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
        return self.save()

    def save(self) -> Path:
        model_dir = self.out_dir / "model"
        self.policy.save_pretrained(model_dir)
        self.tokenizer.save_pretrained(model_dir)
        meta = {"reward_tokens": reward_token_names(self.cfg.num_quantiles), "reward_token_ids": self.reward_ids,
                "best_quantile": 0, "base_vocab_size": self.vocab_size, "config": asdict(self.cfg)}  # fmt: skip
        write_json(model_dir / META_FILE, meta)
        s = self.stats
        s["explore_tokens_per_second"] = s["explore_tokens"] / max(s["explore_seconds"], 1e-9)
        s["train_sequences_per_second"] = s["train_sequences"] / max(s["train_seconds"], 1e-9)
        write_json(self.out_dir / "train_stats.json", s)
        self.writer.close()
        self.pool.close()
        return model_dir


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    set_seed(seed)
    cfg = from_dict(QuarkConfig, hparams, "methods/quark/method.yaml")
    return Trainer(task, base_model, out_dir, cfg, seed, device).run()


def generate(
    model_dir: Path,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: Path,
    *,
    seed: int,
    device: str,
    quantile: int | str = "best",
) -> None:
    """Sample conditioned on one reward token: 'best' (the default), 'worst', or a quantile index."""
    model, tokenizer = load_model(model_dir, device)
    meta_path = Path(model_dir) / META_FILE
    if not meta_path.is_file():
        raise SuiteError(f"{model_dir} is not a Quark model (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    ids = meta["reward_token_ids"]
    k = {"best": meta["best_quantile"], "worst": len(ids) - 1}.get(quantile, quantile)
    if not isinstance(k, int) or not 0 <= k < len(ids):
        raise SuiteError(f"quantile must be 'best', 'worst' or 0..{len(ids) - 1}, got {quantile!r}")
    generate_jsonl(
        model, tokenizer, prompts, num_samples, sampling, out_path, seed, prefix_ids=[ids[k]], suppress_ids=ids
    )
