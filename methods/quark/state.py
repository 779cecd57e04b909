"""What a Quark run holds: the policy and p0, the reward tokens, the pool, the probe set and the checkpoints.

methods/quark/quark.py runs the algorithm on it. Under `accelerate launch` (or torchrun) each process explores its
share of a round's batches and scores its own samples; the main process commits them to the pool, every process
trains on the same pool through DDP, and the global batch is split across processes (methods/common/distributed.py).
Every draw is derived from (seed, round, batch), so a resumed CPU job ends bitwise where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import sample
from core.speed import adamw, autocast_weights
from methods.common.base_samples import base_samples, explore_settings, split_prompts
from methods.common.checkpoint import Checkpoints
from methods.common.distributed import accelerator
from methods.common.kl import KLController
from methods.common.lora import adapters_disabled, add_lora
from methods.common.probe import controllability
from methods.common.rollout import score_completions
from methods.common.task import Task
from methods.common.tokens import add_control_tokens
from methods.common.trainer import Resumable, run_identity
from methods.quark.config import SOURCE, QuarkConfig
from methods.quark.pool import PROBE_ROUND, Pool, Sample

META_FILE = "quark.json"


def reward_token_names(k: int) -> list[str]:
    return [f"<|quark_{i}|>" for i in range(k)]


def add_reward_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, k: int) -> list[int]:
    """K reward tokens, r_0 the best quantile, as control tokens with distinct embedding rows."""
    return add_control_tokens(model, tokenizer, reward_token_names(k))


def place_token(prompt_ids: list[int], token_id: int, position: str) -> list[int]:
    """The conditioned prefix: the reward token before the prompt ('start') or right after it ('end')."""
    return [token_id, *prompt_ids] if position == "start" else [*prompt_ids, token_id]


def derived_seed(seed: int, *keys: int) -> int:
    """An independent seed per (seed, round, batch, ...): a resumed job draws exactly what it would have drawn."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


class QuarkState(Resumable):
    """The models, the pool, the probe set and the checkpoints of one run; `Trainer` adds the rounds."""

    method, resumed = "Quark", ("round", "step", "stats", "history", "explored")

    def __init__(self, task: Task, base_model: Path, out_dir: Path, cfg: QuarkConfig, seed: int, device: str):
        self.task, self.cfg, self.seed, self.out_dir = task, cfg, seed, Path(out_dir)
        self.acc = accelerator(device, "Quark")
        self.rank, self.world, self.main = self.acc.process_index, self.acc.num_processes, self.acc.is_main_process
        if cfg.batch_size < self.world:
            raise SuiteError(f"batch_size {cfg.batch_size} is smaller than the {self.world} processes sharing it")
        self.device = self.acc.device if self.world > 1 else torch.device(device)
        self.quiet = {} if self.main else {"disable": True}  # progress bars from the main process only
        self.prompts = task.train_prompts
        self.probe_idx, rest = split_prompts(len(self.prompts), cfg.probe_prompts, seed)  # never explored
        self.explore_idx = sorted(rest)
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", "quark", cfg.keep_checkpoints)
        self.pool: Pool | None = None  # the main process's; the others receive its samples
        resume = self.open_pool() if self.main else None
        resume = broadcast_object_list([resume])[0]

        policy, self.tokenizer = load_model(base_model, self.device)
        self.vocab_size = policy.get_input_embeddings().num_embeddings  # V0, the original vocabulary
        self.reward_ids = add_reward_tokens(policy, self.tokenizer, cfg.num_quantiles)
        if cfg.lora is not None:  # p0 = the policy without its adapters
            policy, self.ref = add_lora(policy, cfg.lora, self.reward_ids, SOURCE), None
        else:
            self.ref = load_model(base_model, self.device)[0].requires_grad_(False)
            if cfg.bf16:  # p0 runs only under autocast: its weights cast once, not at every forward (core/speed.py)
                autocast_weights(self.ref)
        self.prompt_ids = encode_prompts(self.tokenizer, [p.text for p in self.prompts], cfg.max_prompt_tokens)
        total_steps = cfg.num_rounds * cfg.steps_per_round
        optimizer = adamw([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, min(cfg.warmup_steps, total_steps), total_steps
        )
        self.kl_ctl = KLController(cfg.kl_coef, cfg.target_kl if cfg.adaptive_kl else None, cfg.horizon)
        self.stats = {"dropped_unscored": 0, "explore_tokens": 0, "explore_seconds": 0.0, "train_sequences": 0}
        self.stats |= {"train_seconds": 0.0, "processes": self.world, "resumed_from": [], "rounds": []}
        self.round, self.step = 0, 0  # the next round, and the steps of it already taken
        self.history: list[dict] = []  # this round's step statistics
        self.explored: dict = {}  # this round's exploration summary
        self.probe_samples: list[Sample] = []  # the main process's probe set
        self.base: tuple | None = None  # the main process's base samples: (round 0's, the probe set's, their source)
        if resume is not None:
            self.restore(Path(resume))
            self.stats["processes"] = self.world
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard")) if self.main else None

    def open_pool(self) -> str | None:
        """Main process: claim the run directory (`Resumable.open_run`), keep the pool of a run being resumed or
        start an empty one, and name the checkpoint to resume from."""
        latest = self.open_run(run_identity(self.cfg, self.task, self.seed))
        path = self.out_dir / "pool.sqlite"
        if not self.resuming:
            for stale in (path, path.with_name("pool.sqlite-wal"), path.with_name("pool.sqlite-shm")):
                stale.unlink(missing_ok=True)
        self.pool = Pool(path)
        if self.resuming:
            tqdm.write(f"{self.out_dir}: the pool holds {len(self.pool)} scored samples")
        return None if latest is None else str(latest)

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.acc.unwrap_model(self.policy).named_parameters() if p.requires_grad}

    def checkpoint(self) -> None:
        if self.main:
            self.save_checkpoint(self.round * self.cfg.steps_per_round + self.step)
        self.acc.wait_for_everyone()

    # ---- the models: p0, the sampler, the reward token's place ----

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    @contextlib.contextmanager
    def reference(self):
        """p0: the frozen copy, or under LoRA the policy itself with its adapters (and new token rows) disabled."""
        if self.ref is not None:
            yield self.ref
        else:
            with adapters_disabled(self.acc.unwrap_model(self.policy)) as model:
                yield model

    def condition(self, prompt_ids: list[int], k: int) -> list[int]:
        return place_token(prompt_ids, self.reward_ids[k], self.cfg.token_position)

    def base_samples(self, kind: int) -> list[Sample]:
        """Main process: p0's scored samples, round 0's (kind 0) or the probe set's (PROBE_ROUND), from the task's
        shared base samples (methods/common/base_samples.py) or drawn here."""
        cfg = self.cfg
        if self.base is None:
            m = len(self.explore_idx)
            n = m if cfg.prompts_per_round is None else min(cfg.prompts_per_round, m)
            with self.reference() as model:
                self.base = base_samples(
                    self.task,
                    model,
                    self.tokenizer,
                    n * cfg.samples_per_prompt,
                    cfg.samples_per_prompt,
                    self.seed,
                    "round 0: base samples",
                    None if self.ref is not None else self.reward_ids,  # p0 under LoRA has their rows
                    **explore_settings(cfg),
                )
            self.stats["base_samples"] = self.base[2]["base_samples"]
        rows = self.base[0] if kind == 0 else self.base[1]
        return [
            Sample(
                r["prompt_id"], r["prompt_ids"], r["completion_ids"], r["prompt"], r["text"], r["reward"], kind, slot
            )
            for slot, r in enumerate(rows)
        ]

    def sample_batch(self, rnd: int, batch: int, slots: list[int], chosen: list[int]) -> list[Sample]:
        """Sample and score one exploration batch of round `rnd` >= 1 from the policy given the best token, from
        the batch's own seed: the same draw whenever and wherever it runs."""
        sampling = replace(self.task.sampling, top_p=self.cfg.explore_top_p, batch_size=len(slots), do_sample=True)
        prompts = [chosen[i] for i in slots]
        prefixes = [self.condition(self.prompt_ids[p], 0) for p in prompts]
        torch.manual_seed(derived_seed(self.seed, rnd, 0, batch))
        model = self.acc.unwrap_model(self.policy)
        with self.autocast():
            completions = sample(model, self.tokenizer, prefixes, sampling, self.reward_ids, desc=f"batch {batch}")
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

    def batches(self, chosen: list[int]) -> list[list[int]]:
        size = self.cfg.sample_batch_size
        return [list(range(s, min(s + size, len(chosen)))) for s in range(0, len(chosen), size)]

    # ---- the probe of what the reward token has learned ----

    def probe_set(self) -> list[Sample]:
        """Main process: scored samples of p0 on the probe split, kept in the pool under round PROBE_ROUND (never
        trained on), so that a resumed run probes the same samples."""
        if not self.pool.explored_slots(PROBE_ROUND):
            self.pool.add(self.base_samples(PROBE_ROUND))
        return self.pool.samples(PROBE_ROUND)

    def probe(self) -> dict[str, float]:
        """Main process: the controllability probe of the policy as it is now ({} without a probe set)."""
        if not self.probe_samples:
            return {}
        model, pad, worst = self.acc.unwrap_model(self.policy), self.tokenizer.pad_token_id, self.cfg.num_quantiles - 1
        with self.autocast():
            return controllability(model, self.probe_samples, self.condition, 0, worst, pad, self.vocab_size)

    def save(self) -> Path:
        """Write the model (merged, without PEFT, under LoRA) whole, the statistics, then retire the checkpoints."""
        model_dir = self.out_dir / "model"
        if self.main:
            model = self.acc.unwrap_model(self.policy)
            meta = {"reward_tokens": reward_token_names(self.cfg.num_quantiles), "reward_token_ids": self.reward_ids}
            meta |= {"best_quantile": 0, "base_vocab_size": self.vocab_size, "config": asdict(self.cfg)}
            self.save_model(
                model if self.cfg.lora is None else model.merge_and_unload(), self.tokenizer, META_FILE, meta
            )
            self.writer.close()
            self.pool.close()
            self.checkpoints.clear()
        self.acc.wait_for_everyone()
        return model_dir
