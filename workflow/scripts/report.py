import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.report import PLOTTED, make_plot, make_table  # noqa: E402


def run(sm):
    task = sm.wildcards.task
    evaluator = __import__(f"evaluation.{task}", fromlist=["METRICS"])
    rows = [(name, json.loads(Path(p).read_text())) for name, p in zip(sm.params.names, sm.input.rows)]
    make_table(rows, evaluator.METRICS, str(Path(sm.output.md).with_suffix("")))
    make_plot(rows, PLOTTED[task], f"{task} ({sm.params.profile} profile)", sm.output.png)


main(run, snakemake)  # noqa: F821
