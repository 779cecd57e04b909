import sys

import numpy as np
import torch

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.scorers import get_scorer  # noqa: E402
from evaluation.sentiment import assign_prompt_types  # noqa: E402
from core.config import native_bf16  # noqa: E402
from core.data import read_prompts, select_prompts, write_prompts  # noqa: E402
from core.models import encode_prompts, load_model  # noqa: E402
from core.sampling import Sampling, sample  # noqa: E402
from transformers import set_seed  # noqa: E402
from dataclasses import replace  # noqa: E402


def run(sm):
    s = {
        "max_candidates": 400,
        "samples_per_prompt": 6,
        "max_new_tokens": 20,
        "top_p": 0.9,
        "type_fraction": 0.2,
        "judge": "vader",
        "batch_size": 100,
        "bf16": False,
        "seed": 0,
        **dict(sm.params.settings),
    }
    set_seed(s["seed"])
    bf16 = native_bf16() if s["bf16"] == "auto" else s["bf16"]
    prompts = select_prompts(
        read_prompts(sm.input.candidates), s["max_candidates"], s["seed"], source=sm.input.candidates
    )
    model, tokenizer = load_model(sm.input.base, sm.params.device)
    n = s["samples_per_prompt"]
    ids = encode_prompts(tokenizer, [p.text for p in prompts], 64)
    sampling = Sampling(max_new_tokens=s["max_new_tokens"], top_p=s["top_p"], batch_size=s["batch_size"])
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        completions = sample(
            model,
            tokenizer,
            [x for x in ids for _ in range(n)],
            sampling,
            desc=f"typing {len(prompts)} prompts x {n} continuations",
        )
    judge = get_scorer(s["judge"]) if isinstance(s["judge"], str) else get_scorer(**dict(s["judge"]))
    scores = np.array(
        [np.nan if x is None else x for x in judge(tokenizer.batch_decode(completions, skip_special_tokens=True))]
    )
    scores = scores.reshape(len(prompts), n)
    share = np.nanmean(np.where(np.isnan(scores), np.nan, scores > 0.5), axis=1).tolist()
    mean = np.nanmean(scores, axis=1).tolist()
    types = assign_prompt_types(share, mean, s["type_fraction"])
    typed = [
        replace(p, meta={**p.meta, "sentiment_type": t, "positive_share": a, "mean_p_positive": b})
        for p, t, a, b in zip(prompts, types, share, mean)
    ]
    write_prompts(typed, sm.output[0])
    counts = {t: types.count(t) for t in ("negative", "neutral", "positive")}
    print(f"typed {len(prompts)} prompts by {n} continuations each: {counts}")


main(run, snakemake)  # noqa: F821
