import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from methods.common.data import read_prompts, write_json  # noqa: E402
from methods.common.rewards import get_reward  # noqa: E402
from methods.common.sampling import eval_sampling  # noqa: E402
from methods.common.task import Task, read_corpus  # noqa: E402


def run(sm):
    method = importlib.import_module(f"methods.{sm.wildcards.method}")
    reward_spec = dict(sm.params.reward)
    reward = get_reward(reward_spec.pop("name"), **reward_spec)
    sampling, _ = eval_sampling(sm.params.eval)
    task = Task(sm.wildcards.task, read_prompts(sm.input.prompts), reward, sampling, read_corpus(sm.input.corpus))
    out_dir = Path(sm.output[0]).parent
    model_dir = method.train(task, Path(sm.input.base), out_dir, dict(sm.params.hparams), seed=int(sm.wildcards.seed),
                             device=sm.params.device)  # fmt: skip
    write_json(sm.output[0], {"model_dir": str(model_dir), "method": sm.wildcards.method, "seed": int(sm.wildcards.seed),
                              "hparams": dict(sm.params.hparams)})  # fmt: skip
    print(json.dumps({"model_dir": str(model_dir)}))


main(run, snakemake)  # noqa: F821
