"""ACF's rule jobs (methods/acf/rules.smk), run through workflow/scripts/method_job.py."""

from __future__ import annotations

from pathlib import Path

from methods.acf.acf import finish, load_config, run_job
from methods.common.task import Task

KINDS = {"acf_sample": "sample", "acf_train_r": "r", "acf_train_lm": "lm"}


def sample_job(task: Task, sm) -> None:
    """Round i's samples, scored: the one kind of job that loads the scorer."""
    round_job(task, sm)


def round_job(task: Task, sm) -> None:
    """One job of the schedule: round i's sampling, R training or LM training."""
    cfg, out = load_config(dict(sm.params.hparams)), Path(sm.output.stats).parent
    run_job(
        KINDS[sm.rule],
        int(sm.wildcards.i),
        task,
        Path(sm.input.base),
        out,
        cfg,
        seed=int(sm.wildcards.seed),
        device=sm.params.device,
    )


def finish_job(task: Task, sm) -> Path:
    """The last LM as the run's model, the jobs' stats gathered, held-out perplexity, the cost summed."""
    cfg, benchmarks = load_config(dict(sm.params.hparams)), [Path(p) for p in sm.params.benchmarks]
    out = Path(sm.output.model).parent
    return finish(task, Path(sm.input.base), out, cfg, device=sm.params.device, benchmarks=benchmarks)
