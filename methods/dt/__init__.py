"""Decision-Transformer-style return conditioning (Chen et al., NeurIPS 2021): the method contract's entry points."""

from methods.dt.dt import generate, train

__all__ = ["train", "generate"]
