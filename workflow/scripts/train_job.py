"""One training job from a JSON file, so a launcher can start it: `accelerate launch ... train_job.py JOB.json`.

The DAG's train rule (workflow/scripts/train.py) writes the job file and, when $SUITE_LAUNCHER is set (say
`accelerate launch --config_file workflow/accelerate/ddp.yaml`), runs this script through it for the methods whose
method.yaml says `launchable: true`; otherwise it calls `run_job` in its own process. The job's main process writes
`<out_dir>/launched.json` with the model directory.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_task(
    name: str,
    prompts=None,
    corpus=None,
    reward: dict | None = None,
    sampling: dict | None = None,
    base_samples=None,
):
    """A method's Task from the job's files and settings; what a job does not need stays empty (no reward: no scorer
    is loaded)."""
    from core.data import read_corpus, read_prompts
    from core.sampling import Sampling, train_sampling
    from methods.common.base_samples import BaseSamples
    from methods.common.rewards import get_reward
    from methods.common.task import Task

    if reward is not None:
        spec = dict(reward)
        reward = get_reward(spec.pop("name"), **spec)
    return Task(
        name,
        read_prompts(prompts) if prompts else [],
        reward,
        train_sampling(sampling) if sampling is not None else Sampling(),
        read_corpus(corpus) if corpus else [],
        BaseSamples.read(base_samples) if base_samples else None,
    )


def run_job(job: dict) -> Path:
    """Build the task (prompts, corpus, reward, exploration sampling) and call the method's train()."""
    method = importlib.import_module(f"methods.{job['method']}")
    task = build_task(
        job["task"], job["prompts"], job["corpus"], job["reward"], job["sampling"], job.get("base_samples")
    )
    return method.train(
        task, Path(job["base"]), Path(job["out_dir"]), dict(job["hparams"]), seed=int(job["seed"]), device=job["device"]
    )


def main() -> None:
    from accelerate import PartialState

    from core.data import write_json

    job = json.loads(Path(sys.argv[1]).read_text())
    model_dir = run_job(job)
    if PartialState().is_main_process:
        write_json(Path(job["out_dir"]) / "launched.json", {"model_dir": str(model_dir)})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from core.errors import run_cli

    run_cli(main)
