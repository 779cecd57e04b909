"""A second language model that reads what generate() writes, token by token, with its own KV cache.

Decoding-time methods (DExperts' experts, GeDi's class-conditional LM) need another model's next-token logits at
every step of the base model's generate(). A `LogitsProcessor` sees only the sequence so far, so this class keeps
the other model in lockstep: on the first call of a batch it reads the whole left-padded prompt (the attention
mask is `input_ids != pad_id`, which holds because pad is EOS and prompts contain no EOS), and on every later call
only the newest token, through its own cache. A call whose tokens do not extend the previous call's starts over,
so one instance serves every batch of a `sample()` run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


class LockstepLM:
    """Next-token logits of `model` for each row of generate()'s batch, one copy of the batch per start token.

    start_ids: tokens put in front of each prompt, one copy of the batch each (GeDi's two class codes); empty for
        a model that reads the prompt as the base model does (DExperts' experts).
    vocab_size: logits are cut to the first `vocab_size` entries (the base vocabulary, without added codes).
    track_loglik: also keep `loglik` [S, B], the summed log-probability of every token read after the start token,
        `length` [B], how many tokens that sum covers (GeDi's class likelihoods of the prefix), and `logprobs`
        [S, B, V], the log-softmax of the last call's logits.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_id: int,
        start_ids: Sequence[int],
        vocab_size: int,
        track_loglik: bool = False,
        row_chunk: int = 16,
    ):
        self.model, self.pad_id, self.vocab_size = model, pad_id, vocab_size
        self.start_ids = list(start_ids)
        self.copies = max(len(self.start_ids), 1)
        self.track_loglik, self.row_chunk = track_loglik, row_chunk
        self.seen: torch.Tensor | None = None  # [B, L] the tokens read so far, as generate() passed them
        self.new_batch = False  # whether the last call started a new batch
        self.loglik: torch.Tensor | None = None
        self.length: torch.Tensor | None = None
        self.logprobs: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of the next token after each row of `input_ids` [B, L], for each copy: [S, B, V]."""
        B, L = input_ids.shape
        self.new_batch = not (
            self.seen is not None and self.seen.shape == (B, L - 1) and torch.equal(input_ids[:, :-1], self.seen)
        )
        hidden = self._prefill(input_ids) if self.new_batch else self._step(input_ids[:, -1:])
        self.seen = input_ids
        logits = self._head(hidden).view(self.copies, B, -1)
        if self.track_loglik:
            self.logprobs = F.log_softmax(logits, dim=-1)
        return logits

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)[..., : self.vocab_size].float()

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, cache=None):
        out = self.model.base_model(
            input_ids=ids, attention_mask=self.mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        self.cache = out.past_key_values
        return out.last_hidden_state

    def _prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Read [start] + prompt for every copy; returns the last position's hidden state, [S * B, H]."""
        S, (B, L) = self.copies, input_ids.shape
        prompt_mask = (input_ids != self.pad_id).long()
        ids, mask = input_ids.repeat(S, 1), prompt_mask.repeat(S, 1)  # [S * B, L]
        if self.start_ids:
            # one more column on the left; the start token goes just before each row's first prompt token
            ids, mask = F.pad(ids, (1, 0), value=self.pad_id), F.pad(mask, (1, 0), value=0)
            column = L - prompt_mask.sum(-1).repeat(S)
            rows = torch.arange(S * B, device=ids.device)
            starts = torch.tensor(self.start_ids, device=ids.device).repeat_interleave(B)
            ids[rows, column], mask[rows, column] = starts, 1
        self.mask = mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.last_position = positions[:, -1:]
        hidden = self._forward(ids, positions)
        if self.track_loglik:
            scored = mask[:, 1:] * mask[:, :-1]  # tokens predicted from a real position: after the start, or second on
            targets = ids[:, 1:].masked_fill(scored == 0, self.pad_id)  # start tokens lie outside the cut vocabulary
            self.loglik = self._prompt_loglik(hidden[:, :-1], targets, scored).view(S, B)
            self.length = scored[:B].sum(-1).float()
        return hidden[:, -1]

    def _prompt_loglik(self, hidden: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of the masked targets of each row, in row chunks (a full [rows, L, V] is big)."""
        sums = []
        for rows in torch.split(torch.arange(hidden.shape[0], device=hidden.device), self.row_chunk):
            logprobs = F.log_softmax(self._head(hidden[rows]), dim=-1)
            picked = logprobs.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
            sums.append((picked * target_mask[rows]).sum(-1))
        return torch.cat(sums)

    def _step(self, new_ids: torch.Tensor) -> torch.Tensor:
        """Read one new token per row; returns its hidden state, [S * B, H]."""
        if self.track_loglik:  # the new token's log-probability under the distribution of the previous call
            self.loglik += self.logprobs.gather(-1, new_ids.unsqueeze(0).expand(self.copies, -1, -1)).squeeze(-1)
            self.length += 1
        ids = new_ids.repeat(self.copies, 1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        self.last_position = self.last_position + 1
        return self._forward(ids, self.last_position, self.cache)[:, -1]
