import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.report import make_plot, make_table  # noqa: E402
from evaluation.tasks import task_spec  # noqa: E402


def run(sm):
    task = sm.wildcards.task
    evaluator = importlib.import_module(task_spec(task).evaluator)
    rows = [(name, json.loads(Path(p).read_text())) for name, p in zip(sm.params.names, sm.input.rows)]
    reference = (evaluator.PAPER_SOURCE, evaluator.paper_rows(task)) if hasattr(evaluator, "paper_rows") else None
    make_table(rows, evaluator.metrics(task), str(Path(sm.output.md).with_suffix("")), evaluator.LABELS,
               getattr(evaluator, "PERCENT", set()), reference)  # fmt: skip
    make_plot(rows, evaluator.plotted(task), f"{task} ({sm.params.profile} profile)", sm.output.png, evaluator.LABELS)


main(run, snakemake)  # noqa: F821
