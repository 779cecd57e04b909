"""Shared fixtures: a tiny random Llama with a byte-level BPE trained here, and a runner for the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models gain nothing from a second thread, and lose much when the machine is busy

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog again and again",
    "we are testing a tiny language model with real tokenisation",
    "numbers like 1 2 3 4 5 and words like alpha beta gamma delta",
] * 5


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(model directory, tokenizer, model) for a tiny random model saved once per session."""
    from core.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer(CORPUS, vocab_size=300)
    model = tiny_model(tokenizer, seed=0, hidden=32, layers=2)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, tokenizer, model


@pytest.fixture
def repo_copy(tmp_path):
    """A copy of the repository's workflow, methods, evaluation and data, to run Snakemake in."""
    dest = tmp_path / "repo"
    dest.mkdir()
    for name in ["Snakefile", "workflow", "methods", "evaluation", "core", "data"]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def snakemake(cwd: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
