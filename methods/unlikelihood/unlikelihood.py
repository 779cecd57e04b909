"""Unlikelihood training (Welleck, Kulikov, Roller, Dinan, Cho, Weston. ICLR 2020) on every task of the suite.

repetition (the paper's setting)
    token phase     `token_steps` updates on human text (the task corpus): MLE + alpha * token-level UL
    sequence phase  `sequence_steps` updates, each with probability `sequence_tune_rate` a sequence-level UL update
                    on the model's own greedy continuations of training prefixes (candidates: tokens of repeated
                    n-grams), otherwise a token-phase update on human text
toxicity, sentiment (samples labelled by the task's reward)
    each round      sample one completion per chosen training prompt from the current model (the base model first),
                    score it, add it to the pool, then `steps_per_round` updates of
                        mean NLL of completions with reward >= wanted_threshold
                        + ul_coef * mean UL of every token of completions with reward < unwanted_threshold
generate            from the fine-tuned model as it is (the base method's generate)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, set_seed

from core.config import from_dict
from core.data import write_json
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Packed, Sampling, completion_logits, pack, sample
from methods.common.lm import LMSchedule, encode_texts, shuffled_batches, target_nll, train_lm
from methods.common.rollout import sample_and_score
from methods.common.task import Task
from methods.unlikelihood.losses import ngram_candidates, sequence_unlikelihood, token_unlikelihood

SOURCE = "methods/unlikelihood/method.yaml"


@dataclass
class UnlikelihoodConfig:
    lr: float = field(default=6.25e-5, metadata={"help": "AdamW peak learning rate (reference GPT-2 script)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps of each training phase or round"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (reference GPT-2 script)"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient-norm clip (None: no clipping)"})
    max_prompt_tokens: int = field(default=50, metadata={"help": "prompts are cut from the left to this length"})
    sample_batch_size: int = field(default=64, metadata={"help": "sequences per generate() call"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for forward passes and sampling"})
    # repetition
    token_steps: int = field(default=1500, metadata={"help": "repetition: token-phase updates (MLE + token UL)"})
    sequence_steps: int = field(default=1500, metadata={"help": "repetition: sequence-phase updates"})
    token_ul_coef: float = field(default=1.0, metadata={"help": "repetition: alpha, weight of token-level UL"})
    sequence_tune_rate: float = field(
        default=0.5, metadata={"help": "repetition: probability that a sequence-phase update is sequence-level"}
    )
    ngram_n: int = field(
        default=4, metadata={"help": "repetition: n of the repeated n-grams whose tokens are candidates"}
    )
    text_batch_size: int = field(default=1, metadata={"help": "repetition: human texts per token-level update"})
    max_text_tokens: int = field(default=300, metadata={"help": "repetition: human texts are cut to this many tokens"})
    sequence_batch_size: int = field(
        default=6, metadata={"help": "repetition: greedy continuations per sequence-level update"}
    )
    # toxicity, sentiment
    num_rounds: int = field(default=46, metadata={"help": "reward tasks: sampling rounds"})
    prompts_per_round: int | None = field(
        default=None, metadata={"help": "reward tasks: train prompts sampled each round (None: all)"}
    )
    samples_per_prompt: int = field(default=1, metadata={"help": "reward tasks: completions per prompt per round"})
    steps_per_round: int = field(default=500, metadata={"help": "reward tasks: updates after each round's sampling"})
    explore_top_p: float = field(default=1.0, metadata={"help": "reward tasks: nucleus top-p while sampling"})
    wanted_threshold: float = field(
        default=0.5, metadata={"help": "reward tasks: MLE on completions whose reward is at least this"}
    )
    unwanted_threshold: float = field(
        default=0.5, metadata={"help": "reward tasks: UL on the tokens of completions whose reward is below this"}
    )
    ul_coef: float = field(default=1.0, metadata={"help": "reward tasks: weight of the UL term"})
    batch_size: int = field(default=64, metadata={"help": "reward tasks: wanted completions per update (MLE)"})
    ul_batch_size: int = field(default=64, metadata={"help": "reward tasks: unwanted completions per update (UL)"})

    def schedule(self, steps: int, batch_size: int) -> LMSchedule:
        return LMSchedule(
            steps, batch_size, self.lr, self.warmup_steps, self.weight_decay, self.max_grad_norm, self.bf16
        )


def to_device(packed: Packed, device: torch.device) -> Packed:
    return packed.to(device)


def completion_logprobs(model: PreTrainedModel, packed: Packed) -> torch.Tensor:
    """Log-probabilities predicting each completion token, [B, C, V], in float32."""
    return F.log_softmax(completion_logits(model, packed).float(), dim=-1)


def mle_token_ul_loss(model: PreTrainedModel, packed: Packed, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """(sum of NLL + alpha * sum of token-level UL) / number of target tokens, as the reference criterion."""
    logprobs = completion_logprobs(model, packed)
    mask = packed.completion_mask.float()
    nll = -logprobs.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1) * mask
    ntokens = mask.sum().clamp(min=1)
    ul = token_unlikelihood(logprobs, packed) if alpha else torch.zeros_like(nll)
    loss = (nll.sum() + alpha * ul.sum()) / ntokens
    return loss, {"nll": (nll.sum() / ntokens).item(), "token_ul": (ul.sum() / ntokens).item()}


def sequence_ul_loss(model: PreTrainedModel, packed: Packed, n: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Sequence-level UL on completions: summed over tokens of repeated n-grams, divided by the completion tokens."""
    candidates = ngram_candidates(packed, n)
    ul = sequence_unlikelihood(completion_logprobs(model, packed), packed.completion_ids, candidates)
    ntokens = packed.completion_mask.sum().clamp(min=1)
    return ul.sum() / ntokens, {
        "sequence_ul": (ul.sum() / ntokens).item(),
        "repeat_share": (candidates.sum() / ntokens).item(),
    }


class SequencePhaseLoss:
    """One sequence-phase update: a coin flip between sequence-level UL on fresh greedy continuations and the
    token-phase loss on the human-text batch that `train_lm` drew (the reference's `--sequence-tune-rate`)."""

    def __init__(self, cfg: UnlikelihoodConfig, tokenizer, prefixes: list[list[int]], sampling: Sampling, seed: int):
        self.cfg, self.tokenizer, self.prefixes, self.sampling = cfg, tokenizer, prefixes, sampling
        self.rng = np.random.default_rng(seed)
        self.history: list[dict[str, float]] = []

    def __call__(self, model: PreTrainedModel, packed: Packed) -> torch.Tensor:
        if self.rng.random() >= self.cfg.sequence_tune_rate:
            loss, stats = mle_token_ul_loss(model, packed, self.cfg.token_ul_coef)
            self.history.append({"sequence_level": 0.0, **stats})
            return loss
        idx = self.rng.choice(
            len(self.prefixes), size=min(self.cfg.sequence_batch_size, len(self.prefixes)), replace=False
        )
        prefixes = [self.prefixes[i] for i in idx]
        model.eval()
        completions = sample(model, self.tokenizer, prefixes, self.sampling, desc="greedy continuations")
        model.train()
        device = next(model.parameters()).device
        loss, stats = sequence_ul_loss(
            model, to_device(pack(prefixes, completions, self.tokenizer.pad_token_id), device), self.cfg.ngram_n
        )
        self.history.append({"sequence_level": 1.0, **stats})
        return loss


def train_repetition(model, tokenizer, task: Task, cfg: UnlikelihoodConfig, seed: int) -> dict:
    """The paper's two phases on the task's human text and training prefixes."""
    texts = [t.text for t in task.corpus]
    ids = [x for x in encode_texts(tokenizer, texts, cfg.max_text_tokens) if len(x) >= 2]
    if not ids:
        raise SuiteError(
            f"task '{task.name}': the corpus has no text of two or more tokens; unlikelihood needs human text"
        )
    pairs = [(x[:1], x[1:]) for x in ids]  # the loss covers every token after the first
    pad = tokenizer.pad_token_id
    stats: dict = {"corpus_texts": len(pairs)}
    if cfg.token_steps > 0:
        token_history: list[dict[str, float]] = []

        def token_loss(model: PreTrainedModel, packed: Packed) -> torch.Tensor:
            loss, step_stats = mle_token_ul_loss(model, packed, cfg.token_ul_coef)
            token_history.append(step_stats)
            return loss

        stats["token_phase"] = train_lm(
            model,
            pairs,
            cfg.schedule(cfg.token_steps, cfg.text_batch_size),
            pad,
            seed=seed,
            desc="token-level UL",
            loss_fn=token_loss,
        )
        stats["token_phase"].update(summarise(token_history))
    if cfg.sequence_steps > 0:
        prefixes = encode_prompts(tokenizer, [p.text for p in task.train_prompts], cfg.max_prompt_tokens)
        greedy = dataclasses.replace(task.sampling, do_sample=False, batch_size=cfg.sequence_batch_size)
        phase = SequencePhaseLoss(cfg, tokenizer, prefixes, greedy, seed + 1)
        stats["sequence_phase"] = train_lm(
            model,
            pairs,
            cfg.schedule(cfg.sequence_steps, cfg.text_batch_size),
            pad,
            seed=seed + 1,
            desc="sequence-level UL",
            loss_fn=phase,
        )
        seq = [h for h in phase.history if h["sequence_level"]]
        stats["sequence_phase"].update({"sequence_updates": len(seq), **summarise(seq)})
    return stats


def summarise(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each logged term over the first and the last tenth of the updates that logged it."""
    out = {}
    for key in sorted({k for h in history for k in h} - {"sequence_level"}):
        values = [h[key] for h in history if key in h]
        tenth = max(1, len(values) // 10)
        out[f"{key}_first"], out[f"{key}_last"] = float(np.mean(values[:tenth])), float(np.mean(values[-tenth:]))
    return out


class UnwantedLoss:
    """MLE on the wanted batch `train_lm` drew, plus ul_coef times UL on every token of an unwanted batch drawn here."""

    def __init__(self, cfg: UnlikelihoodConfig, unwanted: list[tuple[list[int], list[int]]], pad_id: int, seed: int):
        self.cfg, self.unwanted, self.pad_id = cfg, unwanted, pad_id
        self.rng = np.random.default_rng(seed)
        self.batches = shuffled_batches(len(unwanted), min(cfg.ul_batch_size, len(unwanted)), self.rng)
        self.history: list[dict[str, float]] = []

    def __call__(self, model: PreTrainedModel, packed: Packed) -> torch.Tensor:
        loss = target_nll(model, packed).sum() / packed.completion_mask.sum().clamp(min=1)
        stats = {"nll": loss.item()}
        if self.unwanted and self.cfg.ul_coef:
            idx = next(self.batches)  # at most len(unwanted): never the same sample twice in a batch
            bad = to_device(
                pack([self.unwanted[i][0] for i in idx], [self.unwanted[i][1] for i in idx], self.pad_id),
                packed.input_ids.device,
            )
            ul = sequence_unlikelihood(completion_logprobs(model, bad), bad.completion_ids, bad.completion_mask.float())
            ul = ul.sum() / bad.completion_mask.sum().clamp(min=1)
            loss = loss + self.cfg.ul_coef * ul
            stats["ul"] = ul.item()
        self.history.append(stats)
        return loss


def train_rewarded(model, tokenizer, task: Task, cfg: UnlikelihoodConfig, seed: int) -> dict:
    """Rounds of sampling, scoring and MLE-plus-UL updates on the pool of every scored sample."""
    rng = np.random.default_rng(seed)
    prompts = [p.text for p in task.train_prompts]
    prompt_ids = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    sampling = dataclasses.replace(
        task.sampling, top_p=cfg.explore_top_p, do_sample=True, batch_size=cfg.sample_batch_size
    )
    device = next(model.parameters()).device
    pool: list[tuple[list[int], list[int], float]] = []  # (prompt ids, completion ids, reward)
    stats: dict = {"dropped_unscored": 0, "sample_tokens": 0, "sample_seconds": 0.0, "rounds": []}
    for rnd in tqdm(range(cfg.num_rounds), desc="unlikelihood rounds"):
        n = len(prompts) if cfg.prompts_per_round is None else min(cfg.prompts_per_round, len(prompts))
        chosen = [
            i for i in rng.choice(len(prompts), size=n, replace=False).tolist() for _ in range(cfg.samples_per_prompt)
        ]
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            ro = sample_and_score(
                model, tokenizer, task.reward, prompts, prompt_ids, chosen, sampling, desc=f"round {rnd}"
            )
        stats["dropped_unscored"] += ro.dropped
        stats["sample_tokens"] += ro.tokens
        stats["sample_seconds"] += ro.seconds
        pool += [(prompt_ids[i], c, r) for i, c, r in zip(ro.prompt_index, ro.completions, ro.rewards)]
        wanted = [(p, c) for p, c, r in pool if r >= cfg.wanted_threshold and c]
        unwanted = [(p, c) for p, c, r in pool if r < cfg.unwanted_threshold and c]
        if not wanted:
            raise SuiteError(
                f"round {rnd}: no sample has reward >= wanted_threshold {cfg.wanted_threshold}; "
                f"nothing to train the MLE term on ({SOURCE})"
            )
        loss_fn = UnwantedLoss(cfg, unwanted, tokenizer.pad_token_id, seed + rnd)
        started = time.perf_counter()
        learned = train_lm(
            model,
            wanted,
            cfg.schedule(cfg.steps_per_round, cfg.batch_size),
            tokenizer.pad_token_id,
            seed=seed + rnd,
            desc=f"round {rnd}: training",
            loss_fn=loss_fn,
        )
        record = {
            "round": rnd,
            "sampled": len(ro.rewards) + ro.dropped,
            "sample_reward": float(np.mean(ro.rewards)) if ro.rewards else None,
            "pool_size": len(pool),
            "wanted": len(wanted),
            "unwanted": len(unwanted),
            "train_seconds": time.perf_counter() - started,
            **learned,
            **summarise(loss_fn.history),
        }
        stats["rounds"].append(record)
        tqdm.write(f"round {rnd}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)))
    stats["sample_tokens_per_second"] = stats["sample_tokens"] / max(stats["sample_seconds"], 1e-9)
    return stats


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    set_seed(seed)
    cfg = from_dict(UnlikelihoodConfig, hparams, SOURCE)
    model, tokenizer = load_model(base_model, device)
    started = time.perf_counter()
    if task.name == "repetition":
        stats = train_repetition(model, tokenizer, task, cfg, seed)
    else:
        stats = train_rewarded(model, tokenizer, task, cfg, seed)
    stats["seconds"] = time.perf_counter() - started
    stats["config"] = asdict(cfg)
    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_json(out_dir / "train_stats.json", stats)
    return model_dir
