"""Plain fine-tuning on the task's corpus: the method contract's two entry points (sampling is the base row's)."""

from methods.base import generate
from methods.finetune.finetune import train

__all__ = ["train", "generate"]
