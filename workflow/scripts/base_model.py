import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.tasks import wikitext_articles  # noqa: E402
from core.data import atomic_output  # noqa: E402
from core.data import read_prompts  # noqa: E402
from core.models import build_base_model  # noqa: E402


def texts(path):
    """Training text for a tiny model's tokenizer: prompts of a JSONL file, or WikiText paragraphs."""
    if Path(path).suffix == ".txt":
        return [p for article in wikitext_articles(path) for p in article]
    return [p.text for p in read_prompts(path)]


def run(sm):
    spec = sm.params.spec
    corpus = [t for path in dict.fromkeys(sm.input.prompts) for t in texts(path)] if spec == "tiny" else None
    with atomic_output(sm.output[0]) as tmp:
        build_base_model(spec, tmp, corpus, tiny=dict(sm.params.tiny))


main(run, snakemake)  # noqa: F821
