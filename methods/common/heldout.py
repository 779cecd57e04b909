"""Utility next to the attribute: perplexity on a fixed held-out slice of the task's corpus.

Methods that fine-tune on the corpus (finetune, ACF) train on everything but this slice, and every row reports its
perplexity on it, so the rows compare: the slice depends on the corpus only, never on the method or the seed.
For toxicity and repetition the slice is clean text (score above 0.9: non-toxic, not repetitive); for the sentiment
tasks it is any text, because text of one sentiment would favour the models steered towards it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.data import Text
from core.sampling import Packed, pack
from methods.common.lm import Pair, encode_texts, target_nll

HELDOUT_SIZE = 200
HELDOUT_MIN_SCORE = {"toxicity": 0.9, "repetition": 0.9}  # other tasks: any text, labelled or not
MAX_TEXT_TOKENS = 64


def heldout_split(task: str, corpus: list[Text], size: int = HELDOUT_SIZE) -> tuple[list[Text], list[Text]]:
    """(training texts, held-out texts): a fixed random slice of the eligible texts, at most half of them."""
    min_score = HELDOUT_MIN_SCORE.get(task)
    eligible = [i for i, t in enumerate(corpus) if min_score is None or (t.score is not None and t.score > min_score)]
    chosen = set(random.Random(0).sample(eligible, min(size, len(eligible) // 2)))
    train = [t for i, t in enumerate(corpus) if i not in chosen]
    return train, [corpus[i] for i in sorted(chosen)]


def text_pairs(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int = MAX_TEXT_TOKENS) -> list[Pair]:
    """(first token, the rest) of each text: the model is trained and scored on a text given its first token.

    No special token is put in front: the suite prompts models with raw text, and an instruct model's special
    tokens (SmolLM2's <|im_start|>) would open a chat turn.
    """
    return [(ids[:1], ids[1:]) for ids in encode_texts(tokenizer, texts, max_tokens) if len(ids) > 1]


@torch.no_grad()
def perplexity(
    nll_fn: Callable[[Packed], torch.Tensor], pairs: list[Pair], pad_id: int, device: str = "cpu", batch_size: int = 32
) -> float | None:
    """exp(total NLL / total target tokens) over the pairs; `nll_fn(packed)` gives the per-token NLL, [B, C].

    Pairs are batched by length: the sum does not depend on the order, and padding would cost as much as text.
    """
    pairs = sorted(pairs, key=lambda pair: len(pair[0]) + len(pair[1]))
    total, count = 0.0, 0
    for start in tqdm(range(0, len(pairs), batch_size), desc="held-out perplexity", leave=False):
        batch = pairs[start : start + batch_size]
        packed = pack([list(p) for p, _ in batch], [list(t) for _, t in batch], pad_id)
        packed = Packed(*(v.to(device) if isinstance(v, torch.Tensor) else v for v in vars(packed).values()))
        total += float((nll_fn(packed) * packed.completion_mask).sum())
        count += int(packed.completion_mask.sum())
    return math.exp(total / count) if count else None


def model_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[Text], batch_size: int = 32
) -> float | None:
    """A plain language model's perplexity on held-out texts (from `heldout_split`)."""
    device = str(next(model.parameters()).device)
    pairs = text_pairs(tokenizer, [t.text for t in texts])
    return perplexity(lambda packed: target_nll(model, packed), pairs, tokenizer.pad_token_id, device, batch_size)
