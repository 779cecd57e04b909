"""The base_samples rule: draw and score a task's shared base-model samples (methods/common/base_samples.py)."""

import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402
from train_job import build_task  # noqa: E402

from core.config import from_dict  # noqa: E402
from core.models import load_model  # noqa: E402
from methods.common.base_samples import Spec, draw  # noqa: E402


def run(sm):
    task = build_task(sm.wildcards.task, sm.input.prompts, None, dict(sm.params.reward), dict(sm.params.sampling))
    spec = from_dict(Spec, dict(sm.params.spec), "the config's base_samples")
    model, tokenizer = load_model(sm.input.base, sm.params.device)
    found = draw(model, tokenizer, task, spec, int(sm.wildcards.seed), f"{task.name}: base samples")
    found.write(Path(sm.output.samples).parent)
    print(f"{sm.output.samples}: {found.stats}")


main(run, snakemake)  # noqa: F821
