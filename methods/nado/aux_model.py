"""NADO's auxiliary model R (Meng, Lu, Peng, Chang. NeurIPS 2022), shared by NADO decoding and ACF fine-tuning.

For a prefix x<t, R gives at once, for every candidate next token v, the probability R(x<t, v) that a completion of
x<t that continues with v satisfies the constraint. For the model p that the training samples came from, the
distribution conditioned on satisfying the constraint factorises token by token (NADO, Sec. 3):

    q*(v | x<t) = p(v | x<t) R(x<t, v) / R(x<t)  ∝  p(v | x<t) R(x<t, v)

so one softmax of log p + log R over the full vocabulary gives it; the normaliser R(x<t) cancels.

R here is the first `r_layers` decoder layers of the base model (copied: same tokenizer, a warm start), its final
norm, and a vocabulary-sized linear head initialised at zero, then a sigmoid: R = 0.5 everywhere at the start, so
q* = p until R has learned something. R is trained on sampled completions labelled by the task's reward: binary
cross-entropy at every completion position on R(x<t, x_t) against the sequence's label, and optionally NADO's
consistency term, which pulls R(x<=t) towards its one-step expectation sum_v p(v | x<=t) R(x<=t, v).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModel,
    DynamicCache,
    LogitsProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from core.data import iter_jsonl
from core.errors import SuiteError
from core.models import encode_prompts
from core.sampling import Packed, completion_logits, pack
from core.speed import adamw
from methods.common.base_samples import base_samples, scored, split_prompts
from methods.common.kl import masked_mean
from methods.common.lm import shuffled_batches
from methods.common.probe import concordance
from methods.common.rollout import sample_and_score
from methods.common.task import Task

HEAD_FILE = "r_head.safetensors"


@dataclass
class AuxConfig:
    """R's architecture, its training data and its training; NADO's and ACF's configs extend it."""

    r_layers: int = field(default=2, metadata={"help": "decoder layers of the base model that R copies (its first)"})
    r_freeze_embeddings: bool = field(
        default=True, metadata={"help": "keep R's token embeddings at the base model's (fewer weights to fit)"}
    )
    r_steps: int = field(default=100, metadata={"help": "gradient steps each time R is trained"})
    r_batch_size: int = field(default=32, metadata={"help": "sampled sequences per R step"})
    r_lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate for R"})
    r_warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps for R, then linear decay to 0"})
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "completions drawn per chosen prompt: several give R the within-prompt contrast "
            "that tells the completion's part from the prompt's"
        },
    )
    r_probe_prompts: int = field(
        default=0,
        metadata={
            "help": "training prompts kept out of R's data; R's AUCs on their samples (samples_per_"
            "prompt each, drawn with the rest) are logged; 0: none"
        },
    )
    label_threshold: float | None = field(
        default=None, metadata={"help": "None: the reward itself is R's soft label; else 1 if reward >= threshold"}
    )
    consistency_coef: float = field(
        default=0.0, metadata={"help": "weight of NADO's consistency term R(x<=t) ~ sum_v p(v|x<=t) R(x<=t, v)"}
    )
    sample_top_p: float = field(default=1.0, metadata={"help": "nucleus top-p of R's training samples (1.0: p)"})
    sample_batch_size: int = field(default=64, metadata={"help": "sequences per generate() call while sampling"})
    max_prompt_tokens: int = field(default=32, metadata={"help": "prompts are cut from the left to this length"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for sampling and training"})


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Loading the first layers of a checkpoint makes transformers list every unused key: silence it."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def autocast(device: str, enabled: bool):
    return torch.autocast("cpu" if device == "cpu" else "cuda", dtype=torch.bfloat16, enabled=enabled)


class AuxModel(nn.Module):
    """R: a headless transformer (the base model's first layers) under a zero-initialised vocabulary-sized head."""

    def __init__(self, backbone: PreTrainedModel, vocab_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, vocab_size)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_base(
        cls, base_dir: str | Path, num_layers: int, device: str = "cpu", base_rate: float | None = None
    ) -> AuxModel:
        """A fresh R on the base model's first `num_layers` layers: head zero, so R = 0.5 and q* = p everywhere.

        `base_rate` (the mean label R is about to be fit on) sets every token's bias to its logit instead: R is still
        the same for every token, so q* = p still, but a token that R never sees in training stays at the base rate
        rather than at 0.5, which q* would read as a penalty against every rarely sampled token.
        """
        total = AutoConfig.from_pretrained(base_dir).num_hidden_layers
        if not 1 <= num_layers <= total:
            raise SuiteError(f"r_layers must be in 1..{total} (the base model's layers), got {num_layers}")
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(base_dir, num_hidden_layers=num_layers, dtype=torch.float32)
        aux = cls(backbone, backbone.get_input_embeddings().num_embeddings)
        if base_rate is not None:
            rate = min(max(base_rate, 1e-3), 1 - 1e-3)
            nn.init.constant_(aux.head.bias, math.log(rate / (1 - rate)))
        return aux.to(device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> AuxModel:
        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise SuiteError(f"{path} holds no auxiliary model R (no {HEAD_FILE})")
        with quiet_transformers():
            backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        head = load_file(path / HEAD_FILE)
        aux = cls(backbone, head["weight"].shape[0])
        aux.head.load_state_dict(head)
        return aux.to(device).eval()

    def save(self, path: str | Path) -> None:
        self.backbone.save_pretrained(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}, Path(path) / HEAD_FILE)

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, keep: int | None = None):
        """R's logits, [B, T (or the last `keep`), V]: entry v at position t is logit R(x<=t, v); and the cache."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        hidden = out.last_hidden_state if keep is None else out.last_hidden_state[:, -keep:]
        return self.head(hidden), out.past_key_values


def completion_r_logits(aux: AuxModel, packed: Packed) -> torch.Tensor:
    """R's logits at the positions that predict each completion token, [B, C, V] (the head runs only there)."""
    C = packed.completion_ids.shape[1]
    logits, _ = aux(packed.input_ids, packed.attention_mask, packed.position_ids(), keep=C + 1)
    return logits[:, :-1]


def completion_r_taken(aux: AuxModel, packed: Packed) -> torch.Tensor:
    """logit R(x<t, x_t) for each completion token, [B, C]: the head's rows of the taken tokens only, so training
    without the consistency term never builds the [B, C, V] logits."""
    C = packed.completion_ids.shape[1]
    out = aux.backbone(
        input_ids=packed.input_ids,
        attention_mask=packed.attention_mask,
        position_ids=packed.position_ids(),
        use_cache=False,
    )
    hidden = out.last_hidden_state[:, -C - 1 : -1]  # [B, C, H], the positions that predict the completion
    ids = packed.completion_ids
    return (hidden * aux.head.weight[ids]).sum(-1) + aux.head.bias[ids]


def target_logprobs(logits: torch.Tensor, r_logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """log q*(v | x<t) = log_softmax(log p + alpha log R) over the vocabulary (alpha = 1 is NADO's q*)."""
    return F.log_softmax(logits.float() + alpha * F.logsigmoid(r_logits.float()), dim=-1)


def kl_to_target(
    logits: torch.Tensor, r_logits: torch.Tensor, anchor_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(q* || p_theta) per position, [B, C], exact over the vocabulary; q* is the anchor reweighted by R.

    The anchor is a fixed model's logits (the base model's, as the ACF authors' `PR_finetune` builds its teacher)
    or, when None, p_theta's own, detached. q* is held fixed either way: the gradient reaches p_theta only through
    log p_theta, and pulls it towards q*.
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)
    anchor = logits.detach() if anchor_logits is None else anchor_logits.detach()
    target = target_logprobs(anchor, r_logits.detach())
    return (target.exp() * (target - logprobs)).sum(-1)


def target_nll(model: PreTrainedModel, aux: AuxModel, packed: Packed, alpha: float = 1.0) -> torch.Tensor:
    """Per-token NLL of the completions under q*, [B, C] (NADO's utility: q*'s perplexity on held-out text)."""
    logq = target_logprobs(completion_logits(model, packed), completion_r_logits(aux, packed), alpha)
    return -logq.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1)


def r_loss(
    taken: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    r_logits: torch.Tensor | None = None,
    p_logits: torch.Tensor | None = None,
    consistency_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """R's training loss on sampled completions.

    taken, mask: [B, C] logit R(x<t, x_t) of each completion token and the completion mask; labels: [B] in [0, 1];
    for the consistency term only, r_logits and p_logits: [B, C, V] R's logits and the sampling model's at the same
    positions.
    """
    mask = mask.float()
    taken = taken.float()
    target = labels.float().unsqueeze(-1).expand_as(taken)
    bce = masked_mean(F.binary_cross_entropy_with_logits(taken, target, reduction="none"), mask)
    stats = {"bce": bce.item(), "r_taken": masked_mean(torch.sigmoid(taken), mask).item()}
    loss = bce
    if consistency_coef and p_logits is not None and r_logits is not None:
        # R(x<=t), read off at position t, against sum_v p(v | x<=t) R(x<=t, v) at position t + 1: the Bernoulli KL
        # of NADO's reference code (its `reg_loss`); both sides get gradients, as there.
        expect = (F.softmax(p_logits[:, 1:].float(), -1) * torch.sigmoid(r_logits[:, 1:].float())).sum(-1)
        expect = expect.clamp(1e-6, 1 - 1e-6)
        amortised = taken[:, :-1]
        kl = expect * (expect.log() - F.logsigmoid(amortised)) + (1 - expect) * (
            torch.log1p(-expect) - F.logsigmoid(-amortised)
        )
        consistency = masked_mean(kl, mask[:, 1:])
        loss = loss + consistency_coef * consistency
        stats["consistency"] = consistency.item()
    return loss, stats


def sample_prompts(candidates: list[int], n: int, per_prompt: int, rng: np.random.Generator) -> list[int]:
    """n prompt indices, each chosen prompt `per_prompt` times in a row: shuffled passes over the candidates, so
    every prompt is used before any repeats."""
    order: list[int] = []
    while len(order) * per_prompt < n:
        order += rng.permutation(candidates).tolist()
    return [i for i in order for _ in range(per_prompt)][:n]


def collect_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    n: int,
    cfg: AuxConfig,
    rng: np.random.Generator,
    desc: str = "sampling",
    probe_seed: int = 0,
    base: bool = False,
) -> tuple[list[dict], dict]:
    """Sample n completions (`cfg.samples_per_prompt` per chosen prompt) and R's probe set, and score them; returns
    (samples, stats).

    A sample is {prompt_id, prompt, prompt_ids, completion_ids, text, reward, probe}; `probe` marks the samples of
    the run's probe split (methods/common/base_samples.py, fixed by `probe_seed`, the run's seed), which R never
    trains on. With `base`, `model` is the base model and the samples are the run's base samples: the task's shared
    set where it holds them. Samples whose reward is None are dropped and counted.
    """
    settings = dict(
        probe_prompts=cfg.r_probe_prompts,
        probe_samples_per_prompt=cfg.samples_per_prompt,
        max_prompt_tokens=cfg.max_prompt_tokens,
        top_p=cfg.sample_top_p,
        batch_size=cfg.sample_batch_size,
        bf16=cfg.bf16,
    )
    if base:
        train, probe, stats = base_samples(
            task, model, tokenizer, n, cfg.samples_per_prompt, probe_seed, desc, **settings
        )
        rows, stats["dropped_unscored"] = (
            scored(probe) + scored(train),
            len(probe) + len(train) - len(scored(probe + train)),
        )
    else:
        device = str(next(model.parameters()).device)
        texts = [p.text for p in task.train_prompts]
        prefixes = encode_prompts(tokenizer, texts, cfg.max_prompt_tokens)
        sampling = replace(task.sampling, top_p=cfg.sample_top_p, do_sample=True, batch_size=cfg.sample_batch_size)
        probe, rest = split_prompts(len(texts), cfg.r_probe_prompts, probe_seed)
        chosen = [i for i in probe for _ in range(cfg.samples_per_prompt)]
        chosen += sample_prompts(sorted(rest), n, cfg.samples_per_prompt, rng)
        with autocast(device, cfg.bf16):
            ro = sample_and_score(model, tokenizer, task.reward, texts, prefixes, chosen, sampling, desc=desc)
        held_out = set(probe)
        rows = [
            {"prompt_id": task.train_prompts[i].id, "prompt": texts[i], "prompt_ids": prefixes[i]}
            | {"completion_ids": c, "text": t, "reward": r, "probe": i in held_out}
            for i, c, t, r in zip(ro.prompt_index, ro.completions, ro.texts, ro.rewards)
        ]
        stats = {
            "dropped_unscored": ro.dropped,
            "tokens": ro.tokens,
            "sample_seconds": ro.seconds,
            "tokens_per_second": ro.tokens / max(ro.seconds, 1e-9),
        }
    if not rows:
        raise SuiteError(f"{desc}: the reward returned None for every sample")
    samples = [{k: row[k] for k in SAMPLE_KEYS} for row in rows]
    stats |= {
        "samples": len(samples),
        "probe_samples": sum(s["probe"] for s in samples),
        "mean_reward": float(np.mean([s["reward"] for s in samples])),
    }
    return samples, stats


SAMPLE_KEYS = ("prompt_id", "prompt", "prompt_ids", "completion_ids", "text", "reward", "probe")


def read_samples(path: str | Path) -> list[dict]:
    rows = [row for _, row in iter_jsonl(path)]
    if not rows:
        raise SuiteError(f"{path}: no samples")
    return rows


def split_probe(samples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(R's training samples, R's probe samples)."""
    return [s for s in samples if not s.get("probe")], [s for s in samples if s.get("probe")]


@torch.no_grad()
def r_scores(
    aux: AuxModel, anchor: PreTrainedModel, samples: list[dict], pad_id: int, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, (logit R(x<T, x_T) at the completion's last token, the tilt sum_t log q*(y_t|.) - log p(y_t|.))
    with q* ∝ p R and p the `anchor` model; `r_auc` ranks them."""
    device = next(aux.parameters()).device
    was_training = aux.training
    aux.eval()
    seq, tilt = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        packed = pack([s["prompt_ids"] for s in chunk], [s["completion_ids"] for s in chunk], pad_id).to(device)
        r_logits = completion_r_logits(aux, packed).float()
        p_logits = completion_logits(anchor, packed).float()
        ids, mask = packed.completion_ids.unsqueeze(-1), packed.completion_mask.float()
        taken = r_logits.gather(-1, ids).squeeze(-1)  # [B, C]
        last = (mask.sum(-1).long() - 1).clamp(min=0)
        seq.append(taken[torch.arange(len(chunk)), last].cpu().numpy())
        log_ratio = target_logprobs(p_logits, r_logits).gather(-1, ids) - F.log_softmax(p_logits, -1).gather(-1, ids)
        tilt.append((log_ratio.squeeze(-1) * mask).sum(-1).cpu().numpy())
    aux.train(was_training)
    return np.concatenate(seq), np.concatenate(tilt)


def r_auc(aux: AuxModel, anchor: PreTrainedModel, samples: list[dict], pad_id: int) -> dict:
    """R's AUCs against the reward on scored samples it never trained on (concordance: 0.5 is chance, 1 perfect).

    r_auc, r_auc_within   R(x<T, x_T), R's estimate at the last token that the whole completion satisfies, ranked
                          over all pairs of samples, and over pairs of one prompt's samples only
    r_auc_token           the tilt that decoding applies, log q*(y|x) - log p(y|x) summed over the completion's
                          tokens, ranked within prompt: whether R's token-level decomposition favours a prompt's
                          better continuations
    """
    seq, tilt = r_scores(aux, anchor, samples, pad_id)
    rewards, groups = [s["reward"] for s in samples], [s["prompt_id"] for s in samples]
    return {
        "r_auc": concordance(seq, rewards),
        "r_auc_within": concordance(seq, rewards, groups),
        "r_auc_token": concordance(tilt, rewards, groups),
        "r_probe_samples": len(samples),
    }


def labels_of(samples: list[dict], threshold: float | None) -> list[float]:
    """R's label per sample: the reward (soft), or 1/0 against the threshold."""
    return [s["reward"] if threshold is None else float(s["reward"] >= threshold) for s in samples]


def base_rate(samples: list[dict], threshold: float | None) -> float:
    """The mean label of R's training samples (probe samples left out): a fresh R's starting bias."""
    return float(np.mean(labels_of(split_probe(samples)[0], threshold)))


def fit_aux(
    aux: AuxModel,
    samples: list[dict],
    cfg: AuxConfig,
    pad_id: int,
    *,
    sampler: PreTrainedModel | None = None,
    anchor: PreTrainedModel | None = None,
    seed: int = 0,
    desc: str = "training R",
) -> dict[str, float]:
    """Train R on labelled samples (AdamW, linear warm-up and decay); `sampler` is the model they came from, needed
    for the consistency term only. With `anchor`, the model q* reweights (the base model), R's AUCs on the probe
    samples, which it never trains on, are measured after training (`r_auc`). Returns the first- and last-tenth
    means of the loss terms, and the AUCs.
    """
    device = str(next(aux.parameters()).device)
    samples, probe = split_probe(samples)
    if cfg.r_freeze_embeddings:
        aux.backbone.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in aux.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.r_lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.r_warmup_steps, cfg.r_steps), cfg.r_steps)
    labels = torch.tensor(labels_of(samples, cfg.label_threshold))
    use_sampler = bool(cfg.consistency_coef) and sampler is not None
    rng = np.random.default_rng(seed)
    batches = shuffled_batches(len(samples), cfg.r_batch_size, rng)
    history: list[dict[str, float]] = []
    aux.train()
    started = time.perf_counter()
    for _ in tqdm(range(cfg.r_steps), desc=desc, leave=False):
        idx = next(batches)
        packed = pack([samples[i]["prompt_ids"] for i in idx], [samples[i]["completion_ids"] for i in idx], pad_id)
        packed = packed.to(device)
        with autocast(device, cfg.bf16):
            if use_sampler:  # the consistency term needs R's and p's logits over the vocabulary
                r_logits = completion_r_logits(aux, packed)
                taken = r_logits.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1)
                with torch.no_grad():
                    p_logits = completion_logits(sampler, packed)
            else:
                r_logits = p_logits = None
                taken = completion_r_taken(aux, packed)
        loss, stats = r_loss(
            taken, packed.completion_mask, labels[idx].to(device), r_logits, p_logits, cfg.consistency_coef
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append(stats)
    aux.eval()
    seconds = time.perf_counter() - started
    tenth = max(1, len(history) // 10)
    out = {f"{k}_first": float(np.mean([h[k] for h in history[:tenth]])) for k in history[0]} if history else {}
    out |= {f"{k}_last": float(np.mean([h[k] for h in history[-tenth:]])) for k in history[0]} if history else {}
    out |= {"r_steps": cfg.r_steps, "r_seconds": seconds, "label_mean": float(labels.mean())}
    if probe and anchor is not None:
        out |= r_auc(aux, anchor, probe, pad_id)
    return out


class NadoLogitsProcessor(LogitsProcessor):
    """Turns the model's next-token scores into log q* = log p + alpha log R.

    Runs inside `sampling.sample` after its EOS and reward-token suppression and before its temperature and top-p,
    so the nucleus is q*'s, as in NADO. R keeps its own key-value cache across the steps of one batch.
    Its attention mask is rebuilt the way `sampling.sample` builds the base model's: left padding is the run of pad
    tokens at the start of a row (pad == EOS), and every generated token counts, as in generate().
    """

    def __init__(self, aux: AuxModel, pad_id: int, alpha: float = 1.0):
        self.aux, self.pad_id, self.alpha = aux, pad_id, alpha
        self._ids = self._mask = self._cache = None

    @torch.no_grad()
    def r_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """R's logits for the next token of every row, [B, V], reusing the cache when input_ids extends the last."""
        prev = self._ids
        if prev is not None and input_ids.shape[1] == prev.shape[1] + 1 and torch.equal(input_ids[:, :-1], prev):
            self._mask = torch.cat([self._mask, self._mask.new_ones(len(input_ids), 1)], dim=1)
            new_ids = input_ids[:, -1:]
        else:  # a new generate() call
            self._mask = (input_ids != self.pad_id).long().cummax(dim=-1).values
            self._cache, new_ids = DynamicCache(config=self.aux.backbone.config), input_ids
        position_ids = (self._mask.cumsum(-1) - 1).clamp(min=0)[:, -new_ids.shape[1] :]
        logits, self._cache = self.aux(new_ids, self._mask, position_ids, past_key_values=self._cache, keep=1)
        self._ids = input_ids
        return logits[:, -1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return target_logprobs(scores, self.r_logits(input_ids), self.alpha)
