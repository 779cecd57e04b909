"""Quark's hyperparameters: the reference code's values as defaults; methods/quark/method.yaml holds the profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import SuiteError

SOURCE = "methods/quark/method.yaml"


@dataclass
class QuarkConfig:
    num_quantiles: int = field(default=5, metadata={"help": "K, the number of reward quantiles and reward tokens"})
    num_rounds: int = field(default=6, metadata={"help": "exploration rounds (the reference samples every 500 steps)"})
    steps_per_round: int = field(default=500, metadata={"help": "gradient steps between two explorations"})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "train prompts explored each round (None: all)"}
    )
    samples_per_prompt: int = field(default=1, metadata={"help": "completions sampled per prompt per round"})
    quantile_scope: Literal["pool", "prompt"] = field(
        default="pool",
        metadata={
            "help": "'pool': reward quantiles over the whole pool (the paper); 'prompt': ranks within each prompt's "
            "own samples, so the token says which of a prompt's completions was better (needs samples_per_prompt > 1)"
        },
    )
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

    def __post_init__(self):
        if self.quantile_scope == "prompt" and self.samples_per_prompt < 2:
            raise SuiteError(f"{SOURCE}: quantile_scope 'prompt' ranks a prompt's own samples: samples_per_prompt >= 2")
        if self.reward_token_lr_scale != 1.0 and self.lora is not None:
            raise SuiteError(f"{SOURCE}: reward_token_lr_scale works on full fine-tuning, not under lora")
