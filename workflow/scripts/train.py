import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from train_job import run_job  # noqa: E402

from core.data import write_json  # noqa: E402
from methods.common.provenance import write_model_json  # noqa: E402
from core.errors import SuiteError  # noqa: E402


def run(sm):
    out_dir = Path(sm.output[0]).parent
    job = {
        "method": sm.params.method,
        "task": sm.wildcards.task,
        "prompts": sm.input.prompts,
        "corpus": sm.input.corpus,
        "base_samples": getattr(sm.input, "base_samples", None),
        "base": sm.input.base,
        "reward": dict(sm.params.reward),
        "sampling": dict(sm.params.sampling),
        "hparams": dict(sm.params.hparams),
        "seed": int(sm.wildcards.seed),
        "device": sm.params.device,
        "out_dir": str(out_dir),
    }
    launcher = os.environ.get("SUITE_LAUNCHER")  # e.g. "accelerate launch --config_file workflow/accelerate/ddp.yaml"
    if launcher and sm.params.launchable:
        write_json(out_dir / "job.json", job)
        launched = subprocess.run(
            [*shlex.split(launcher), str(Path(sm.scriptdir) / "train_job.py"), str(out_dir / "job.json")]
        )
        if launched.returncode != 0:
            raise SuiteError(
                f"training job launched with '{launcher}' failed (exit {launched.returncode}); its log is above"
            )
        model_dir = json.loads((out_dir / "launched.json").read_text())["model_dir"]
    else:
        model_dir = run_job(job)
    write_model_json(
        sm.output[0], model_dir, sm.params.method, int(sm.wildcards.seed), dict(sm.params.hparams), sm.params.device
    )
    print(json.dumps({"model_dir": str(model_dir)}))


main(run, snakemake)  # noqa: F821
