"""PPO with a KL penalty (Ziegler et al. 2019): the method contract's two entry points.

The trained policy is a plain causal LM, so it is sampled exactly as the base model is (greedy when the evaluation
asks for it).
"""

from methods.base import generate
from methods.ppo.ppo import train

__all__ = ["train", "generate"]
