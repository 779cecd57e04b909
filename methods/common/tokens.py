"""Control tokens (Quark's reward tokens, DT's return tokens, GeDi's class codes) added to a model's vocabulary."""

from __future__ import annotations

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
