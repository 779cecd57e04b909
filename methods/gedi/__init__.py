"""GeDi (Krause et al., Findings of EMNLP 2021): the method contract's two entry points."""

from methods.gedi.gedi import generate, train

__all__ = ["train", "generate"]
