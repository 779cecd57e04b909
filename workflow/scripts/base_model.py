import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from methods.common.data import read_prompts  # noqa: E402
from methods.common.models import build_base_model  # noqa: E402


def run(sm):
    spec = sm.params.spec
    corpus = [p.text for path in sm.input.prompts for p in read_prompts(path)] if spec == "tiny" else None
    build_base_model(spec, sm.output[0], corpus, tiny=dict(sm.params.tiny))


main(run, snakemake)  # noqa: F821
