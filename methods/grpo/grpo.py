"""GRPO (Shao et al. 2024) through TRL's `GRPOTrainer`: the online trainer a user would pick today instead of Quark.

for step = 1 .. scored_samples / batch_size:
    sample     G completions for each of batch_size / G train prompts, with the current policy (top-p 1.0)
    score      reward each completion with the task's reward (None: left out of the loss and counted)
    advantage  A_i = (r_i - mean of its group) / std of its group
    learn      one AdamW step on the clipped surrogate -min(rho * A, clip(rho, 1 +- eps) * A)
               + beta * KL_k3(pi || p0), averaged over every completion token of the batch (TRL's "dapo")

TRL runs the loop; this file maps the suite's method contract onto it: the task's reward as `reward_funcs`,
prompts cut from the left, the scored-sample budget as `max_steps`, and a `train_stats.json` from TRL's log history.

The job is resumable through TRL's own checkpoints (`save_steps`, `save_total_limit`): a restarted job with the same
settings (`run.json`, methods/common/checkpoint.py) passes the newest complete `checkpoint-*` to
`trainer.train(resume_from_checkpoint=...)`, which restores weights, AdamW, the schedule and the RNG states.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import trl
from datasets import Dataset
from packaging.version import Version
from torch.utils.tensorboard import SummaryWriter
from transformers import set_seed
from transformers.integrations import TensorBoardCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

from core.config import from_dict
from core.data import atomic_output, write_json
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, sample
from core.speed import flash_attention
from methods.common.checkpoint import claim_run, finish_run
from methods.common.rewards import Reward, score_rewards
from methods.common.task import Task
from methods.common.trainer import run_identity

SOURCE = "methods/grpo/method.yaml"
MIN_TRL = "1.16"  # the TRL this was written and tested against; SuiteGRPOTrainer overrides its private hooks
COUNTS_FILE = "suite_counts.json"  # in each TRL checkpoint: the reward's counts and the seconds so far


@dataclass
class GRPOHparams:
    scored_samples: int = field(
        default=2400, metadata={"help": "completions sampled and scored in all: the budget shared with Quark"}
    )
    batch_size: int = field(
        default=16, metadata={"help": "completions per optimizer step (batch_size / num_generations prompts)"}
    )
    num_generations: int = field(
        default=8, metadata={"help": "G, completions per prompt; advantages are normalised within each group"}
    )
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "completions per forward/backward pass (gradient accumulation; None: all)"}
    )
    lr: float = field(default=1e-6, metadata={"help": "AdamW peak learning rate (TRL's default)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm bound (TRL's default)"})
    beta: float = field(
        default=0.04,
        metadata={"help": "weight of the per-token k3 estimate of the KL from the policy to p0; 0 drops p0"},
    )
    epsilon: float = field(default=0.2, metadata={"help": "clipping range of the importance ratio"})
    num_iterations: int = field(default=1, metadata={"help": "mu, optimisation passes over each generated batch"})
    loss_type: str = field(default="dapo", metadata={"help": "TRL's token aggregation of the loss (TRL's default)"})
    scale_rewards: str = field(
        default="group", metadata={"help": "divide advantages by the group's ('group'), batch's or no ('none') std"}
    )
    explore_top_p: float = field(default=1.0, metadata={"help": "nucleus top-p while sampling (Quark explores at 1.0)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    max_prompt_tokens: int = field(default=64, metadata={"help": "prompts are cut from the left to this length"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (fast on CPUs with AVX-512 BF16)"})
    logging_steps: int = field(default=1, metadata={"help": "optimizer steps between two log records"})
    save_steps: int | None = field(
        default=10,
        metadata={
            "help": "checkpoint every N optimizer steps (TRL's save_steps), to resume from after a crash (None: never)"
        },
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "newest checkpoints kept while training (TRL's save_total_limit)"}
    )

    def __post_init__(self):
        micro = self.micro_batch_size or self.batch_size
        if self.batch_size % self.num_generations or self.batch_size % micro:
            raise SuiteError(
                f"{SOURCE}: batch_size {self.batch_size} must be a multiple of num_generations "
                f"({self.num_generations}) and of micro_batch_size ({micro})"
            )
        if self.scored_samples % self.batch_size or self.scored_samples < self.batch_size:
            raise SuiteError(
                f"{SOURCE}: scored_samples {self.scored_samples} must be a positive multiple of "
                f"batch_size {self.batch_size}"
            )
        bad_save = self.save_steps is not None and (self.save_steps < 1 or self.save_steps % self.num_iterations)
        if self.keep_checkpoints < 1 or bad_save:
            raise SuiteError(
                f"{SOURCE}: keep_checkpoints must be at least 1 and save_steps a positive multiple of "
                f"num_iterations ({self.num_iterations}), so that a checkpoint falls where TRL "
                f"samples afresh"
            )

    @property
    def max_steps(self) -> int:
        """Optimizer steps: each generated batch is optimised on num_iterations times before the next is sampled."""
        return self.scored_samples // self.batch_size * self.num_iterations


class RewardFunc:
    """The task's reward as one of TRL's `reward_funcs`, validated by `score_rewards`; counts what it scores.

    TRL passes prompts, decoded completions and the sampled `completion_ids` (plus its own keyword arguments, not
    forwarded: the suite's rewards take `completion_ids` only). `last_unscored` marks the None answers of the latest
    call, in the order of the generation batch, for `SuiteGRPOTrainer` to take out of the loss.
    """

    def __init__(self, reward: Reward):
        self.reward = reward
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)
        self.scored = self.unscored = 0
        self.last_unscored: list[bool] = []

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kwargs):
        values = score_rewards(self.reward, prompts, completions, completion_ids=completion_ids)
        self.last_unscored = [v is None for v in values]
        self.unscored += sum(self.last_unscored)
        self.scored += len(values) - sum(self.last_unscored)
        return values


class EpochSampler(RepeatSampler):
    """TRL's prompt sampler with each epoch's shuffle drawn from (seed, epoch) alone.

    TRL's draws every epoch's order from one generator that checkpoints do not hold, and transformers 5 does not
    replay earlier epochs on resume: a job resumed in epoch e would walk epoch 0's order again.
    """

    def set_epoch(self, epoch: int) -> None:  # the trainer calls it through the data loader before every epoch
        if self.shuffle:
            self.generator.manual_seed(int(np.random.SeedSequence([self.seed or 0, epoch]).generate_state(1)[0]))


class SuiteGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with these changes, all on private hooks of TRL 1.x:

    - prompts are token ids cut from the left to `max_prompt_tokens` (TRL 1.x no longer truncates prompts);
    - completions whose reward is None are taken out of the loss. TRL itself leaves them out of the group mean and
      std and sets their advantage to 0, but keeps their tokens in the KL term and in the loss's token count;
    - each checkpoint also holds the reward's counts, so that a resumed job reports the whole run's, and prompts
      come in an order that depends on (seed, epoch) alone, so that a resumed job draws what an uninterrupted one
      would;
    - completions are drawn by the suite's sampler (`core/sampling.py: sample`: the distribution generate() draws
      from, with the same temperature, top-p and minimum length, at twice its speed or more: workflow/scripts/bench.py)
      on SDPA's flash kernel, while learning runs on the math backend `core/speed.py` sets for the job. Settings the
      sampler does not take (several EOS ids, top-k, min-p, a repetition penalty, suppressed tokens), vLLM, and
      sharded models keep TRL's generate(); so does `suite_sampler = False` (the bench's "before").
    """

    suite_sampler = True

    def __init__(self, *args, reward: RewardFunc, prompt_ids: dict[str, list[int]], **kwargs):
        super().__init__(*args, reward_funcs=[reward], **kwargs)
        self.suite_reward, self.prompt_ids = reward, prompt_ids
        self.seconds_before, self.resumed_from = 0.0, []  # of the runs this one resumes; their checkpoints

    def _get_train_sampler(self, dataset=None) -> EpochSampler:
        s = super()._get_train_sampler(dataset)
        return EpochSampler(s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle, s.seed)

    def _tokenize_prompts(self, prompts: list[str]):
        return [self.prompt_ids[p] for p in prompts], None, {}

    def _generate(self, prompts: list):
        with flash_attention():  # decoding on SDPA's flash kernel, learning on its math backend (core/speed.py)
            return super()._generate(prompts)

    def sampling(self) -> Sampling | None:
        """TRL's generation settings as the suite sampler's, or None where it cannot draw what generate() would."""
        g = self.generation_config
        plain = (
            self.suite_sampler
            and self.eos_token_ids == [self._tokenizer.eos_token_id]
            and not (g.top_k or g.min_p or g.suppress_tokens or g.begin_suppress_tokens)
            and g.repetition_penalty in (None, 1.0)
            and not (self.use_vllm or self.use_transformers_continuous_batching)
            and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        )
        if not plain:
            return None
        return Sampling(
            max_new_tokens=g.max_new_tokens,
            top_p=1.0 if g.top_p is None else g.top_p,
            min_new_tokens=g.min_new_tokens or 0,
            temperature=g.temperature,
        )

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """The completion ids of `prompt_ids` (each cut after its first EOS, kept), as TRL's plain generate() path
        returns them, with no log-probabilities (TRL computes them itself)."""
        sampling = self.sampling()
        if sampling is None or images or multimodal_fields:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        model = self.accelerator.unwrap_model(self.model_wrapped)
        batch = replace(sampling, batch_size=len(prompt_ids))
        # bf16 autocast where the trainer learns in it (accelerate's wraps the forward only once train() prepares the
        # model), so that the sampler's cache is allocated in bf16 (core/sampling.py: kv_cache)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            return sample(model, self._tokenizer, prompt_ids, batch, desc="GRPO sampling"), None

    def train(self, *args, **kwargs):
        self.started = time.perf_counter()
        result = super().train(*args, **kwargs)
        self.train_seconds = self.seconds_before + time.perf_counter() - self.started  # sampling, scoring, learning
        return result

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, with the reward's counts written first: trainer_state.json, last, marks it complete."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        counts = {
            "scored": self.suite_reward.scored,
            "unscored": self.suite_reward.unscored,
            "train_seconds": self.seconds_before + time.perf_counter() - self.started,
            "resumed_from": self.resumed_from,
        }
        write_json(folder / COUNTS_FILE, counts)
        super()._save_checkpoint(model, trial)

    def restore_counts(self, checkpoint: Path) -> None:
        counts = json.loads((checkpoint / COUNTS_FILE).read_text())
        self.suite_reward.scored, self.suite_reward.unscored = counts["scored"], counts["unscored"]
        self.seconds_before = counts["train_seconds"]
        self.resumed_from = [*counts["resumed_from"], checkpoint.name]

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        unscored = torch.tensor(self.suite_reward.last_unscored, dtype=torch.bool, device=out["completion_mask"].device)
        if unscored.any():
            out["completion_mask"] = out["completion_mask"] * (~unscored).unsqueeze(1).int()
            out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum()
        return out


def trl_config(cfg: GRPOHparams, task: Task, out_dir: Path, seed: int, device: str) -> GRPOConfig:
    """TRL's config for one run: the budget as max_steps, everything written under `out_dir`, nothing reported."""
    micro = cfg.micro_batch_size or cfg.batch_size
    return GRPOConfig(
        output_dir=str(out_dir / "trl"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.batch_size // micro,
        num_generations=cfg.num_generations,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        optim="adamw_torch_fused",  # core/speed.py: one kernel, not a dozen passes per parameter
        max_grad_norm=cfg.max_grad_norm,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        max_completion_length=task.sampling.max_new_tokens,
        generation_kwargs={"min_new_tokens": task.sampling.min_new_tokens} if task.sampling.min_new_tokens else None,
        temperature=cfg.temperature,
        top_p=cfg.explore_top_p,
        top_k=0,
        bf16=cfg.bf16,
        use_cpu=device == "cpu",
        gradient_checkpointing=False,  # TRL turns it on by default; these models fit without it, and it costs time
        logging_steps=cfg.logging_steps,
        report_to="none",  # build_trainer adds TensorBoard with a writer inside out_dir
        save_strategy="no" if cfg.save_steps is None else "steps",
        save_steps=cfg.save_steps or 500,  # TRL's default where save_strategy is "no": unused
        save_total_limit=cfg.keep_checkpoints,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=os.environ.get("TQDM_DISABLE") == "1",
    )


def train_stats(trainer: SuiteGRPOTrainer, cfg: GRPOHparams, reward: RewardFunc) -> dict:
    """Reward, KL, entropy and lengths per logging step from TRL's log history, and the run's throughput."""
    keys = {
        "reward": "reward",
        "reward_std": "reward_std",
        "kl": "kl",
        "entropy": "entropy",
        "loss": "loss",
        "completion_length": "completions/mean_length",
        "frac_reward_zero_std": "frac_reward_zero_std",
    }
    steps = [
        {"step": rec["step"], **{k: rec[v] for k, v in keys.items() if v in rec}}
        for rec in trainer.state.log_history
        if "reward" in rec
    ]
    sampled, seconds = reward.scored + reward.unscored, trainer.train_seconds
    return {
        "scored_samples": sampled,  # completions sent to the reward: the budget
        "dropped_unscored": reward.unscored,  # of those, the reward returned None: left out of the loss
        "optimizer_steps": trainer.state.global_step,
        "resumed_from": trainer.resumed_from,  # the checkpoints the restarts resumed from, oldest first
        "beta": cfg.beta,
        "train_seconds": seconds,
        "sequences_per_second": sampled / max(seconds, 1e-9),
        "steps": steps,
        "config": asdict(cfg),
    }


def build_trainer(
    task: Task, base_model: Path, out_dir: Path, cfg: GRPOHparams, *, seed: int, device: str
) -> tuple[SuiteGRPOTrainer, RewardFunc]:
    """TRL's trainer on the base model, the task's prompts and its reward; TensorBoard logs in out_dir/tensorboard."""
    if Version(trl.__version__) < Version(MIN_TRL):
        raise SuiteError(f"methods/grpo needs trl>={MIN_TRL}, found {trl.__version__}: pip install 'trl>={MIN_TRL}'")
    per_step = cfg.batch_size // cfg.num_generations
    if len(task.train_prompts) < per_step:
        raise SuiteError(
            f"{SOURCE}: a step needs {per_step} prompts (batch_size / num_generations) but task "
            f"'{task.name}' has {len(task.train_prompts)} train prompts"
        )
    set_seed(seed)
    model, tokenizer = load_model(base_model, device)
    texts = [p.text for p in task.train_prompts]
    prompt_ids = dict(zip(texts, encode_prompts(tokenizer, texts, cfg.max_prompt_tokens)))
    reward = RewardFunc(task.reward)
    trainer = SuiteGRPOTrainer(
        model=model,
        reward=reward,
        prompt_ids=prompt_ids,
        args=trl_config(cfg, task, out_dir, seed, device),
        train_dataset=Dataset.from_dict({"prompt": texts}),
        processing_class=tokenizer,
        callbacks=[TensorBoardCallback(tb_writer=SummaryWriter(str(out_dir / "tensorboard")))],
    )
    return trainer, reward


def latest_checkpoint(trl_dir: Path) -> Path | None:
    """The newest complete TRL checkpoint (trainer_state.json is written last), after removing incomplete ones."""
    found = sorted(
        (p for p in trl_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
        key=lambda p: int(p.name.split("-")[1]),
    )
    complete = [p for p in found if (p / "trainer_state.json").is_file() and (p / COUNTS_FILE).is_file()]
    for partial in set(found) - set(complete):
        shutil.rmtree(partial, ignore_errors=True)
    return complete[-1] if complete else None


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Run GRPO for the profile's scored-sample budget; write out_dir/model (plain transformers) and train_stats.json.

    An unfinished run of the same settings in out_dir resumes from its newest complete TRL checkpoint.
    """
    cfg = from_dict(GRPOHparams, hparams, SOURCE)
    out_dir, trl_dir = Path(out_dir), Path(out_dir) / "trl"
    resume = claim_run(out_dir, run_identity(cfg, task, seed), "GRPO")
    checkpoint = latest_checkpoint(trl_dir) if resume else None
    if not resume:
        shutil.rmtree(trl_dir, ignore_errors=True)
    trainer, reward = build_trainer(task, base_model, out_dir, cfg, seed=seed, device=device)
    if resume:
        print(f"{out_dir}: resuming from {checkpoint or 'the start'}", flush=True)
    if checkpoint is not None:
        trainer.restore_counts(checkpoint)
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    if reward.scored == 0:
        raise SuiteError(f"reward '{reward.__name__}' returned None for every one of {reward.unscored} samples")
    model_dir = out_dir / "model"
    with atomic_output(model_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
    write_json(out_dir / "train_stats.json", train_stats(trainer, cfg, reward))
    finish_run(out_dir)
    for done in trl_dir.glob("checkpoint-*"):
        shutil.rmtree(done, ignore_errors=True)
    return model_dir
