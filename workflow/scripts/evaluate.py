import importlib
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.perplexity import conditional_perplexity  # noqa: E402
from evaluation.scorers import get_scorer  # noqa: E402
from evaluation.tasks import task_spec  # noqa: E402
from core.data import atomic_output  # noqa: E402
from core.data import read_jsonl, read_prompts, write_json  # noqa: E402
from core.models import load_model  # noqa: E402
from methods.common.provenance import provenance  # noqa: E402


def run(sm):
    task = sm.wildcards.task
    evaluator = importlib.import_module(task_spec(task).evaluator)
    records = read_jsonl(sm.input.generations)
    prompts = {p.id: p for p in read_prompts(sm.input.prompts)}
    model, tokenizer = load_model(sm.input.base, sm.params.device)
    perplexity = conditional_perplexity(model, tokenizer, records, sm.params.eval["perplexity_batch_size"])
    spec = dict(sm.params.scorer or {})
    scorer = get_scorer(spec.pop("name"), **spec) if spec else None
    metrics, per_prompt = evaluator.evaluate(records, scorer, perplexity, prompts, task)
    with atomic_output(sm.output.per_prompt) as tmp:
        per_prompt.to_csv(tmp)
    write_json(sm.output.metrics, {**metrics, "provenance": provenance(sm.params.device)})
    print({k: v for k, v in metrics.items() if k != "ci95"})


main(run, snakemake)  # noqa: F821
