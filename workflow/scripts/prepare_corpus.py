import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.tasks import build_corpus  # noqa: E402
from methods.common.task import write_corpus  # noqa: E402


def run(sm):
    texts = build_corpus(sm.wildcards.task, sm.input[0])
    write_corpus(sm.output[0], texts)
    labelled = [t.score for t in texts if t.score is not None]
    print(f"{sm.wildcards.task}: {len(texts)} corpus texts, {len(labelled)} labelled")


main(run, snakemake)  # noqa: F821
