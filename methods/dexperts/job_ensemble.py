"""Snakemake job: the ensemble manifest, model.json, train_stats.json (held-out perplexity of the ensemble) and
train.benchmark.tsv summed over the two expert jobs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "workflow" / "scripts"))  # noqa: F821
from _job import main  # noqa: E402

from core.data import read_corpus  # noqa: E402
from methods.common.benchmarks import combine_benchmarks  # noqa: E402
from methods.common.provenance import write_model_json  # noqa: E402
from methods.dexperts.dexperts import write_ensemble, write_train_stats  # noqa: E402


def run(sm):
    hparams = dict(sm.params.hparams)
    model_dir = write_ensemble(
        Path(sm.output.ensemble), Path(sm.input.base), Path(sm.input.expert), Path(sm.input.antiexpert), hparams
    )
    write_model_json(sm.output.model, model_dir, "dexperts", int(sm.wildcards.seed), hparams, sm.params.device)
    write_train_stats(
        Path(sm.output.model).parent, sm.wildcards.task, read_corpus(sm.input.corpus), model_dir, sm.params.device
    )
    combine_benchmarks(list(sm.input.benchmarks), sm.output.benchmark)


main(run, snakemake)  # noqa: F821
