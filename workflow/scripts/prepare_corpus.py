import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.scorers import get_scorer  # noqa: E402
from evaluation.tasks import EVAL_FRACTION, task_spec, wanted_sentiment  # noqa: E402
from core.data import write_corpus  # noqa: E402


def run(sm):
    task, s = sm.wildcards.task, sm.params.settings
    kind = task_spec(task).prompts
    if kind == "sentiment":
        spec = dict(sm.params.scorer)
        texts = task_spec(task).corpus(
            sm.input[0], judge=get_scorer(spec.pop("name"), **spec), wanted=wanted_sentiment(task)
        )
    else:
        texts = task_spec(task).corpus(
            sm.input[0], eval_fraction=s.get("eval_fraction", EVAL_FRACTION), holds_out=s["eval_from_train_file"]
        )
    write_corpus(sm.output[0], texts)
    labelled = [t.score for t in texts if t.score is not None]
    print(f"{task}: {len(texts)} corpus texts, {len(labelled)} labelled")


main(run, snakemake)  # noqa: F821
