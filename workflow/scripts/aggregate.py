import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.report import aggregate_seeds  # noqa: E402
from core.data import write_json  # noqa: E402


def run(sm):
    out = aggregate_seeds(sm.input.metrics, sm.input.train, sm.input.generate)
    write_json(sm.output[0], {"method": sm.params.name, **out})


main(run, snakemake)  # noqa: F821
