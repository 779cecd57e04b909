import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.report import make_plot, make_table  # noqa: E402
from evaluation.tasks import task_spec  # noqa: E402
from methods.common.checkpoint import atomic_output  # noqa: E402


def run(sm):
    task = sm.wildcards.task
    evaluator = importlib.import_module(task_spec(task).evaluator)
    rows = [(name, json.loads(Path(p).read_text())) for name, p in zip(sm.params.names, sm.input.rows)]
    reference = (evaluator.PAPER_SOURCE, evaluator.paper_rows(task)) if hasattr(evaluator, "paper_rows") else None
    stem = Path(sm.output.md).with_suffix("")
    tmp = stem.with_name(f"{stem.name}.tmp{os.getpid()}")  # table.md, .csv, .tex written whole, then renamed
    make_table(rows, evaluator.metrics(task), str(tmp), evaluator.LABELS, getattr(evaluator, "PERCENT", set()),
               reference)  # fmt: skip
    for out in (sm.output.md, sm.output.csv, sm.output.tex):
        os.replace(f"{tmp}{Path(out).suffix}", out)
    with atomic_output(sm.output.png) as png:
        make_plot(rows, evaluator.plotted(task), f"{task} ({sm.params.profile} profile)", png, evaluator.LABELS)


main(run, snakemake)  # noqa: F821
