"""GRPO through TRL's GRPOTrainer: the method contract's two entry points.

The trained model is a plain transformers model, so it is sampled exactly as the base model is (greedy when
`sampling.do_sample` is False).
"""

from methods.base import generate
from methods.grpo.grpo import train

__all__ = ["train", "generate"]
