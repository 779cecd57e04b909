"""LoRA through PEFT: the policy trains adapters, and the frozen reference p0 is the same model with them disabled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers import PreTrainedModel

from core.errors import SuiteError

LORA_KEYS = ("r", "alpha", "dropout", "target_modules")


def add_lora(model: PreTrainedModel, lora: dict, trainable_token_ids: list[int], source: str) -> PreTrainedModel:
    """Wrap the model in PEFT LoRA adapters {r, alpha, dropout, target_modules} (defaults 16, 32, 0.0, PEFT's for the
    architecture); the embedding rows of `trainable_token_ids` (control tokens) stay trainable."""
    unknown = sorted(set(lora) - set(LORA_KEYS))
    if unknown:
        raise SuiteError(f"{source}: unknown lora option(s) {', '.join(unknown)} (known: {', '.join(LORA_KEYS)})")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.get("r", 16),
        lora_alpha=lora.get("alpha", 32),
        lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora.get("target_modules"),
        trainable_token_indices=trainable_token_ids,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[PreTrainedModel]:
    """The base model under a PEFT model: adapters (and trainable token rows) off, in eval mode, as it was after."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)
