"""Unlikelihood training (Welleck et al., ICLR 2020): the method contract's two entry points.

The fine-tuned model needs nothing at decoding time, so generation is the base method's: plain sampling, or greedy
decoding where the evaluation asks for it.
"""

from methods.base import generate
from methods.unlikelihood.unlikelihood import train

__all__ = ["train", "generate"]
