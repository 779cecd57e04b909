"""What every script a rule runs shares: threads, the prompt reader and the one-line error wrapper."""

from __future__ import annotations

import os
import sys

import torch

from methods.common.errors import run_cli


def setup(snakemake) -> None:
    """Use the job's threads, never more than the machine has; quiet the libraries' own chatter."""
    torch.set_num_threads(max(1, min(int(snakemake.threads), os.cpu_count() or 1)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(fn, snakemake) -> None:
    setup(snakemake)
    run_cli(lambda: fn(snakemake))
    sys.stdout.flush()
