"""Sampling a trained Quark model: the prompt conditioned on one reward token, the reward tokens never sampled."""

from __future__ import annotations

from pathlib import Path

from core.data import Prompt
from core.errors import SuiteError
from core.models import load_model, read_meta
from core.sampling import Sampling
from methods.common.generate import generate_jsonl
from methods.quark.state import META_FILE


def generate(
    model_dir: Path,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: Path,
    *,
    seed: int,
    device: str,
    quantile: int | str = "best",
) -> None:
    """Sample conditioned on one reward token: 'best' (the default), 'worst', or a quantile index."""
    model, tokenizer = load_model(model_dir, device)
    meta = read_meta(model_dir, META_FILE, "Quark")
    ids = meta["reward_token_ids"]
    k = {"best": meta["best_quantile"], "worst": len(ids) - 1}.get(quantile, quantile)
    if not isinstance(k, int) or not 0 <= k < len(ids):
        raise SuiteError(f"quantile must be 'best', 'worst' or 0..{len(ids) - 1}, got {quantile!r}")
    at_end = meta.get("config", {}).get("token_position", "start") == "end"  # models from before the option: start
    generate_jsonl(
        model,
        tokenizer,
        prompts,
        num_samples,
        sampling,
        out_path,
        seed,
        suppress_ids=ids,
        **{"suffix_ids" if at_end else "prefix_ids": [ids[k]]},
    )
