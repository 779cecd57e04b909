"""Language-model fine-tuning on (prefix, target) token-id pairs, with the loss on target tokens only.

Plain fine-tuning, DExperts' experts, GeDi's class-conditional LM and return-conditioned training all reduce to it:
what differs is the prefix (nothing, a control code, a return token, a prompt) and which texts are targets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from core.sampling import Packed, completion_logits, pack
from core.speed import adamw

Pair = tuple[Sequence[int], Sequence[int]]  # (prefix ids, target ids)


@dataclass(frozen=True)
class LMSchedule:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    bf16: bool = False


def encode_texts(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text, cut to its first `max_tokens` tokens; empty texts dropped."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [x[:max_tokens] for x in ids if x]


def target_nll(model: PreTrainedModel, packed: Packed, vocab_size: int | None = None) -> torch.Tensor:
    """Per-token NLL of the targets given their prefixes, [B, C]; zero where `packed.completion_mask` is 0.

    `vocab_size` cuts the logits to the first V entries (a model with added special tokens, scored on the
    original vocabulary).
    """
    logits = completion_logits(model, packed)
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    nll = -logprobs.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1)
    return nll * packed.completion_mask


def shuffled_batches(n: int, size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Batches of `size` indices into range(n), epoch after epoch, each epoch a fresh permutation from `rng`; a batch
    may span two epochs."""
    order: list[int] = []
    while True:
        while len(order) < size:
            order += rng.permutation(n).tolist()
        yield order[:size]
        order = order[size:]


def train_lm(
    model: PreTrainedModel,
    pairs: list[Pair],
    schedule: LMSchedule,
    pad_id: int,
    *,
    seed: int = 0,
    desc: str = "fine-tuning",
    loss_fn: Callable[[PreTrainedModel, Packed], torch.Tensor] | None = None,
) -> dict[str, float]:
    """AdamW with linear warm-up and decay over `schedule.steps` batches drawn in shuffled epochs from `pairs`.

    The default loss is the mean target-token NLL; `loss_fn(model, packed)` replaces it (a scalar to minimise).
    Returns the mean loss of the first and last tenth of the steps and the throughput in sequences/s.
    """
    if not pairs:
        raise ValueError("train_lm needs at least one (prefix, target) pair")
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    optimizer = adamw(
        [p for p in model.parameters() if p.requires_grad], lr=schedule.lr, weight_decay=schedule.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, min(schedule.warmup_steps, schedule.steps), schedule.steps)
    batches = shuffled_batches(len(pairs), schedule.batch_size, rng)
    losses = []
    model.train()
    started = time.perf_counter()
    for _ in tqdm(range(schedule.steps), desc=desc, leave=False):
        idx = next(batches)
        packed = pack([list(pairs[i][0]) for i in idx], [list(pairs[i][1]) for i in idx], pad_id)
        packed = packed.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=schedule.bf16):
            if loss_fn is None:
                loss = target_nll(model, packed).sum() / packed.completion_mask.sum().clamp(min=1)
            else:
                loss = loss_fn(model, packed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if schedule.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    tenth = max(1, len(losses) // 10)
    seconds = time.perf_counter() - started
    return {
        "loss_first": float(np.mean(losses[:tenth])),
        "loss_last": float(np.mean(losses[-tenth:])),
        "sequences_per_second": schedule.steps * schedule.batch_size / max(seconds, 1e-9),
    }
