import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.report import write_budget_curve  # noqa: E402


def run(sm):
    rows = [
        (name, budget, json.loads(Path(p).read_text()))
        for name, budget, p in zip(sm.params.names, sm.params.budgets, sm.input.rows)
    ]
    references = [(name, json.loads(Path(p).read_text())) for name, p in zip(sm.params.references, sm.input.references)]
    write_budget_curve(sm.params.task, rows, Path(sm.output.md).parent, sm.params.profile, references)


main(run, snakemake)  # noqa: F821
