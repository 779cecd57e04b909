"""Sampling completions and packing (prefix, completion) pairs into model inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import (
    Cache,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StaticCache,
)

from core.speed import flash_attention


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 20
    top_p: float = 0.9
    min_new_tokens: int = 0  # EOS is suppressed until then; the repetition task asks for fixed-length continuations
    temperature: float = 1.0
    do_sample: bool = True
    batch_size: int = 50


def eval_sampling(settings: dict, decoding: str = "sampling") -> tuple[Sampling, int]:
    """(Sampling, samples per prompt) from a task's eval settings: nucleus sampling, or one greedy continuation.

    `fixed_length` suppresses EOS until `max_new_tokens`, as the unlikelihood paper's fixed-length continuations.
    """
    length = settings["max_new_tokens"]
    common = dict(
        max_new_tokens=length,
        batch_size=settings["batch_size"],
        min_new_tokens=length if settings.get("fixed_length") else 0,
    )
    if decoding == "greedy":
        return Sampling(do_sample=False, top_p=1.0, **common), 1
    return Sampling(top_p=settings["top_p"], **common), settings["num_samples"]


def train_sampling(settings: dict) -> Sampling:
    """How training jobs sample (the config's `train_sampling`, kept apart from `eval` so that a new evaluation
    never retrains): nucleus sampling with the same keys as the evaluation's sampled decoding."""
    return eval_sampling({**settings, "num_samples": 1})[0]


@dataclass
class Packed:
    """(prefix, completion) pairs laid out as [left pad | prefix | completion | right pad].

    Every completion starts at column `prefix_len`, so the logits that predict completion
    tokens are the `completion_len` positions before it: `logits_to_keep = completion_len + 1`.
    """

    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    completion_ids: torch.Tensor  # [B, C], pad where mask is 0
    completion_mask: torch.Tensor  # [B, C]
    prefix_len: int

    def to(self, device) -> Packed:
        return Packed(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in vars(self).values()))

    def position_ids(self, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = self.attention_mask if attention_mask is None else attention_mask
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def prefix_lengths(self) -> torch.Tensor:
        return self.attention_mask[:, : self.prefix_len].sum(1)

    def rows(self, idx: torch.Tensor) -> Packed:
        """The rows `idx`, less the leading columns that are padding in all of them.

        Completions stay aligned (they start at the new `prefix_len`), so [B, C] tensors of the batch index as before.
        Rows of similar prompt length, taken together, then cost no compute for the longest prompt of the whole batch.
        """
        cut = self.prefix_len - int(self.prefix_lengths()[idx].max())
        return Packed(
            self.input_ids[idx, cut:],
            self.attention_mask[idx, cut:],
            self.completion_ids[idx],
            self.completion_mask[idx],
            self.prefix_len - cut,
        )


def pack(prefixes: list[list[int]], completions: list[list[int]], pad_id: int) -> Packed:
    P = max(len(p) for p in prefixes)
    C = max(max(len(c) for c in completions), 1)
    B = len(prefixes)
    input_ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prefixes, completions)):
        input_ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        input_ids[i, P : P + len(c)] = torch.tensor(c, dtype=torch.long)
        attention_mask[i, P - len(p) : P + len(c)] = 1
    return Packed(input_ids, attention_mask, input_ids[:, P:], attention_mask[:, P:], P)


def completion_logits(
    model: PreTrainedModel, packed: Packed, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits predicting each completion token, computed only at those positions: [B, C, V]."""
    mask = packed.attention_mask if attention_mask is None else attention_mask
    C = packed.completion_ids.shape[1]
    out = model(
        input_ids=packed.input_ids,
        attention_mask=mask,
        position_ids=packed.position_ids(mask),
        logits_to_keep=C + 1,
        use_cache=False,
    )
    return out.logits[:, :-1]


def _trim(ids: list[int], eos_id: int | None, pad_id: int | None) -> list[int]:
    """Cut a generated row after its first EOS (kept); drop right padding if pad differs from EOS."""
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    if pad_id is not None and pad_id != eos_id:
        while ids and ids[-1] == pad_id:
            ids = ids[:-1]
    return ids


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as generate() takes them: [left pad | prompt] ids and their attention mask, both [B, P]."""
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prefixes: list[list[int]],
    sampling: Sampling,
    suppress_ids: list[int] | None = None,
    desc: str = "sampling",
    logits_processor: list | None = None,
) -> list[list[int]]:
    """Sample one completion per prefix; returns the sampled token ids, never re-tokenised text.

    Draws from the distribution `sample_generate` (model.generate()) draws from, with the same forward passes (into a
    KV cache allocated once per batch, `kv_cache`), but
    without generate()'s top-p sort of the vocabulary and multinomial noise over it, which on a CPU cost about as much
    as the mini model's forward pass at batch 64 (workflow/scripts/bench.py measures the difference).
    Scores go through generate()'s order: EOS suppressed before `min_new_tokens`, `suppress_ids` suppressed, then
    `logits_processor` (transformers `LogitsProcessor`s, called with all ids so far), then temperature and top-p.
    Decoding-time methods (DExperts, GeDi, NADO) plug in there and so see unfiltered, untempered scores; a method
    that must filter after its own reweighting passes top_p=1.0 and temperature 1.0 and does both itself.
    """
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: list[list[int]] = []
    for start in tqdm(range(0, len(prefixes), sampling.batch_size), desc=desc, unit="batch", leave=False):
        ids, mask = _left_pad(prefixes[start : start + sampling.batch_size], pad)
        with flash_attention():  # the faster kernel for decoding on CPU (core/speed.py)
            new = _decode(
                model, ids.to(device), mask.to(device), sampling, eos, pad, suppress_ids, logits_processor or []
            )
        out.extend(_trim(row, eos, pad) for row in new.tolist())
    return out


class AutocastCache(StaticCache):
    """A StaticCache that stores keys and values in `dtype`, autocast's: attention under autocast casts the cached
    fp32 keys and values to it anyway, all of them at every step (in the mini model, 14 ms of an 85 ms decode step at
    batch 64); cast once on the way in, they give the same attention, bit for bit (tests/core/test_sampling.py)."""

    def __init__(self, config, max_cache_len: int, dtype: torch.dtype):
        super().__init__(config=config, max_cache_len=max_cache_len)
        self.store = dtype  # not `dtype`: accelerate casts any model output with a bf16 `dtype` to fp32

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return super().update(key_states.to(self.store), value_states.to(self.store), layer_idx, *args, **kwargs)


def kv_cache(model: PreTrainedModel, length: int) -> Cache:
    """transformers' StaticCache of `length` positions: allocated once and written in place, where a DynamicCache
    concatenates every layer's keys and values anew at each step. The logits agree up to rounding: in fp32 the tiny
    test model draws the same tokens with either (tests/core/test_sampling.py), the mini model now and then one
    other token, after which its batch's later draws shift. workflow/scripts/bench.py times both.
    Under autocast the cache holds autocast's dtype (`AutocastCache`)."""
    config = model.config.get_text_config(decoder=True)
    device = next(model.parameters()).device.type
    if torch.is_autocast_enabled(device):
        return AutocastCache(config, length, torch.get_autocast_dtype(device))
    return StaticCache(config=config, max_cache_len=length)


def _decode(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sampling: Sampling,
    eos: int | None,
    pad: int,
    suppress_ids: list[int] | None,
    processors: list,
) -> torch.Tensor:
    """The generated ids [B, <= max_new_tokens] after left-padded prompts `ids` [B, P]; pad after a row's EOS."""
    P = ids.shape[1]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate(): a pad sits at position 0
    cache = kv_cache(model, P + sampling.max_new_tokens)
    step_inputs = dict(input_ids=ids, attention_mask=mask, position_ids=positions)
    suppress = torch.tensor(suppress_ids or [], dtype=torch.long, device=ids.device)
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    for step in range(sampling.max_new_tokens):
        logits = model(**step_inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        scores = logits.float()  # [B, V]; a copy only under bf16 autocast, where generate() also scores in fp32
        if eos is not None and step < sampling.min_new_tokens:
            scores[:, eos] = -float("inf")
        if len(suppress):
            scores.index_fill_(1, suppress, -float("inf"))
        for processor in processors:
            scores = processor(ids, scores)
        if sampling.do_sample:
            if sampling.temperature != 1.0:
                scores = scores / sampling.temperature
            tokens = _draw(scores, sampling.top_p)
        else:
            tokens = scores.argmax(-1)
        tokens = tokens.masked_fill(done, pad)
        ids = torch.cat([ids, tokens[:, None]], dim=1)
        if eos is not None:
            done |= tokens == eos
            if done.all():
                break
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step_inputs = dict(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions)
    return ids[:, P:]


def _draw(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """One token per row of `scores` [B, V] from softmax(scores) restricted to the top-p nucleus, as
    TopPLogitsWarper and torch.multinomial in generate(), without their sort and noise over the whole vocabulary.

    A token is drawn by inverse CDF from the unfiltered distribution and drawn again while it falls outside the
    nucleus: rejection leaves exactly the renormalised nucleus, and a row is redrawn with probability at most
    1 - top_p. The nucleus test is the warper's: a token is out when the mass of the tokens no more likely than it
    is at most 1 - top_p (compared in fp32, as the warper does), the most likely token always in. The softmax is
    the warper's fp32 one; its sums are accumulated in fp64: an fp32 sum over 49k tokens in vocabulary order is
    off by ~1e-6, which moved the boundary token in 2 of 384 rows of the mini model at top_p 0.95, where the
    warper's sorted one agrees with fp64. Every pass over the vocabulary is made once per step for all rows; a
    redrawn row's alone (workflow/scripts/bench.py times it).
    """
    probs = scores.softmax(-1)
    cdf = probs.cumsum(-1, dtype=torch.float64)
    if cdf[:, -1].isnan().any():
        raise ValueError("sampling: a row's scores are all -inf or NaN (a logits processor removed every token)")
    tokens = torch.empty(len(probs), dtype=torch.long, device=probs.device)
    rows = torch.arange(len(probs), device=probs.device)
    while len(rows):
        whole = len(rows) == len(probs)  # the first draw: no copies of the [B, V] tensors
        p, c = (probs, cdf) if whole else (probs[rows], cdf[rows])
        u = torch.rand(len(rows), 1, dtype=torch.float64, device=probs.device) * c[:, -1:]
        drawn = torch.searchsorted(c, u, right=True).squeeze(1)
        ok = drawn < probs.shape[1]  # u rounded up to the total: draw again
        drawn = drawn.clamp(max=probs.shape[1] - 1)
        if top_p < 1.0:
            p_drawn = p.gather(1, drawn[:, None])
            below = (p * (p <= p_drawn)).sum(-1, dtype=torch.float64).float()
            ok &= (below > 1 - top_p) | (p_drawn.squeeze(1) == p.amax(-1))
        tokens[rows[ok]] = drawn[ok]
        rows = rows[~ok]
    return tokens


@torch.no_grad()
def sample_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prefixes: list[list[int]],
    sampling: Sampling,
    suppress_ids: list[int] | None = None,
    desc: str = "sampling",
    logits_processor: list | None = None,
) -> list[list[int]]:
    """`sample` through model.generate(): the reference it is tested and benchmarked against."""
    config = GenerationConfig(
        do_sample=sampling.do_sample,
        top_p=sampling.top_p if sampling.do_sample else None,
        top_k=0 if sampling.do_sample else None,
        temperature=sampling.temperature if sampling.do_sample else None,
        max_new_tokens=sampling.max_new_tokens,
        min_new_tokens=sampling.min_new_tokens or None,
        suppress_tokens=suppress_ids or None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in tqdm(range(0, len(prefixes), sampling.batch_size), desc=desc, unit="batch", leave=False):
        ids, mask = _left_pad(prefixes[start : start + sampling.batch_size], tokenizer.pad_token_id)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            logits_processor=LogitsProcessorList(logits_processor or []),
        )
        for row in gen[:, ids.shape[1] :].tolist():
            out.append(_trim(row, tokenizer.eos_token_id, tokenizer.pad_token_id))
    return out


def generation_records(
    tokenizer: PreTrainedTokenizerBase, prompts: list, completions: list[list[int]], num_samples: int
) -> list[dict]:
    """JSONL records for `num_samples` completions per prompt, in prompt-major order."""
    records = []
    for k, ids in enumerate(completions):
        prompt = prompts[k // num_samples]
        records.append(
            {
                "prompt_id": prompt.id,
                "prompt": prompt.text,
                "sample": k % num_samples,
                "text": tokenizer.decode(ids, skip_special_tokens=True),
                "token_ids": ids,
            }
        )
    return records
