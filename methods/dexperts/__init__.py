"""DExperts (Liu et al., ACL 2021): the method contract's two entry points."""

from methods.dexperts.dexperts import generate, train

__all__ = ["train", "generate"]
