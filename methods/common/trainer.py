"""What a resumable trainer does around its algorithm: claim the run directory, checkpoint, restore, save the model.

Quark's and PPO's `Trainer` subclass `Resumable` and name what a checkpoint holds beyond the trainable tensors, the
optimizer, the schedule and the RNG states: `resumed`, the attributes written to its state.json (and `kl_coef`, the
KL controller's value). A restarted job with the same settings resumes from the newest complete checkpoint; one with
other settings is refused in one line (`claim_run`). GRPO resumes through TRL's checkpoints and uses `run_identity`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.data import atomic_output, write_json
from core.errors import SuiteError
from methods.common.checkpoint import claim_run, finish_run, rng_state, set_rng_state
from methods.common.task import Task

RESUMABLE_CHANGES = ("checkpoint_every", "save_steps", "keep_checkpoints")  # may change between a crash and restart


def run_identity(cfg, task: Task, seed: int) -> dict:
    """What a run directory's checkpoints belong to: every setting but how often they are written and kept."""
    config = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    prompts = hashlib.sha256(json.dumps([[p.id, p.text] for p in task.train_prompts]).encode()).hexdigest()
    shared = {} if task.base_samples is None else {"base_samples_sha256": task.base_samples.digest}
    return {"seed": seed, "task": task.name, "config": config, "prompts_sha256": prompts, **shared}


def with_rates(stats: dict) -> dict:
    """The statistics with exploration tokens/s and training sequences/s over the whole job."""
    return {
        **stats,
        "explore_tokens_per_second": stats["explore_tokens"] / max(stats["explore_seconds"], 1e-9),
        "train_sequences_per_second": stats["train_sequences"] / max(stats["train_seconds"], 1e-9),
    }


class Resumable:
    """Set `method`, `resumed`, `out_dir`, `checkpoints`, `optimizer`, `scheduler`, `kl_ctl` and `stats`; define
    `trainable()`. Then `open_run` before the models load, `restore` after, `save_checkpoint` at resumable points and
    `save_model` at the end."""

    method: str  # as errors name it: "Quark", "PPO"
    resumed: tuple[str, ...]  # the attributes a checkpoint's state.json keeps

    def trainable(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def open_run(self, identity: dict) -> Path | None:
        """The checkpoint to resume from (None: none); `self.resuming` says whether the directory holds an unfinished
        run of these settings. One with other settings is an error, before anything is written."""
        self.resuming = claim_run(self.out_dir, identity, self.method)
        for stale in self.out_dir.glob("*.tmp*"):  # a save cut short
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        if not self.resuming:
            self.checkpoints.clear()
            return None
        latest = self.checkpoints.latest()
        if latest is not None:
            self.checkpoints.check(latest)
        tqdm.write(f"{self.out_dir}: resuming from {latest or 'the start'}")
        return latest

    def save_checkpoint(self, step: int) -> None:
        rng_tensors, rng_plain = rng_state()
        objects = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_tensors,
        }
        state = {**{k: getattr(self, k) for k in self.resumed}, "kl_coef": self.kl_ctl.value, "rng": rng_plain}
        self.checkpoints.save(step, self.trainable(), objects, state)

    def restore(self, path: Path) -> None:
        tensors, objects, state = self.checkpoints.load(path)
        params = self.trainable()
        if set(tensors) != set(params):
            raise SuiteError(
                f"{path}/weights.safetensors: its tensors do not match this model's trainable ones; "
                f"move {self.out_dir} away to start afresh"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[name])
        self.optimizer.load_state_dict(objects["optimizer"])
        self.scheduler.load_state_dict(objects["scheduler"])
        set_rng_state(objects["rng"], state["rng"])
        self.kl_ctl.value = state["kl_coef"]
        for key in self.resumed:
            setattr(self, key, state[key])
        self.stats["resumed_from"].append(path.name)

    def save_model(self, model, tokenizer, meta_file: str, meta: dict) -> Path:
        """Write the model whole with its metadata, then train_stats.json, and mark the run finished."""
        model_dir = self.out_dir / "model"
        try:
            with atomic_output(model_dir) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                write_json(tmp / meta_file, meta)
            write_json(self.out_dir / "train_stats.json", with_rates(self.stats))
            finish_run(self.out_dir)
        except OSError as exc:
            raise SuiteError(f"could not write the model to {model_dir} ({exc.strerror or exc})") from None
        return model_dir
