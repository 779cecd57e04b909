"""NADO decoding (Meng et al., NeurIPS 2022): the method contract's two entry points."""

from methods.nado.nado import generate, train

__all__ = ["train", "generate"]
