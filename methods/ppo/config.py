"""PPO's hyperparameters: Ziegler et al.'s (2019) values as defaults; methods/ppo/method.yaml holds the profiles."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import SuiteError

SOURCE = "methods/ppo/method.yaml"


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

    def __post_init__(self):
        positive = ["num_rounds", "samples_per_prompt", "minibatch_size", "micro_batch_size", "ppo_epochs"]
        positive += ["sample_batch_size", "forward_batch_size", "keep_checkpoints"]
        for name in positive:
            if getattr(self, name) < 1:
                raise SuiteError(f"{SOURCE}: {name} must be at least 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise SuiteError(f"{SOURCE}: checkpoint_every must be at least 1 or null, got {self.checkpoint_every}")
