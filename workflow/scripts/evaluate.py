import importlib
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.perplexity import conditional_perplexity  # noqa: E402
from evaluation.scorers import get_scorer  # noqa: E402
from methods.common.data import read_jsonl, write_json  # noqa: E402
from methods.common.models import load_model  # noqa: E402


def run(sm):
    evaluator = importlib.import_module(f"evaluation.{sm.wildcards.task}")
    records = read_jsonl(sm.input.generations)
    model, tokenizer = load_model(sm.input.base, sm.params.device)
    perplexity = conditional_perplexity(model, tokenizer, records, sm.params.eval["perplexity_batch_size"])
    metrics, per_prompt = evaluator.evaluate(records, get_scorer(sm.params.scorer), perplexity)
    per_prompt.to_csv(sm.output.per_prompt)
    write_json(sm.output.metrics, metrics)
    print({k: v for k, v in metrics.items() if k != "ci95"})


main(run, snakemake)  # noqa: F821
