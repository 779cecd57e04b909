"""ACF (Meng et al., Findings of EMNLP 2024): the method contract's two entry points (sampling is the base row's).

`train` runs every round in one process; the DAG runs the rounds as concurrent jobs instead (methods/acf/rules.smk).
"""

from methods.acf.acf import train
from methods.base import generate

__all__ = ["train", "generate"]
