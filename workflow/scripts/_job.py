"""What every script a rule runs shares: threads, the job's log and the one-line error wrapper."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

import torch

from core.errors import run_cli
from core.speed import keep_freed_memory, math_attention


def setup(snakemake) -> None:
    """Use the job's threads, never more than the machine has; keep freed memory and train with math attention
    (core/speed.py); quiet the libraries' own chatter."""
    keep_freed_memory()
    math_attention()
    torch.set_num_threads(max(1, min(int(snakemake.threads), os.cpu_count() or 1)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tee_to_log(path: str) -> None:
    """Copy everything the job writes (progress bars, per-round summaries, the one-line error, a launched
    subprocess's output) into its log file, while it still reaches the terminal or the cluster's job log."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("")
    tees = []
    for fd in (1, 2):
        tees.append(subprocess.Popen(["tee", "-a", path], stdin=subprocess.PIPE, stdout=fd))
        os.dup2(tees[-1].stdin.fileno(), fd)
        tees[-1].stdin.close()

    def close() -> None:  # let tee write the last line before Snakemake reads the log
        sys.stdout.flush()
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        for tee in tees:
            tee.wait()

    atexit.register(close)


def main(fn, snakemake) -> None:
    if getattr(snakemake, "log", None):
        tee_to_log(snakemake.log[0])
    setup(snakemake)
    run_cli(lambda: fn(snakemake))
    sys.stdout.flush()
