"""Conditional perplexity of each completion given its prompt, under the base model (the reference code's fluency)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.errors import SuiteError
from core.models import context_length, encode_prompts
from core.sampling import completion_logits, pack


@torch.no_grad()
def conditional_perplexity(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict], batch_size: int = 32
) -> list[float]:
    """exp(mean NLL of the completion's token ids | prompt), one value per record."""
    vocab = model.get_input_embeddings().num_embeddings
    max_new = max(len(r["token_ids"]) for r in records)
    prompt_ids = encode_prompts(tokenizer, [r["prompt"] for r in records], context_length(model) - max_new)
    out = []
    for start in tqdm(range(0, len(records), batch_size), desc="perplexity", leave=False):
        batch = records[start : start + batch_size]
        completions = [r["token_ids"] for r in batch]
        if any(t >= vocab or t < 0 for c in completions for t in c):
            raise SuiteError(f"generation token ids fall outside the base model's vocabulary of {vocab}")
        packed = pack(prompt_ids[start : start + batch_size], completions, tokenizer.pad_token_id)
        logprobs = F.log_softmax(completion_logits(model, packed).float(), dim=-1)
        token_lp = logprobs.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1)
        mask = packed.completion_mask.float()
        nll = -(token_lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        out += [math.exp(x) for x in nll.tolist()]
    return out
