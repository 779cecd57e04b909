"""Quark (Lu et al., NeurIPS 2022): the method contract's two entry points."""

from methods.quark.generation import generate
from methods.quark.quark import train

__all__ = ["train", "generate"]
