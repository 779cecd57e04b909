"""Snakemake job: fine-tune one DExperts model (the `side` wildcard: expert or antiexpert) on the task's corpus."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "workflow" / "scripts"))  # noqa: F821
from _job import main  # noqa: E402

from core.data import read_corpus  # noqa: E402
from methods.dexperts.dexperts import train_expert  # noqa: E402


def run(sm):
    train_expert(
        sm.wildcards.side,
        sm.wildcards.task,
        read_corpus(sm.input.corpus),
        Path(sm.input.base),
        Path(sm.output[0]),
        dict(sm.params.hparams),
        seed=int(sm.wildcards.seed),
        device=sm.params.device,
    )


main(run, snakemake)  # noqa: F821
