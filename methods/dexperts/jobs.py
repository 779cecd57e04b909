"""DExperts' rule jobs (methods/dexperts/rules.smk), run through workflow/scripts/method_job.py."""

from __future__ import annotations

from pathlib import Path

from methods.common.benchmarks import combine_benchmarks
from methods.common.task import Task
from methods.dexperts.dexperts import train_expert, write_ensemble, write_train_stats


def expert(task: Task, sm) -> None:
    """Fine-tune one model on the corpus: the expert on its wanted texts, the anti-expert on its unwanted ones."""
    hparams, seed = dict(sm.params.hparams), int(sm.wildcards.seed)
    train_expert(
        sm.wildcards.side,
        task.name,
        task.corpus,
        Path(sm.input.base),
        Path(sm.output[0]),
        hparams,
        seed=seed,
        device=sm.params.device,
    )


def ensemble(task: Task, sm) -> Path:
    """The ensemble manifest, train_stats.json (its held-out perplexity), train.benchmark.tsv (the two experts')."""
    hparams = dict(sm.params.hparams)
    model_dir = write_ensemble(
        Path(sm.output.ensemble), Path(sm.input.base), Path(sm.input.expert), Path(sm.input.antiexpert), hparams
    )
    write_train_stats(Path(sm.output.model).parent, task.name, task.corpus, model_dir, sm.params.device)
    combine_benchmarks(list(sm.input.benchmarks), sm.output.benchmark)
    return model_dir
