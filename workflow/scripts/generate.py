import importlib
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from methods.common.data import read_prompts  # noqa: E402
from methods.common.models import resolve_model_dir  # noqa: E402
from methods.common.sampling import Sampling  # noqa: E402


def run(sm):
    method = importlib.import_module(f"methods.{sm.params.method}")
    ev = sm.params.eval
    sampling = Sampling(max_new_tokens=ev["max_new_tokens"], top_p=ev["top_p"], batch_size=ev["batch_size"])
    method.generate(resolve_model_dir(sm.input.model), read_prompts(sm.input.prompts), ev["num_samples"], sampling,
                    Path(sm.output[0]), seed=int(sm.wildcards.seed), device=sm.params.device, **dict(sm.params.variant))  # fmt: skip


main(run, snakemake)  # noqa: F821
