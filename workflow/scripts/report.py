import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.report import write_task_report  # noqa: E402


def run(sm):
    rows = [(name, json.loads(Path(p).read_text())) for name, p in zip(sm.params.names, sm.input.rows)]
    write_task_report(sm.wildcards.task, rows, Path(sm.output.md).parent, sm.params.profile, sm.params.judge)


main(run, snakemake)  # noqa: F821
