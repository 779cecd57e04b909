"""Return-conditioned training in the style of the Decision Transformer (Chen et al., NeurIPS 2021), for LMs.

sample   `num_samples` completions of the training prompts from the frozen base model, `samples_per_prompt` each: the
         DAG's shared base samples (methods/common/base_samples.py), drawn once for every method that reads them
score    reward each once (samples whose reward is None are dropped and counted)
bin      cut the rewards at their K-quantiles into K return tokens R_0 (highest) .. R_{K-1}; equal rewards share one
learn    LM loss on completion tokens given [R_k, prompt], k the sample's bin: no KL term, no entropy term, no new samples
generate conditioned on the token of the highest return (or of the lowest: the model is a dial)

A completion's reward arrives at its end, so its return-to-go is that reward at every step: one token before the
prompt carries it. What Quark adds to this is the subject of README.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from core.config import from_dict
from core.data import Prompt, write_json
from core.errors import SuiteError
from core.models import load_model, read_meta
from core.sampling import Sampling
from methods.common.base_samples import base_samples, explore_settings, scored
from methods.common.generate import generate_jsonl
from methods.common.lm import LMSchedule, target_nll, train_lm
from methods.common.probe import ProbeSample, controllability
from methods.common.task import Task
from methods.common.tokens import add_control_tokens

SOURCE = "methods/dt/method.yaml"
META_FILE = "dt.json"


@dataclass
class DTConfig:
    num_returns: int = field(default=5, metadata={"help": "K, the number of return bins and return tokens (Quark's K)"})
    num_samples: int | None = field(
        default=None,
        metadata={
            "help": "scored base-model samples, samples_per_prompt per prompt (None: samples_per_prompt on each)"
        },
    )
    samples_per_prompt: int = field(
        default=46, metadata={"help": "samples per training prompt (the first num_samples / samples_per_prompt)"}
    )
    explore_top_p: float = field(default=1.0, metadata={"help": "nucleus top-p while sampling (Quark's exploration)"})
    steps: int = field(default=23000, metadata={"help": "gradient steps on the scored samples"})
    batch_size: int = field(default=128, metadata={"help": "sequences per gradient step"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_steps: int = field(default=500, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient-norm clip (None: no clipping)"})
    max_prompt_tokens: int = field(default=64, metadata={"help": "prompts are cut from the left to this length"})
    sample_batch_size: int = field(default=64, metadata={"help": "sequences per generate() call while sampling"})
    probe_prompts: int = field(
        default=0,
        metadata={
            "help": "training prompts held out of training for the controllability probe "
            "(methods/common/probe.py); 0: no probe"
        },
    )
    probe_samples_per_prompt: int = field(default=4, metadata={"help": "base-model samples per probe prompt"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for forward passes and sampling"})


def return_token_names(k: int) -> list[str]:
    return [f"<|return_{i}|>" for i in range(k)]


def return_bins(rewards: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index per reward, 0 for the highest returns, and the K - 1 inner edges (ascending).

    The edges are the rewards' j/K-quantiles (numpy's linear interpolation). Bins are closed on the right, as in
    `pandas.qcut`: a reward equal to an edge goes to the bin below it, so the top bin holds only rewards above the
    (K-1)/K-quantile. Equal rewards always share a bin; with many ties some bins stay empty, and the highest reward
    may sit below bin 0 (`best_bin` in the model's metadata says where).
    """
    rewards = np.asarray(rewards, dtype=float)
    edges = np.quantile(rewards, np.arange(1, k) / k) if len(rewards) else np.zeros(k - 1)
    ascending = np.searchsorted(edges, rewards, side="left")  # the number of edges below each reward: 0 .. K-1
    return k - 1 - ascending, edges


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    set_seed(seed)
    cfg = from_dict(DTConfig, hparams, SOURCE)
    out_dir = Path(out_dir)
    model, tokenizer = load_model(base_model, device)
    vocab_size = model.get_input_embeddings().num_embeddings  # V0, before the return tokens

    drawn, probe_rows, sample_stats = base_samples(
        task,
        model,
        tokenizer,
        cfg.num_samples,
        cfg.samples_per_prompt,
        seed,
        "dt: base samples",
        **explore_settings(cfg),
    )
    rows = scored(drawn)
    if not rows:
        raise SuiteError(f"task '{task.name}': the reward returned None for every sample; nothing to train on")

    rewards = np.array([r["reward"] for r in rows])
    bins, edges = return_bins(rewards, cfg.num_returns)
    token_ids = add_control_tokens(model, tokenizer, return_token_names(cfg.num_returns))
    pairs = [([token_ids[b]] + r["prompt_ids"], r["completion_ids"]) for b, r in zip(bins, rows)]

    def lm_loss(model, packed):  # the LM loss over the original vocabulary: return tokens are never targets
        return target_nll(model, packed, vocab_size).sum() / packed.completion_mask.sum().clamp(min=1)

    schedule = LMSchedule(
        cfg.steps, cfg.batch_size, cfg.lr, cfg.warmup_steps, cfg.weight_decay, cfg.max_grad_norm, cfg.bf16
    )
    learned = train_lm(model, pairs, schedule, tokenizer.pad_token_id, seed=seed, desc="dt: training", loss_fn=lm_loss)

    best, worst = int(bins[rewards.argmax()]), int(bins[rewards.argmin()])
    probe_set = [
        ProbeSample(r["prompt_id"], r["prompt_ids"], r["completion_ids"], r["reward"]) for r in scored(probe_rows)
    ]
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
        probe = (
            controllability(
                model, probe_set, lambda p, k: [token_ids[k], *p], best, worst, tokenizer.pad_token_id, vocab_size
            )
            if probe_set
            else {}
        )
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    per_bin = [
        {
            "count": int((bins == k).sum()),
            "mean_reward": float(rewards[bins == k].mean()) if (bins == k).any() else None,
        }
        for k in range(cfg.num_returns)
    ]
    meta = {
        "return_tokens": return_token_names(cfg.num_returns),
        "return_token_ids": token_ids,
        "best_bin": best,
        "worst_bin": worst,
        "edges": edges.tolist(),
        "bins": per_bin,
        "base_vocab_size": vocab_size,
        "config": asdict(cfg),
    }
    write_json(model_dir / META_FILE, meta)
    write_json(
        out_dir / "train_stats.json",
        {
            "sampled": len(drawn),
            "sample_reward": float(rewards.mean()),
            **sample_stats,
            **learned,
            "edges": meta["edges"],
            "bins": per_bin,
            **probe,
        },
    )
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
    returns: int | str = "best",
) -> None:
    """Sample conditioned on one return token: 'best' (the highest-return bin, the default), 'worst', or a bin index."""
    meta = read_meta(model_dir, META_FILE, "DT")
    ids = meta["return_token_ids"]
    k = {"best": meta["best_bin"], "worst": meta["worst_bin"]}.get(returns, returns)
    if not isinstance(k, int) or not 0 <= k < len(ids):
        raise SuiteError(f"returns must be 'best', 'worst' or 0..{len(ids) - 1}, got {returns!r}")
    model, tokenizer = load_model(model_dir, device)
    generate_jsonl(
        model, tokenizer, prompts, num_samples, sampling, out_path, seed, prefix_ids=[ids[k]], suppress_ids=ids
    )
