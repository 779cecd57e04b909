"""Quark (Lu et al., NeurIPS 2022): the method contract's two entry points."""

from methods.quark.quark import generate, train

__all__ = ["train", "generate"]
