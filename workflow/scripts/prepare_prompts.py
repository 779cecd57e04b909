"""A task's training prompts (rule prepare_train_prompts) or its evaluation prompts (rule prepare_eval_prompts).

Each job reads only what its side needs, so a change to the evaluation settings never rewrites train.jsonl.
"""

import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.sentiment import PROMPT_TYPES  # noqa: E402
from evaluation.tasks import EVAL_FRACTION, task_spec, wikitext_prefixes, wikitext_splits, wikitext_train_articles  # noqa: E402
from core.data import read_prompts, select_prompts, write_prompts  # noqa: E402


def train_prompts(sm, s, kind):
    path = sm.input.train
    if kind == "wikitext":
        articles = wikitext_train_articles(path, s["eval_from_train_file"], s.get("eval_fraction", EVAL_FRACTION))
        prompts = wikitext_prefixes(articles, s.get("prefix_words", 32), s.get("min_continuation_words", 32), path)
    else:
        prompts = read_prompts(path)
    excluded = s.get("excluded_candidates")  # sentiment prompts typed for evaluation come from this file
    if excluded:
        drawn = select_prompts(read_prompts(excluded["file"]), excluded["max_candidates"], excluded["seed"])
        typed = {p.id for p in drawn}
        prompts = [p for p in prompts if p.id not in typed]
    return select_prompts(
        prompts,
        s.get("train_max_prompts"),
        s.get("seed", 0),
        s.get("train_min_prompt_toxicity"),
        s.get("train_max_prompt_toxicity"),
        path,
    )


def eval_prompts(sm, s, kind):
    seed, limit = s.get("seed", 0), sm.params.max_eval_prompts
    if kind == "wikitext":
        _, articles = wikitext_splits(sm.input.train, sm.input.eval, s.get("eval_fraction", EVAL_FRACTION))
        words = s.get("prefix_words", 32), s.get("min_continuation_words", 32)
        return select_prompts(wikitext_prefixes(articles, *words, sm.input.eval), limit, seed, source=sm.input.eval)
    if kind == "sentiment":  # `limit` typed prompts of each type the task reports
        typed = read_prompts(sm.input.eval)
        return [
            p
            for t in PROMPT_TYPES[sm.wildcards.task]
            for p in select_prompts(
                [p for p in typed if p.meta.get("sentiment_type") == t], limit, seed, source=f"{sm.input.eval} ({t})"
            )
        ]
    return select_prompts(
        read_prompts(sm.input.eval),
        limit,
        seed,
        s.get("eval_min_prompt_toxicity"),
        s.get("eval_max_prompt_toxicity"),
        sm.input.eval,
    )


def run(sm):
    kind = task_spec(sm.wildcards.task).prompts
    side = "train" if sm.rule == "prepare_train_prompts" else "eval"
    prompts = (train_prompts if side == "train" else eval_prompts)(sm, sm.params.settings, kind)
    write_prompts(prompts, sm.output[side])
    print(f"{sm.wildcards.task}: {len(prompts)} {side} prompts")


main(run, snakemake)  # noqa: F821
