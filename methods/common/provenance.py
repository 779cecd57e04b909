"""What produced a result: the suite's commit, the library versions, the machine and the dtype. Every model.json
(training) and metrics.json (evaluation) records it, and `python -m evaluation.compare` prints it where a rerun and
the reference disagree."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from core.config import native_bf16
from core.data import write_json

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "snakemake")


@functools.cache
def suite_commit() -> str | None:
    """HEAD of the suite's git checkout, with '-dirty' when tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def provenance(device: str = "cpu", bf16: bool | None = None) -> dict:
    """The record; `bf16` is the dtype choice a training job made (`bf16: auto` resolved), None where none applies."""
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "suite_commit": suite_commit(),
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "native_bf16": native_bf16(),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "bf16": bf16,
    }


def resolved_bf16(hparams: dict) -> bool:
    """What `bf16` a method ran with: `auto` is native_bf16() (core/config.py), absent is fp32."""
    value = hparams.get("bf16", False)
    return native_bf16() if value == "auto" else bool(value)


def write_model_json(
    path: str | Path, model_dir: str | Path, method: str, seed: int, hparams: dict, device: str
) -> None:
    """A training run's model.json: where its model is, what trained it, and its provenance."""
    write_json(
        path,
        {
            "model_dir": str(model_dir),
            "method": method,
            "seed": seed,
            "hparams": hparams,
            "provenance": provenance(device, resolved_bf16(hparams)),
        },
    )
