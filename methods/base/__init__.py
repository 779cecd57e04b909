"""The untouched base model: the reference row of every table."""

from __future__ import annotations

from pathlib import Path

from core.data import Prompt
from core.models import load_model
from core.sampling import Sampling
from methods.common.generate import generate_jsonl
from methods.common.task import Task


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Nothing to train: the base model is the result."""
    return Path(base_model)


def generate(
    model_dir: Path,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: Path,
    *,
    seed: int,
    device: str,
) -> None:
    model, tokenizer = load_model(model_dir, device)
    generate_jsonl(model, tokenizer, prompts, num_samples, sampling, out_path, seed)
