"""ACF: Attribute Controlled Fine-tuning (Meng, Mehrabi, Goyal, Ramakrishna, Galstyan, Zemel, Chang, Gupta, Peris.
Findings of EMNLP 2024), built on NADO's auxiliary model R (methods/nado/aux_model.py).

Fine-tune the LM on the task's corpus, regularised towards the distribution that satisfies the constraint:

    loss(theta) = NLL_theta(corpus batch) + kl_coef * mean_t KL(q*(. | x<t) || p_theta(. | x<t))   on sampled x
    q*(v | x<t) ∝ p_theta(v | x<t) R(x<t, v)      closed form, p_theta detached: q* is held fixed

R is re-fit every round on fresh samples of the LM, labelled by the task's reward. Each round has three jobs,
sample, train_R and train_LM; methods/acf/schedule.py says what each reads (parallel scheme or sequential chain),
methods/acf/rules.smk runs them as Snakemake jobs, and `train` below runs them in turn in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoTokenizer, PreTrainedModel, set_seed

from core.config import from_dict
from core.data import write_json, write_jsonl
from core.models import load_model
from core.sampling import Packed, completion_logits, pack
from methods.acf.schedule import Schedule
from methods.common.benchmarks import combine_benchmarks
from methods.common.heldout import MAX_TEXT_TOKENS, heldout_split, model_perplexity
from methods.common.kl import masked_mean
from methods.common.lm import LMSchedule, target_nll, train_lm
from methods.common.task import Task
from methods.finetune.finetune import corpus_pairs
from methods.nado.aux_model import (
    AuxConfig,
    AuxModel,
    base_rate,
    collect_samples,
    completion_r_logits,
    fit_aux,
    kl_to_target,
    read_samples,
    split_probe,
)

JOB_KINDS = {"sample": 0, "r": 1, "lm": 2}


@dataclass
class AcfConfig(AuxConfig):
    num_rounds: int = field(default=4, metadata={"help": "N: LM training rounds; LM_N is the result"})
    parallel: bool = field(
        default=True, metadata={"help": "the paper's parallel scheme (R lags a round); False: sequential rounds"}
    )
    samples_per_round: int = field(default=600, metadata={"help": "scored LM samples per sampling job"})
    lm_steps_per_round: int = field(default=25, metadata={"help": "LM gradient steps per round"})
    lm_batch_size: int = field(default=16, metadata={"help": "corpus texts per LM step"})
    kl_batch_size: int = field(default=16, metadata={"help": "sampled sequences per LM step for the KL term"})
    lm_lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate of the LM, each round"})
    lm_warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps each round, then decay to 0"})
    kl_coef: float = field(default=1.0, metadata={"help": "lambda, the weight of the mean per-token KL(q* || p_theta)"})
    q_star_anchor: Literal["base", "policy"] = field(
        default="base",
        metadata={
            "help": "the model R reweights into q*: 'base', the frozen base model (the authors' "
            "PR_finetune), or 'policy', p_theta itself, detached"
        },
    )
    max_text_tokens: int = field(default=MAX_TEXT_TOKENS, metadata={"help": "corpus texts are cut to this length"})


def acf_loss(
    model: PreTrainedModel,
    aux: AuxModel,
    corpus: Packed,
    sampled: Packed | None,
    kl_coef: float,
    anchor: PreTrainedModel | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """NLL on the corpus batch + kl_coef * mean per-token KL(q* || p_theta) on the sampled batch's completions;
    q* reweights `anchor` (the frozen base model) by R, or p_theta itself when `anchor` is None."""
    nll = target_nll(model, corpus).sum() / corpus.completion_mask.sum().clamp(min=1)
    if sampled is None or not kl_coef:
        return nll, {"nll": nll.item()}
    logits = completion_logits(model, sampled)
    with torch.no_grad():
        r_logits = completion_r_logits(aux, sampled)
        anchor_logits = None if anchor is None else completion_logits(anchor, sampled)
    kl = masked_mean(kl_to_target(logits, r_logits, anchor_logits), sampled.completion_mask.float())
    return nll + kl_coef * kl, {"nll": nll.item(), "kl": kl.item()}


def lm_path(rounds: Path, k: int, base_model: str | Path) -> Path:
    return Path(base_model) if k == 0 else Path(rounds) / f"lm{k}"


def r_path(rounds: Path, k: int) -> Path:
    return Path(rounds) / f"r{k}"


def samples_path(rounds: Path, k: int) -> Path:
    return Path(rounds) / f"samples{k}.jsonl"


def stats_path(rounds: Path, kind: str, k: int) -> Path:
    return Path(rounds) / f"{kind}{k}.json"


def sample_job(
    task: Task,
    model_dir: Path,
    out_path: Path,
    cfg: AcfConfig,
    *,
    seed: int,
    run_seed: int,
    device: str,
    desc: str,
    base: bool = False,
):
    """S_i, with R's probe samples on the run's probe split (the same prompts every round); with `base`, the run's
    base samples (the task's shared set where it holds them)."""
    model, tokenizer = load_model(model_dir, device)
    rng = np.random.default_rng(seed)
    samples, stats = collect_samples(
        model, tokenizer, task, cfg.samples_per_round, cfg, rng, desc=desc, probe_seed=run_seed, base=base
    )
    write_jsonl(out_path, samples)
    return stats


def fit_r_job(
    samples: Path,
    init: Path | None,
    base_model: Path,
    sampler: Path,
    out_dir: Path,
    cfg: AcfConfig,
    *,
    seed: int,
    device: str,
    desc: str,
) -> dict:
    """R_i from R_{i-1} (or a fresh R) on one round's samples; the sampler LM is loaded for the consistency term
    only, the base model for R's AUCs on the round's probe samples (q* with the base model as its anchor)."""
    sampler_model = load_model(sampler, device)[0] if cfg.consistency_coef else None
    anchor = load_model(base_model, device)[0] if cfg.r_probe_prompts else None
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    data = read_samples(samples)
    if init is None:
        aux = AuxModel.from_base(base_model, cfg.r_layers, device, base_rate(data, cfg.label_threshold))
    else:
        aux = AuxModel.load(init, device)
    stats = fit_aux(aux, data, cfg, pad_id, sampler=sampler_model, anchor=anchor, seed=seed, desc=desc)
    aux.save(out_dir)
    return stats


def fit_lm_job(
    task: Task,
    init: Path,
    r_dir: Path,
    samples: Path,
    base_model: Path,
    out_dir: Path,
    cfg: AcfConfig,
    *,
    seed: int,
    device: str,
    desc: str,
) -> dict:
    """LM_i from LM_{i-1}: corpus NLL plus the KL to q* of R on the round's sampled sequences (probe samples left
    out); q* reweights the base model or LM_i itself (`q_star_anchor`)."""
    model, tokenizer = load_model(init, device)
    anchor = load_model(base_model, device)[0].requires_grad_(False) if cfg.q_star_anchor == "base" else None
    aux = AuxModel.load(r_dir, device).requires_grad_(False)
    sampled = split_probe(read_samples(samples))[0]
    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []

    def loss_fn(model: PreTrainedModel, corpus: Packed) -> torch.Tensor:
        idx = rng.choice(len(sampled), size=min(cfg.kl_batch_size, len(sampled)), replace=False)
        batch = pack(
            [sampled[i]["prompt_ids"] for i in idx], [sampled[i]["completion_ids"] for i in idx], tokenizer.pad_token_id
        )
        batch = batch.to(device)
        loss, stats = acf_loss(model, aux, corpus, batch, cfg.kl_coef, anchor)
        history.append(stats)
        return loss

    schedule = LMSchedule(cfg.lm_steps_per_round, cfg.lm_batch_size, cfg.lm_lr, cfg.lm_warmup_steps, bf16=cfg.bf16)
    stats = train_lm(
        model,
        corpus_pairs(task, tokenizer, cfg.max_text_tokens),
        schedule,
        tokenizer.pad_token_id,
        seed=seed,
        desc=desc,
        loss_fn=loss_fn,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tenth = max(1, len(history) // 10)
    for key in history[0] if history else ():
        stats[f"{key}_first"] = float(np.mean([h[key] for h in history[:tenth]]))
        stats[f"{key}_last"] = float(np.mean([h[key] for h in history[-tenth:]]))
    return stats


def run_job(
    kind: str, i: int, task: Task, base_model: Path, rounds: Path, cfg: AcfConfig, *, seed: int, device: str
) -> dict:
    """Run one job of the schedule and write its stats (with wall-clock start and end) to rounds/{kind}{i}.json."""
    sched = Schedule(cfg.num_rounds, cfg.parallel)
    job_seed = seed * 1000 + 10 * i + JOB_KINDS[kind]
    set_seed(job_seed)
    started = time.time()
    if kind == "sample":
        stats = sample_job(
            task,
            lm_path(rounds, sched.sample_from(i), base_model),
            samples_path(rounds, i),
            cfg,
            seed=job_seed,
            run_seed=seed,
            device=device,
            desc=f"round {i}: sampling",
            base=i == sched.sample_rounds()[0],  # the first draw of the base model; a second one draws afresh
        )
    elif kind == "r":
        init = sched.r_init(i)
        data = sched.r_data(i)
        stats = fit_r_job(
            samples_path(rounds, data),
            None if init is None else r_path(rounds, init),
            base_model,
            lm_path(rounds, sched.sample_from(data), base_model),
            r_path(rounds, i),
            cfg,
            seed=job_seed,
            device=device,
            desc=f"round {i}: training R",
        )
    elif kind == "lm":
        stats = fit_lm_job(
            task,
            lm_path(rounds, i - 1, base_model),
            r_path(rounds, sched.lm_r(i)),
            samples_path(rounds, sched.lm_samples(i)),
            base_model,
            lm_path(rounds, i, base_model),
            cfg,
            seed=job_seed,
            device=device,
            desc=f"round {i}: training the LM",
        )
    else:
        raise ValueError(f"unknown ACF job kind {kind!r}")
    ended = time.time()
    stats |= {"job": f"{kind}{i}", "started": started, "ended": ended, "seconds": ended - started}
    write_json(stats_path(rounds, kind, i), stats)
    return stats


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def finish(
    task: Task, base_model: Path, out_dir: Path, cfg: AcfConfig, *, device: str, benchmarks: list[Path] | None = None
) -> Path:
    """Keep LM_N as out_dir/model (hard links), gather the jobs' stats (and log them to TensorBoard by round),
    measure held-out perplexity, combine costs. The AUCs of the R that LM_N trained against head the stats."""
    out_dir, rounds = Path(out_dir), Path(out_dir) / "rounds"
    sched = Schedule(cfg.num_rounds, cfg.parallel)
    model_dir = out_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(lm_path(rounds, cfg.num_rounds, base_model), model_dir, copy_function=_link_or_copy)
    jobs = [json.loads(stats_path(rounds, kind, i).read_text()) for kind, i in sched.jobs()]
    _, heldout = heldout_split(task.name, task.corpus)
    model, tokenizer = load_model(model_dir, device)
    heldout_ppl = model_perplexity(model, tokenizer, heldout)
    base, _ = load_model(base_model, device)
    stats = {
        "heldout_perplexity": heldout_ppl,
        "base_heldout_perplexity": model_perplexity(base, tokenizer, heldout),
        "heldout_texts": len(heldout),
        "wall_seconds": max(j["ended"] for j in jobs) - min(j["started"] for j in jobs),
        "job_seconds": sum(j["seconds"] for j in jobs),
        "parallel": cfg.parallel,
        "config": asdict(cfg),
        "jobs": jobs,
    }
    final_r = next(j for j in jobs if j["job"] == f"r{sched.r_of(sched.lm_r(cfg.num_rounds))}")
    stats |= {k: v for k, v in final_r.items() if k.startswith("r_auc")}
    write_json(out_dir / "train_stats.json", stats)
    with SummaryWriter(str(out_dir / "tensorboard")) as writer:
        for (kind, i), job in zip(sched.jobs(), jobs):
            for key, value in job.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("started", "ended"):
                    writer.add_scalar(f"{kind}/{key}", value, i)
    if benchmarks:
        combine_benchmarks(benchmarks, out_dir / "train.benchmark.tsv")
    return model_dir


def load_config(hparams: dict) -> AcfConfig:
    return from_dict(AcfConfig, hparams, "methods/acf/method.yaml")


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Every job of the schedule in turn, in this process (the DAG runs them as jobs: methods/acf/rules.smk)."""
    cfg = load_config(hparams)
    rounds = Path(out_dir) / "rounds"
    for kind, i in Schedule(cfg.num_rounds, cfg.parallel).jobs():
        run_job(kind, i, task, base_model, rounds, cfg, seed=seed, device=device)
    return finish(task, base_model, Path(out_dir), cfg, device=device)
