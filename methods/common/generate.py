"""The generation step most methods share: N samples per prompt, written as JSONL with token ids."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from core.data import Prompt, write_jsonl
from core.models import context_length, encode_prompts
from core.sampling import Sampling, generation_records, sample


def generate_jsonl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: str | Path,
    seed: int,
    prefix_ids: list[int] = (),
    suffix_ids: list[int] = (),
    suppress_ids: list[int] | None = None,
    logits_processor: list | None = None,
) -> None:
    """`prefix_ids` and `suffix_ids` (control tokens) go before and after each encoded prompt."""
    set_seed(seed)
    max_prompt = context_length(model) - sampling.max_new_tokens - len(prefix_ids) - len(suffix_ids)
    prompt_ids = encode_prompts(tokenizer, [p.text for p in prompts], max_prompt)
    prefixes = [[*prefix_ids, *ids, *suffix_ids] for ids in prompt_ids for _ in range(num_samples)]
    completions = sample(
        model,
        tokenizer,
        prefixes,
        sampling,
        suppress_ids,
        desc=f"generating {len(prefixes)} samples",
        logits_processor=logits_processor,
    )
    write_jsonl(out_path, generation_records(tokenizer, prompts, completions, num_samples))
