"""NADO: Controllable Text Generation with Neurally-Decomposed Oracle (Meng, Lu, Peng, Chang. NeurIPS 2022).

train     sample completions of the training prompts from the unchanged base model p and score them with the task's
          reward; fit R (methods/nado/aux_model.py) on them, from a zero head
          optionally choose alpha on R's probe prompts (training prompts R never saw): the strength whose samples
          score best, within a perplexity bound
generate  decode from q*(v | x<t) ∝ p(v | x<t) R(x<t, v)^alpha, top-p applied to q*; the base model is untouched
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from transformers import set_seed

from core.config import from_dict
from core.data import Prompt, write_json, write_jsonl
from core.errors import SuiteError
from core.models import load_model, read_meta
from core.sampling import Sampling
from evaluation.perplexity import conditional_perplexity
from methods.common.generate import generate_jsonl
from methods.common.heldout import heldout_split, model_perplexity, perplexity, text_pairs
from methods.common.rollout import sample_and_score
from methods.common.task import Task
from methods.nado.aux_model import (
    AuxConfig,
    AuxModel,
    NadoLogitsProcessor,
    autocast,
    base_rate,
    collect_samples,
    fit_aux,
    split_probe,
    target_nll,
)

META_FILE = "nado.json"


@dataclass
class NadoConfig(AuxConfig):
    num_samples: int = field(default=2400, metadata={"help": "scored samples from the base model that R is fit on"})
    alpha: float = field(default=1.0, metadata={"help": "decoding strength: q* ∝ p R^alpha (1.0: NADO's q*)"})
    alpha_grid: list[float] = field(
        default_factory=list,
        metadata={
            "help": "strengths tried on R's probe prompts after training; the best-scoring one within "
            "max_perplexity_ratio replaces alpha (choose_alpha); empty: alpha as given"
        },
    )
    max_perplexity_ratio: float = field(
        default=1.15,
        metadata={"help": "bound on the base model's perplexity of an alpha's probe samples, over its own samples'"},
    )


def choose_alpha(
    base, aux: AuxModel, tokenizer, task: Task, probe: list[dict], cfg: NadoConfig, seed: int
) -> tuple[float, list[dict]]:
    """The decoding strength, chosen on R's probe samples: completions of training prompts that R never trained on.

    For each alpha of `cfg.alpha_grid`, q* draws one completion per probe sample's prompt (as many per prompt as the
    base model drew, from the same seed for every alpha), scored with the task's reward. An alpha qualifies if the
    base model's perplexity of its completions is at most `cfg.max_perplexity_ratio` times that of the base model's
    own probe samples (alpha 0); the qualifying alpha with the best mean reward wins, alpha 0 included. Returns
    (alpha, one {alpha, reward, perplexity, samples} record per strength tried).
    """
    device = str(next(base.parameters()).device)
    prompts, prefixes = [s["prompt"] for s in probe], [s["prompt_ids"] for s in probe]
    sampling = replace(task.sampling, top_p=cfg.sample_top_p, do_sample=True, batch_size=cfg.sample_batch_size)

    def record(alpha: float, index: list[int], completions: list[list[int]], rewards: list[float]) -> dict:
        rows = [{"prompt": prompts[i], "token_ids": c} for i, c in zip(index, completions)]
        ppl = conditional_perplexity(base, tokenizer, rows) if rows else [float("nan")]
        return {
            "alpha": alpha,
            "reward": float(np.mean(rewards)),
            "perplexity": float(np.mean(ppl)),
            "samples": len(rows),
        }

    tried = [record(0.0, list(range(len(probe))), [s["completion_ids"] for s in probe], [s["reward"] for s in probe])]
    for alpha in cfg.alpha_grid:
        set_seed(seed)
        processor = NadoLogitsProcessor(aux, tokenizer.pad_token_id, alpha)
        with autocast(device, cfg.bf16):
            rollout = sample_and_score(
                base,
                tokenizer,
                task.reward,
                prompts,
                prefixes,
                list(range(len(probe))),
                sampling,
                desc=f"alpha {alpha:g} on the probe prompts",
                logits_processor=[processor],
            )
        tried.append(record(alpha, rollout.prompt_index, rollout.completions, rollout.rewards))
    return pick_alpha(tried, cfg.max_perplexity_ratio), tried


def pick_alpha(tried: list[dict], max_perplexity_ratio: float) -> float:
    """The best-rewarded alpha of `tried` whose perplexity is within the ratio of the first record's (alpha 0)."""
    bound = max_perplexity_ratio * tried[0]["perplexity"]
    return max((t for t in tried if t["perplexity"] <= bound), key=lambda t: t["reward"])["alpha"]


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Fit R on scored base-model samples; the model directory holds R and points at the base model."""
    set_seed(seed)
    cfg = from_dict(NadoConfig, hparams, "methods/nado/method.yaml")
    if cfg.alpha_grid and not cfg.r_probe_prompts:
        raise SuiteError("methods/nado/method.yaml: alpha_grid needs r_probe_prompts > 0: alpha is chosen on R's probe")
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
        base=True,
    )
    write_jsonl(out_dir / "samples.jsonl", samples)
    aux = AuxModel.from_base(base_model, cfg.r_layers, device, base_rate(samples, cfg.label_threshold))
    r_stats = fit_aux(aux, samples, cfg, tokenizer.pad_token_id, sampler=base, anchor=base, seed=seed)
    alpha, alpha_search = cfg.alpha, []
    if cfg.alpha_grid:
        alpha, alpha_search = choose_alpha(base, aux, tokenizer, task, split_probe(samples)[1], cfg, seed)
    aux.save(model_dir)
    write_json(model_dir / META_FILE, {"base_model": str(base_model), "alpha": alpha, "config": asdict(cfg)})

    _, heldout = heldout_split(task.name, task.corpus)
    pairs = text_pairs(tokenizer, [t.text for t in heldout])
    stats = {
        **sample_stats,
        **r_stats,
        "alpha": alpha,
        "alpha_search": alpha_search,
        "train_seconds": time.perf_counter() - started,
        "heldout_texts": len(heldout),
        "heldout_perplexity": perplexity(
            lambda packed: target_nll(base, aux, packed, alpha), pairs, tokenizer.pad_token_id, device
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
