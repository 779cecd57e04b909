"""NADO: Controllable Text Generation with Neurally-Decomposed Oracle (Meng, Lu, Peng, Chang. NeurIPS 2022).

train     sample completions of the training prompts from the unchanged base model p and score them with the task's
          reward; fit R (methods/nado/aux_model.py) on them, from a zero head
generate  decode from q*(v | x<t) ∝ p(v | x<t) R(x<t, v)^alpha, top-p applied to q*; the base model is untouched
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from transformers import set_seed

from methods.common.config import from_dict
from methods.common.data import Prompt, write_json, write_jsonl
from methods.common.generate import generate_jsonl
from methods.common.heldout import heldout_split, model_perplexity, perplexity, text_pairs
from methods.common.models import load_model, read_meta
from methods.common.sampling import Sampling
from methods.common.task import Task
from methods.nado.aux_model import (
    AuxConfig,
    AuxModel,
    NadoLogitsProcessor,
    base_rate,
    collect_samples,
    fit_aux,
    target_nll,
)

META_FILE = "nado.json"


@dataclass
class NadoConfig(AuxConfig):
    num_samples: int = field(default=2400, metadata={"help": "scored samples from the base model that R is fit on"})
    alpha: float = field(default=1.0, metadata={"help": "decoding strength: q* ∝ p R^alpha (1.0: NADO's q*)"})


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Fit R on scored base-model samples; the model directory holds R and points at the base model."""
    set_seed(seed)
    cfg = from_dict(NadoConfig, hparams, "methods/nado/method.yaml")
    out_dir, model_dir = Path(out_dir), Path(out_dir) / "model"
    started = time.perf_counter()
    base, tokenizer = load_model(base_model, device)
    samples, sample_stats = collect_samples(
        base,
        tokenizer,
        task,
        cfg.num_samples,
        cfg,
        np.random.default_rng(seed),
        desc="sampling from the base model",
        probe_seed=seed,
    )
    write_jsonl(out_dir / "samples.jsonl", samples)
    aux = AuxModel.from_base(base_model, cfg.r_layers, device, base_rate(samples, cfg.label_threshold))
    r_stats = fit_aux(aux, samples, cfg, tokenizer.pad_token_id, sampler=base, anchor=base, seed=seed)
    aux.save(model_dir)
    write_json(model_dir / META_FILE, {"base_model": str(base_model), "alpha": cfg.alpha, "config": asdict(cfg)})

    _, heldout = heldout_split(task.name, task.corpus)
    pairs = text_pairs(tokenizer, [t.text for t in heldout])
    stats = {
        **sample_stats,
        **r_stats,
        "train_seconds": time.perf_counter() - started,
        "heldout_texts": len(heldout),
        "heldout_perplexity": perplexity(
            lambda packed: target_nll(base, aux, packed, cfg.alpha), pairs, tokenizer.pad_token_id, device
        ),
        "base_heldout_perplexity": model_perplexity(base, tokenizer, heldout),
    }
    write_json(out_dir / "train_stats.json", stats)
    return model_dir


def generate(
    model_dir: Path,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: Path,
    *,
    seed: int,
    device: str,
    alpha: float | None = None,
) -> None:
    """Sample (or decode greedily) from q* over the unchanged base model; `alpha` overrides the trained strength."""
    meta = read_meta(model_dir, META_FILE, "NADO")
    base, tokenizer = load_model(meta["base_model"], device)
    aux = AuxModel.load(model_dir, device)
    processor = NadoLogitsProcessor(aux, tokenizer.pad_token_id, meta["alpha"] if alpha is None else alpha)
    # sample() reweights by R before its top-p, so the nucleus is q*'s
    generate_jsonl(base, tokenizer, prompts, num_samples, sampling, out_path, seed, logits_processor=[processor])
