import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.tasks import task_spec, wikitext_prefixes, wikitext_splits  # noqa: E402
from evaluation.sentiment import PROMPT_TYPES  # noqa: E402
from methods.common.data import read_prompts, select_prompts, write_prompts  # noqa: E402


def wikitext(sm, s):
    """Prefixes of the train file's articles and of the eval file's; one file for both is split by article."""
    train_articles, eval_articles = wikitext_splits(sm.input.train, sm.input.eval, s.get("eval_fraction", 0.25))
    words = s.get("prefix_words", 32), s.get("min_continuation_words", 32)
    train = wikitext_prefixes(train_articles, *words, sm.input.train)
    evals = wikitext_prefixes(eval_articles, *words, sm.input.eval)
    return (select_prompts(train, s.get("train_max_prompts"), s.get("seed", 0), source=sm.input.train),
            select_prompts(evals, sm.params.max_eval_prompts, s.get("seed", 0), source=sm.input.eval))  # fmt: skip


def sentiment(sm, s):
    """Train on any OpenWebText prompt; evaluate on `max_prompts` typed prompts of each type the task reports."""
    train = select_prompts(read_prompts(sm.input.train), s.get("train_max_prompts"), s.get("seed", 0),
                           source=sm.input.train)  # fmt: skip
    typed = read_prompts(sm.input.eval)
    evals = []
    for t in PROMPT_TYPES[sm.wildcards.task]:
        of_type = [p for p in typed if p.meta.get("sentiment_type") == t]
        evals += select_prompts(of_type, sm.params.max_eval_prompts, s.get("seed", 0), source=f"{sm.input.eval} ({t})")
    eval_ids = {p.id for p in evals}
    return [p for p in train if p.id not in eval_ids], evals


def rtp(sm, s):
    train = select_prompts(read_prompts(sm.input.train), s.get("train_max_prompts"), s.get("seed", 0),
                           s.get("train_min_prompt_toxicity"), s.get("train_max_prompt_toxicity"), sm.input.train)  # fmt: skip
    evals = select_prompts(read_prompts(sm.input.eval), sm.params.max_eval_prompts, s.get("seed", 0),
                           s.get("eval_min_prompt_toxicity"), s.get("eval_max_prompt_toxicity"), sm.input.eval)  # fmt: skip
    return train, evals


def run(sm):
    kind = task_spec(sm.wildcards.task).prompts
    train, evals = {"wikitext": wikitext, "sentiment": sentiment, "rtp": rtp}[kind](sm, sm.params.settings)
    write_prompts(train, sm.output.train)
    write_prompts(evals, sm.output.eval)
    print(f"{sm.wildcards.task}: {len(train)} train prompts, {len(evals)} eval prompts")


main(run, snakemake)  # noqa: F821
