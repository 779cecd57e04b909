import importlib
import sys
from pathlib import Path

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from core.data import read_jsonl, read_prompts, write_jsonl  # noqa: E402
from core.models import resolve_model_dir  # noqa: E402
from core.sampling import eval_sampling  # noqa: E402


def run(sm):
    """One method.generate() call per decoding the task asks for; records say which decoding made them."""
    method = importlib.import_module(f"methods.{sm.params.method}")
    ev, out = sm.params.eval, Path(sm.output[0])
    model_dir, prompts = resolve_model_dir(sm.input.model), read_prompts(sm.input.prompts)
    records = []
    for decoding in ev.get("decodings", ["sampling"]):
        sampling, num_samples = eval_sampling(ev, decoding)
        part = out.with_name(f"{out.stem}.{decoding}.jsonl")
        method.generate(
            model_dir,
            prompts,
            num_samples,
            sampling,
            part,
            seed=int(sm.wildcards.seed),
            device=sm.params.device,
            **dict(sm.params.variant),
        )
        records += [{**r, "decoding": decoding} for r in read_jsonl(part)]
        part.unlink()
    write_jsonl(out, records)


main(run, snakemake)  # noqa: F821
