import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from methods.common.data import read_prompts, select_prompts, write_prompts  # noqa: E402


def run(sm):
    s = sm.params.settings
    train = read_prompts(sm.input.train)
    train = select_prompts(train, s.get("train_max_prompts"), s.get("seed", 0), s.get("train_min_prompt_toxicity"),
                           s.get("train_max_prompt_toxicity"), sm.input.train)  # fmt: skip
    evals = read_prompts(sm.input.eval)
    evals = select_prompts(evals, sm.params.max_eval_prompts, s.get("seed", 0), s.get("eval_min_prompt_toxicity"),
                           s.get("eval_max_prompt_toxicity"), sm.input.eval)  # fmt: skip
    write_prompts(train, sm.output.train)
    write_prompts(evals, sm.output.eval)
    print(f"{sm.wildcards.task}: {len(train)} train prompts, {len(evals)} eval prompts")


main(run, snakemake)  # noqa: F821
