"""The script every rule of a multi-job method runs (methods/<name>/rules.smk, `script:` this file).

It builds the job's Task once, from the rule's `prompts` and `corpus` inputs and its `reward` and `sampling` params
(each optional), and calls the function that `params.job` names, "module:function", as `function(task, snakemake)`.
A function that returns a model directory finishes the training run: model.json is written to `output.model`, as
the generic train rule writes it.
"""

import importlib
import sys

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
import torch  # noqa: E402
from _job import main  # noqa: E402
from train_job import build_task  # noqa: E402

from methods.common.provenance import write_model_json  # noqa: E402


def run(sm):
    if hasattr(sm.params, "torch_threads"):  # a job that shares the cores with its round's other jobs
        torch.set_num_threads(int(sm.params.torch_threads))
    module, name = sm.params.job.split(":")
    job = getattr(importlib.import_module(module), name)
    inputs, params = sm.input, sm.params
    task = build_task(
        sm.wildcards.task,
        getattr(inputs, "prompts", None),
        getattr(inputs, "corpus", None),
        getattr(params, "reward", None),
        getattr(params, "sampling", None),
        getattr(inputs, "base_samples", None),
    )
    model_dir = job(task, sm)
    if model_dir is not None:
        method = module.split(".")[1]
        write_model_json(
            sm.output.model, model_dir, method, int(sm.wildcards.seed), dict(params.hparams), params.device
        )


main(run, snakemake)  # noqa: F821
