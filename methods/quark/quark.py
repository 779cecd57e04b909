"""Quark: Quantized Reward Konditioning (Lu et al., NeurIPS 2022).

for round r = 0 .. R-1:
    explore   sample completions: the frozen reference p0 at r = 0, else the policy given the best reward token
    score     reward each sample; commit it to the pool (samples whose reward is None are kept out and counted)
    quantize  re-rank the whole pool into K equal quantiles; quantile k is marked by reward token r_k (r_0 best)
    learn     minimise NLL + beta * KL(pi(.|r_k, x, y<t) || p0(.|x, y<t)) - alpha * H(pi) on completion tokens
              (+ unlikelihood_coef * an unlikelihood term, for the paper's Quark + UL on repetition)
generate conditioned on r_0 (or any r_k: the trained model is a dial)

The job is resumable: every scored batch is committed to the SQLite pool before anyone trains on it, and a
checkpoint (methods/common/checkpoint.py) is written at every round end and every `checkpoint_every` steps. A
restarted job resumes from the newest complete checkpoint and pays the reward only for the slots its round has not
committed. Every random draw is derived from (seed, round, batch), so a resumed CPU job ends bitwise where an
uninterrupted one does. Under `accelerate launch` (or torchrun) each process explores its share of the round's
batches and scores its own samples; the samples are gathered and committed by the main process, every process trains
on the same pool through DDP, and the global batch is split across processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedType
from accelerate.utils import broadcast_object_list, gather_object
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup, set_seed

from core.config import from_dict_for_task
from core.data import Prompt, write_json
from core.errors import SuiteError
from core.models import encode_prompts, load_model, read_meta
from core.sampling import Packed, Sampling, completion_logits, pack, sample
from methods.common.checkpoint import Checkpoints, claim_run, finish_run, rng_state, set_rng_state
from methods.common.generate import generate_jsonl
from methods.common.kl import KLController, masked_mean
from methods.common.probe import controllability, held_out_prompts
from methods.common.rollout import score_completions
from methods.common.speed import adamw
from methods.common.task import Task
from methods.common.tokens import add_control_tokens
from methods.quark.pool import PROBE_ROUND, Pool, Sample, assign_quantiles
from methods.unlikelihood.losses import ngram_candidates, sequence_unlikelihood, token_unlikelihood

META_FILE = "quark.json"
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints")  # may change between a crash and the restart
PROBE_ROUND_KEY = 999_999  # seeds the probe set's draws, apart from every round's


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
        default=False,
        metadata={
            "help": "bfloat16 autocast for forward passes; 'auto': where the hardware runs it "
            "natively (CUDA, AVX-512 BF16 or AMX CPUs)"
        },
    )
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "also checkpoint every N gradient steps inside a round (round ends always)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "newest complete checkpoints kept while training"})
    unlikelihood_coef: float = field(
        default=0.0,
        metadata={
            "help": "weight of an unlikelihood term added to the loss (the paper's Quark + UL on "
            "repetition); 0: plain Quark"
        },
    )
    unlikelihood_level: Literal["sequence", "token"] = field(
        default="sequence",
        metadata={
            "help": "'sequence': the sample's tokens in an n-gram repeated within its "
            "completion; 'token': every earlier token of the sequence (Welleck et al.)"
        },
    )
    unlikelihood_ngram_n: int = field(default=4, metadata={"help": "n of the sequence-level repeated n-grams"})
    reward_token_lr_scale: float = field(
        default=1.0,
        metadata={
            "help": "the reward tokens' embedding rows take this many times AdamW's step (1: the "
            "reference code); for short runs, in which the new rows barely leave their random start"
        },
    )
    token_position: Literal["start", "end"] = field(
        default="start",
        metadata={
            "help": "where the reward token goes: 'start', before the prompt (the reference "
            "code), or 'end', between the prompt and the completion"
        },
    )
    probe_prompts: int = field(
        default=0,
        metadata={
            "help": "training prompts held out of exploration and training for the controllability "
            "probe (methods/common/probe.py), logged every round; 0: no probe"
        },
    )
    probe_samples_per_prompt: int = field(
        default=4, metadata={"help": "samples of the reference model per probe prompt, scored once"}
    )
    lora: dict | None = field(
        default=None,
        metadata={
            "help": "LoRA through PEFT, {r, alpha, dropout, target_modules} (defaults 16, 32, 0.0, PEFT's for "
            "the architecture); the reference is the base with adapters disabled; None: full fine-tuning"
        },
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


def add_lora(model: PreTrainedModel, lora: dict, trainable_token_ids: list[int]) -> PreTrainedModel:
    """Wrap the policy in PEFT LoRA adapters; the reward tokens' embedding rows stay trainable."""
    unknown = sorted(set(lora) - set(LORA_KEYS))
    if unknown:
        raise SuiteError(
            f"methods/quark/method.yaml: unknown lora option(s) {', '.join(unknown)} (known: {', '.join(LORA_KEYS)})"
        )
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.get("r", 16),
        lora_alpha=lora.get("alpha", 32),
        lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora.get("target_modules"),
        trainable_token_indices=trainable_token_ids,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def place_token(prompt_ids: list[int], token_id: int, position: str) -> list[int]:
    """The conditioned prefix: the reward token before the prompt ('start') or right after it ('end')."""
    return [token_id, *prompt_ids] if position == "start" else [*prompt_ids, token_id]


def derived_seed(seed: int, *keys: int) -> int:
    """An independent seed per (seed, round, batch, ...): a resumed job draws exactly what it would have drawn."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class Trainer:
    """Holds the models, the pool and the checkpoints; `explore` and `learn` are one round's two halves."""

    def __init__(self, task: Task, base_model: Path, out_dir: Path, cfg: QuarkConfig, seed: int, device: str):
        self.task, self.cfg, self.seed, self.out_dir = task, cfg, seed, Path(out_dir)
        self.acc = Accelerator(cpu=str(device) == "cpu")
        if self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise SuiteError(
                f"Quark runs in one process or data-parallel (workflow/accelerate/ddp.yaml), not under "
                f"{self.acc.distributed_type.value}: exploration samples from whole, unsharded weights"
            )
        self.rank, self.world, self.main = self.acc.process_index, self.acc.num_processes, self.acc.is_main_process
        if cfg.batch_size < self.world:
            raise SuiteError(f"batch_size {cfg.batch_size} is smaller than the {self.world} processes sharing it")
        self.device = self.acc.device if self.world > 1 else torch.device(device)
        self.quiet = {} if self.main else {"disable": True}  # progress bars from the main process only
        self.prompts = task.train_prompts
        self.probe_idx = held_out_prompts(len(self.prompts), cfg.probe_prompts, seed, PROBE_ROUND_KEY)  # never explored
        self.explore_idx = [i for i in range(len(self.prompts)) if i not in set(self.probe_idx)]
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", "quark", cfg.keep_checkpoints)
        self.pool: Pool | None = None  # the main process's; the others receive its samples
        resume = self.open_run() if self.main else None
        resume = broadcast_object_list([resume])[0]

        policy, self.tokenizer = load_model(base_model, self.device)
        self.vocab_size = policy.get_input_embeddings().num_embeddings  # V0, the original vocabulary
        self.reward_ids = add_reward_tokens(policy, self.tokenizer, cfg.num_quantiles)
        if cfg.lora is not None:
            policy, self.ref = add_lora(policy, cfg.lora, self.reward_ids), None  # p0 = policy without adapters
        else:
            self.ref = load_model(base_model, self.device)[0].requires_grad_(False)
        self.prompt_ids = encode_prompts(self.tokenizer, [p.text for p in self.prompts], cfg.max_prompt_tokens)
        total_steps = cfg.num_rounds * cfg.steps_per_round
        optimizer = adamw([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, min(cfg.warmup_steps, total_steps), total_steps
        )
        self.kl_ctl = KLController(cfg.kl_coef, cfg.target_kl if cfg.adaptive_kl else None, cfg.horizon)
        self.stats = {
            "dropped_unscored": 0,
            "explore_tokens": 0,
            "explore_seconds": 0.0,
            "train_sequences": 0,
            "train_seconds": 0.0,
            "processes": self.world,
            "resumed_from": [],
            "rounds": [],
        }
        self.round, self.step = 0, 0  # the next round, and the steps of it already taken
        self.history: list[dict] = []  # this round's step statistics
        self.probe_samples: list[Sample] = []  # the main process's probe set
        self.explored: dict = {}  # this round's exploration summary
        if resume is not None:
            self.restore(Path(resume))
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard")) if self.main else None

    # ---- the run directory: resume what belongs to this run, start afresh otherwise ----

    def identity(self) -> dict:
        config = {k: v for k, v in asdict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        prompts = hashlib.sha256(json.dumps([[p.id, p.text] for p in self.prompts]).encode()).hexdigest()
        return {"seed": self.seed, "task": self.task.name, "config": config, "prompts_sha256": prompts}

    def open_run(self) -> str | None:
        """Main process: open the pool, and name the checkpoint to resume from (None: start afresh); an unfinished
        run with other settings is refused in one line (`claim_run`, as every resumable method)."""
        resume = claim_run(self.out_dir, self.identity(), "Quark")
        pool_path = self.out_dir / "pool.sqlite"
        if not resume:
            self.checkpoints.clear()
            for stale in (pool_path, pool_path.with_name("pool.sqlite-wal"), pool_path.with_name("pool.sqlite-shm")):
                stale.unlink(missing_ok=True)
        self.pool = Pool(pool_path)
        latest = self.checkpoints.latest() if resume else None
        if latest is not None:
            self.checkpoints.check(latest)
        if resume:
            tqdm.write(f"{self.out_dir}: resuming from {latest or 'the start'} with {len(self.pool)} scored samples")
        return None if latest is None else str(latest)

    @property
    def global_step(self) -> int:
        return self.round * self.cfg.steps_per_round + self.step

    def save_checkpoint(self) -> None:
        if self.main:
            model = self.acc.unwrap_model(self.policy)
            tensors = {name: p for name, p in model.named_parameters() if p.requires_grad}
            rng_tensors, rng_plain = rng_state()
            objects = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_tensors,
            }
            state = {
                "round": self.round,
                "step": self.step,
                "kl_coef": self.kl_ctl.value,
                "stats": self.stats,
                "history": self.history,
                "explored": self.explored,
                "rng": rng_plain,
            }
            self.checkpoints.save(self.global_step, tensors, objects, state)
        self.acc.wait_for_everyone()

    def restore(self, path: Path) -> None:
        tensors, objects, state = self.checkpoints.load(path)
        model = self.acc.unwrap_model(self.policy)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(tensors) != trainable:
            raise SuiteError(
                f"{path}/weights.safetensors: its tensors do not match this model's trainable ones; "
                f"move {path.parent} away to start afresh"
            )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in tensors:
                    p.copy_(tensors[name])
        self.optimizer.load_state_dict(objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        set_rng_state(objects["rng"], state["rng"])
        self.kl_ctl.value = state["kl_coef"]
        self.round, self.step = state["round"], state["step"]
        self.stats, self.history, self.explored = state["stats"], state["history"], state["explored"]
        self.stats["resumed_from"].append(path.name)
        self.stats["processes"] = self.world

    # ---- the reward token, and the probe of what it has learned ----

    def condition(self, prompt_ids: list[int], k: int) -> list[int]:
        return place_token(prompt_ids, self.reward_ids[k], self.cfg.token_position)

    def probe_set(self) -> list[Sample]:
        """Main process: the probe's scored samples of p0 on the held-out prompts, drawn once and kept in the pool
        under round PROBE_ROUND (never trained on), so that a resumed run probes the same samples."""
        cfg = self.cfg
        chosen = [i for i in self.probe_idx for _ in range(cfg.probe_samples_per_prompt)]
        batches = [
            list(range(s, min(s + cfg.sample_batch_size, len(chosen))))
            for s in range(0, len(chosen), cfg.sample_batch_size)
        ]
        done = self.pool.explored_slots(PROBE_ROUND)
        with self.reference() as model:
            for b, slots in enumerate(tqdm(batches, desc="probe set", leave=False)):
                if not set(slots) <= done:
                    self.pool.add(self.sample_batch(model, PROBE_ROUND, b, slots, chosen))
        return self.pool.samples(PROBE_ROUND)

    def probe(self) -> dict[str, float]:
        """Main process: the controllability probe of the policy as it is now ({} without a probe set)."""
        if not self.probe_samples:
            return {}
        model = self.acc.unwrap_model(self.policy)
        with self.autocast():
            return controllability(
                model,
                self.probe_samples,
                self.condition,
                0,
                self.cfg.num_quantiles - 1,
                self.tokenizer.pad_token_id,
                self.vocab_size,
            )

    # ---- one round ----

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    @contextlib.contextmanager
    def reference(self):
        """p0: the frozen copy, or under LoRA the policy itself with its adapters (and new token rows) disabled."""
        if self.ref is not None:
            yield self.ref
            return
        model = self.acc.unwrap_model(self.policy)
        was_training = model.training
        model.eval()
        try:
            with model.disable_adapter():
                yield model
        finally:
            model.train(was_training)

    @contextlib.contextmanager
    def sampler(self, rnd: int):
        """The model exploration samples from: p0 at round 0, else the policy."""
        if rnd == 0:
            with self.reference() as model:
                yield model
        else:
            yield self.acc.unwrap_model(self.policy)

    def sample_batch(
        self, model: PreTrainedModel, rnd: int, batch: int, slots: list[int], chosen: list[int]
    ) -> list[Sample]:
        """Sample and score one exploration batch, from its own seed: the same draw whenever and wherever it runs."""
        suppress = None if rnd <= 0 and self.ref is not None else self.reward_ids  # the frozen p0 has no such rows
        sampling = replace(self.task.sampling, top_p=self.cfg.explore_top_p, batch_size=len(slots), do_sample=True)
        prompts = [chosen[i] for i in slots]
        prefixes = [self.prompt_ids[p] if rnd <= 0 else self.condition(self.prompt_ids[p], 0) for p in prompts]
        torch.manual_seed(derived_seed(self.seed, *((rnd, 0) if rnd >= 0 else (PROBE_ROUND_KEY,)), batch))
        with self.autocast():
            completions = sample(model, self.tokenizer, prefixes, sampling, suppress, desc=f"batch {batch}")
        texts, rewards = score_completions(
            self.task.reward,
            self.tokenizer,
            [self.prompts[p].text for p in prompts],
            completions,
            desc=f"round {rnd}: scoring",
        )
        return [
            Sample(self.prompts[p].id, self.prompt_ids[p], c, self.prompts[p].text, t, r, rnd, i)
            for i, p, c, t, r in zip(slots, prompts, completions, texts, rewards)
        ]

    def explore(self, rnd: int) -> list[float]:
        """Sample and score this round's batches not yet in the pool; returns the round's scored rewards (main)."""
        cfg = self.cfg
        m = len(self.explore_idx)
        n = m if cfg.prompts_per_round is None else min(cfg.prompts_per_round, m)
        chosen = np.random.default_rng([self.seed, rnd, 0]).choice(m, size=n, replace=False)
        chosen = [self.explore_idx[i] for i in chosen for _ in range(cfg.samples_per_prompt)]
        batches = [
            list(range(s, min(s + cfg.sample_batch_size, len(chosen))))
            for s in range(0, len(chosen), cfg.sample_batch_size)
        ]
        if self.main and cfg.clear_pool_each_round:
            self.pool.clear(before_round=rnd)
        done = broadcast_object_list([self.pool.explored_slots(rnd) if self.main else None])[0]
        todo = [b for b, slots in enumerate(batches) if not set(slots) <= done]
        started = time.perf_counter()
        self.policy.eval()
        # one wave = one batch per process; every process joins every wave's gather, even without a batch of its own
        for wave in tqdm(range(0, len(todo), self.world), desc=f"round {rnd}: exploring", **self.quiet):
            mine = todo[wave + self.rank] if wave + self.rank < len(todo) else None
            with self.sampler(rnd) as model:
                rows = [] if mine is None else self.sample_batch(model, rnd, mine, batches[mine], chosen)
            rows = gather_object(rows)
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
        quantiles = assign_quantiles(rewards, cfg.num_quantiles, [self.seed, rnd, 2])
        cuts = [
            float(rewards[quantiles == k].min()) if (quantiles == k).any() else None for k in range(cfg.num_quantiles)
        ]
        if self.main and self.step == 0:
            for k in range(cfg.num_quantiles):
                if (quantiles == k).any():
                    self.writer.add_scalar(f"reward/quantile_{k}", float(rewards[quantiles == k].mean()), rnd)
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
            prompts = [pool[i].prompt_ids for i in idx]
            completions = [pool[i].completion_ids for i in idx]
            conditioned = pack(
                [self.condition(p, quantiles[i]) for i, p in zip(idx, prompts)],
                completions,
                self.tokenizer.pad_token_id,
            )
            plain = pack(prompts, completions, self.tokenizer.pad_token_id)
            with self.autocast():
                logits = completion_logits(self.policy, conditioned)[..., : self.vocab_size]
                with torch.no_grad(), self.reference() as ref:
                    ref_logits = completion_logits(ref, plain)[..., : self.vocab_size]
            loss, stats = quark_loss(
                logits,
                ref_logits,
                conditioned.completion_ids,
                conditioned.completion_mask,
                self.kl_ctl.value,
                cfg.entropy_coef,
                self.unlikelihood(conditioned),
                cfg.unlikelihood_coef,
            )
            tokens = conditioned.completion_mask.sum().item()
            if self.world > 1:  # DDP averages the processes' gradients: weight each by its share of the tokens
                all_tokens = self.acc.reduce(torch.tensor(float(tokens), device=self.device), "sum").item()
                loss = loss * tokens * self.world / all_tokens
                stats = self.reduce_stats(stats, tokens, len(idx))
            self.optimizer.zero_grad(set_to_none=True)
            self.acc.backward(loss)
            if cfg.clip_grad:
                self.acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            with self.reward_rows_scaled():
                self.optimizer.step()
            self.scheduler.step()
            self.kl_ctl.update(stats["kl_per_sequence"], cfg.batch_size)
            self.history.append(stats)
            self.step = step + 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps_per_round:
                self.save_checkpoint()
        seconds = time.perf_counter() - started
        self.stats["train_seconds"] += seconds
        sequences = (cfg.steps_per_round - first_step) * cfg.batch_size
        self.stats["train_sequences"] += sequences
        summary = (
            {key: float(np.mean([h[key] for h in self.history])) for key in self.history[0]} if self.history else {}
        )
        summary["sequences_per_second"] = sequences / max(seconds, 1e-9)
        return summary, cuts

    @contextlib.contextmanager
    def reward_rows_scaled(self):
        """Around an optimizer step: the reward tokens' embedding rows move `reward_token_lr_scale` times as far as
        AdamW moved them. AdamW's step is invariant to the gradient's scale, so only a larger step does this."""
        scale = self.cfg.reward_token_lr_scale
        if scale == 1.0:
            yield
            return
        rows = self.acc.unwrap_model(self.policy).get_input_embeddings().weight
        before = rows[self.reward_ids].detach().clone()
        yield
        with torch.no_grad():
            rows[self.reward_ids] = before + scale * (rows[self.reward_ids] - before)

    def unlikelihood(self, conditioned: Packed) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The unlikelihood term for this batch (Quark + UL), None for plain Quark.

        The reward token sits in the prefix with an id >= V0, so it is never a token-level candidate.
        """
        cfg = self.cfg
        if not cfg.unlikelihood_coef:
            return None
        if cfg.unlikelihood_level == "token":
            return lambda logprobs: token_unlikelihood(logprobs, conditioned)
        candidates = ngram_candidates(conditioned, cfg.unlikelihood_ngram_n)
        return lambda logprobs: sequence_unlikelihood(logprobs, conditioned.completion_ids, candidates)

    def reduce_stats(self, stats: dict[str, float], tokens: int, sequences: int) -> dict[str, float]:
        """Per-token means and the per-sequence KL over the global batch, identical on every process."""
        per_token = [k for k in stats if k != "kl_per_sequence"]
        local = [stats[k] * tokens for k in per_token] + [stats["kl_per_sequence"] * sequences, tokens, sequences]
        total = self.acc.reduce(torch.tensor(local, dtype=torch.float64, device=self.device), "sum").tolist()
        n = len(per_token)
        out = {k: total[i] / max(total[n + 1], 1) for i, k in enumerate(per_token)}
        out["kl_per_sequence"] = total[n] / max(total[n + 2], 1)
        return out

    def run(self) -> Path:
        probing = self.main and self.cfg.probe_prompts > 0
        self.probe_samples = self.probe_set() if probing else []
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
            ends = gather_object([[rnd, self.global_step, cuts]])
            if any(end != ends[0] for end in ends):
                raise RuntimeError(f"round {rnd}: processes out of lock-step: {ends}")
            self.round, self.step = rnd + 1, 0
            if self.main:
                record = {
                    "round": rnd,
                    **self.explored,
                    "pool_size": len(self.pool),
                    "kl_coef": self.kl_ctl.value,
                    "dropped_unscored": self.stats["dropped_unscored"],
                    **summary,
                    **self.probe(),
                    "process_ends": ends,
                }
                self.stats.update({k: v for k, v in record.items() if k.startswith("probe_")})  # the latest
                self.stats["rounds"].append(record)
                for key, value in record.items():
                    if isinstance(value, float):
                        self.writer.add_scalar(f"quark/{key}", value, rnd)
                tqdm.write(
                    f"round {rnd}: "
                    + ", ".join(
                        f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, (int, float)) and k != "round"
                    )
                )
            self.history, self.explored = [], {}
            self.save_checkpoint()
        return self.save()

    def save(self) -> Path:
        """Write the model (merged, without PEFT, under LoRA) whole, the statistics, then retire the checkpoints."""
        model_dir = self.out_dir / "model"
        if self.main:
            model = self.acc.unwrap_model(self.policy)
            if self.cfg.lora is not None:
                model = model.merge_and_unload()
            tmp = self.out_dir / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                meta = {
                    "reward_tokens": reward_token_names(self.cfg.num_quantiles),
                    "reward_token_ids": self.reward_ids,
                    "best_quantile": 0,
                    "base_vocab_size": self.vocab_size,
                    "config": asdict(self.cfg),
                }
                write_json(tmp / META_FILE, meta)
                shutil.rmtree(model_dir, ignore_errors=True)
                tmp.rename(model_dir)
                s = self.stats
                s["explore_tokens_per_second"] = s["explore_tokens"] / max(s["explore_seconds"], 1e-9)
                s["train_sequences_per_second"] = s["train_sequences"] / max(s["train_seconds"], 1e-9)
                write_json(self.out_dir / "train_stats.json", s)
                finish_run(self.out_dir)
            except OSError as exc:
                raise SuiteError(f"could not write the model to {model_dir} ({exc.strerror or exc})") from None
            self.writer.close()
            self.pool.close()
            self.checkpoints.clear()
        self.acc.wait_for_everyone()
        return model_dir


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    set_seed(seed)
    cfg = from_dict_for_task(QuarkConfig, hparams, task.name, "methods/quark/method.yaml")
    if cfg.reward_token_lr_scale != 1.0 and cfg.lora is not None:
        raise SuiteError("methods/quark/method.yaml: reward_token_lr_scale works on full fine-tuning, not under lora")
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
    meta = read_meta(model_dir, META_FILE, "Quark")
    ids = meta["reward_token_ids"]
    k = {"best": meta["best_quantile"], "worst": len(ids) - 1}.get(quantile, quantile)
    if not isinstance(k, int) or not 0 <= k < len(ids):
        raise SuiteError(f"quantile must be 'best', 'worst' or 0..{len(ids) - 1}, got {quantile!r}")
    at_end = meta.get("config", {}).get("token_position", "start") == "end"  # models from before the option: start
    generate_jsonl(
        model,
        tokenizer,
        prompts,
        num_samples,
        sampling,
        out_path,
        seed,
        suppress_ids=ids,
        **{"suffix_ids" if at_end else "prefix_ids": [ids[k]]},
    )
