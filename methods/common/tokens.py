"""Control tokens (Quark's reward tokens, DT's return tokens, GeDi's class codes) added to a model's vocabulary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.errors import SuiteError


def add_control_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, names: list[str]) -> list[int]:
    """Add special tokens whose embedding rows are drawn from N(mean, std^2) of the existing rows, per dimension.

    transformers' `mean_resizing` scales the covariance down so far that all new rows land on the mean and start
    indistinguishable; a control token must be told apart from the first step. Tied input and output embeddings
    stay one tensor; an untied head gets rows from its own statistics.
    """
    old_rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) != old_rows:
        raise SuiteError(f"tokenizer has {len(tokenizer)} tokens but the model {old_rows} embedding rows")
    tokenizer.add_special_tokens({"additional_special_tokens": names})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != tables[0].data_ptr():
        tables.append(output.weight)
    with torch.no_grad():
        for weight in tables:
            old = weight[:old_rows]
            weight[old_rows:] = old.mean(0) + old.std(0) * torch.randn(len(names), weight.shape[1], dtype=weight.dtype)
    return tokenizer.convert_tokens_to_ids(names)


@contextlib.contextmanager
def rows_step_scaled(weight: torch.Tensor, ids: list[int], scale: float) -> Iterator[None]:
    """Around an optimizer step: the rows `ids` of `weight` move `scale` times as far as the step moved them.

    AdamW's step is invariant to the gradient's scale, so only a larger step lets new control-token rows leave their
    random start within a short run (Quark's `reward_token_lr_scale`)."""
    if scale == 1.0:
        yield
        return
    before = weight[ids].detach().clone()
    yield
    with torch.no_grad():
        weight[ids] = before + scale * (weight[ids] - before)
