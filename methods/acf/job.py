"""The script every ACF rule runs (methods/acf/rules.smk): one job of the schedule, or acf_finish."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "workflow" / "scripts"))  # noqa: F821
import torch  # noqa: E402
from _job import main  # noqa: E402

from core.data import read_corpus, read_prompts  # noqa: E402
from core.sampling import train_sampling  # noqa: E402
from methods.acf.acf import finish, load_config, run_job  # noqa: E402
from methods.common.provenance import write_model_json  # noqa: E402
from methods.common.rewards import get_reward  # noqa: E402
from methods.common.task import Task  # noqa: E402

JOBS = {"acf_sample": "sample", "acf_train_r": "r", "acf_train_lm": "lm"}


def run(sm):
    torch.set_num_threads(int(sm.params.torch_threads))
    cfg = load_config(dict(sm.params.hparams))
    reward = None
    if sm.rule == "acf_sample":  # only sampling jobs score, so only they load the scorer
        spec = dict(sm.params.reward)
        reward = get_reward(spec.pop("name"), **spec)
    task = Task(
        sm.wildcards.task,
        read_prompts(sm.input.prompts),
        reward,
        train_sampling(sm.params.sampling),
        read_corpus(sm.input.corpus),
    )
    seed, base = int(sm.wildcards.seed), Path(sm.input.base)
    if sm.rule == "acf_finish":
        out_dir = Path(sm.output.model).parent
        model_dir = finish(
            task, base, out_dir, cfg, device=sm.params.device, benchmarks=[Path(p) for p in sm.params.benchmarks]
        )
        write_model_json(sm.output.model, model_dir, "acf", seed, dict(sm.params.hparams), sm.params.device)
    else:
        run_job(
            JOBS[sm.rule],
            int(sm.wildcards.i),
            task,
            base,
            Path(sm.output.stats).parent,
            cfg,
            seed=seed,
            device=sm.params.device,
        )


main(run, snakemake)  # noqa: F821
