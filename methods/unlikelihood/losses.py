"""Unlikelihood losses (Welleck et al., ICLR 2020) on the completion tokens of packed (prefix, completion) pairs.

They take per-position log-probabilities, so any trainer that already has them can add a term: this method, and
Quark (`logprobs` over its original vocabulary, `packed` with the reward token in the prefix).

token level     C_t = {x_<t} minus {x_t}: the earlier tokens of the sequence, prefix included, other than the target
                L_t = -sum_{c in C_t} log(1 - p(c | x_<t))
sequence level  x_t is its own candidate if it lies in an n-gram of the completion that occurred earlier in it
                L_t = -[x_t in a repeated n-gram] log(1 - p(x_t | x_<t))
Both return [B, C] per-position terms, zero off the completion; callers normalise (the reference code divides the
summed loss by the number of target tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from core.sampling import Packed

# 1 - p is clamped before the log, as in the reference code (1e-5 at the token level, 1e-20 at the sequence level)
TOKEN_MIN = 1e-5
SEQUENCE_MIN = 1e-20


def previous_context_candidates(packed: Packed, vocab_size: int) -> torch.Tensor:
    """cand[b, i, j]: input column j holds a candidate for the completion token at column P + i, [B, C, L] bool.

    Column j counts if it precedes P + i, is not padding, holds a token below `vocab_size` (control tokens never
    count), differs from the target, and is the first occurrence of its token in the row (so a token that appears
    twice in the context is one candidate, as the reference code's scatter into a 0/1 vocabulary mask makes it).
    """
    ids, valid = packed.input_ids, packed.attention_mask.bool() & (packed.input_ids < vocab_size)  # [B, L]
    L, P = ids.shape[1], packed.prefix_len
    earlier = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril(-1)  # earlier[j, k]: k < j
    seen_before = ((ids[:, :, None] == ids[:, None, :]) & earlier & valid[:, None, :]).any(-1)  # [B, L]
    first = valid & ~seen_before
    precedes = torch.arange(L, device=ids.device)[None, :] < torch.arange(P, L, device=ids.device)[:, None]  # [C, L]
    targets = packed.completion_ids  # [B, C]
    cand = first[:, None, :] & precedes[None] & (ids[:, None, :] != targets[:, :, None])
    return cand & packed.completion_mask.bool()[:, :, None]


def token_unlikelihood(logprobs: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Token-level unlikelihood per completion position, [B, C], with previous-context candidates.

    logprobs: [B, C, V] log-probabilities predicting each completion token (the candidates' ids must be < V).
    """
    B, C, V = logprobs.shape
    cand = previous_context_candidates(packed, V)  # [B, C, L]
    ids = packed.input_ids.clamp(max=V - 1)[:, None, :].expand(B, C, -1)
    cand_logprobs = logprobs.gather(-1, ids)  # [B, C, L]
    penalty = -(1.0 - cand_logprobs.exp()).clamp(min=TOKEN_MIN).log()
    return (penalty * cand).sum(-1)


def repeated_ngram_mask(tokens: Sequence[int], n: int) -> list[bool]:
    """True for every token of an n-gram that already occurred earlier in `tokens` (all n of its tokens)."""
    mask = [False] * len(tokens)
    seen: set[tuple[int, ...]] = set()
    for j in range(len(tokens) - n + 1):
        gram = tuple(tokens[j : j + n])
        if gram in seen:
            mask[j : j + n] = [True] * n
        seen.add(gram)
    return mask


def ngram_candidates(packed: Packed, n: int) -> torch.Tensor:
    """Sequence-level candidates of each completion, [B, C] float: its tokens that lie in a repeated n-gram."""
    out = torch.zeros(packed.completion_ids.shape, dtype=torch.float, device=packed.completion_ids.device)
    for b, (ids, mask) in enumerate(zip(packed.completion_ids.tolist(), packed.completion_mask.tolist())):
        length = sum(mask)
        out[b, :length] = torch.tensor(repeated_ngram_mask(ids[:length], n), dtype=torch.float)
    return out


def sequence_unlikelihood(
    logprobs: torch.Tensor, completion_ids: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """-log(1 - p(x_t | x_<t)) where `candidates` [B, C] is nonzero, [B, C].

    With `ngram_candidates` this is the sequence-level loss; with the completion mask as candidates it pushes down
    every token of a completion (this method's unlikelihood on samples the reward marks as unwanted).
    """
    token_logprobs = logprobs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return -(1.0 - token_logprobs.exp()).clamp(min=SEQUENCE_MIN).log() * candidates


def unlikelihood_term(packed: Packed, level: str, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The [B, C] unlikelihood terms of a batch as a function of the policy's [B, C, V] log-probabilities: 'token'
    (previous-context candidates, Welleck et al.) or 'sequence' (tokens in an n-gram repeated in the completion).
    Quark + UL adds it to Quark's loss; a control token in the prefix has an id >= V, so it is never a candidate."""
    if level == "token":
        return lambda logprobs: token_unlikelihood(logprobs, packed)
    candidates = ngram_candidates(packed, n)
    return lambda logprobs: sequence_unlikelihood(logprobs, packed.completion_ids, candidates)
