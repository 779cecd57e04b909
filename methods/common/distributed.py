"""Data parallelism through accelerate for trainers that explore and learn: every process holds whole weights.

`accelerator` refuses FSDP and DeepSpeed, whose sharded weights cannot sample. `in_waves` spreads a list of jobs
(exploration batches) over the processes, one per process per wave, and gathers each wave's results on every
process. `reduce_stats` turns per-process step statistics into the global batch's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from core.errors import SuiteError


def accelerator(device: str, method: str) -> Accelerator:
    acc = Accelerator(cpu=str(device) == "cpu")
    if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise SuiteError(
            f"{method} runs in one process or data-parallel (workflow/accelerate/ddp.yaml), not under "
            f"{acc.distributed_type.value}: exploration samples from whole, unsharded weights"
        )
    return acc


def in_waves(acc: Accelerator, jobs: list, run: Callable[[object], list], desc: str) -> Iterator[list]:
    """Yield each wave's gathered results; every process joins every gather, even without a job of its own."""
    for wave in tqdm(range(0, len(jobs), acc.num_processes), desc=desc, disable=not acc.is_main_process):
        mine = wave + acc.process_index
        yield gather_object(run(jobs[mine]) if mine < len(jobs) else [])


def reduce_stats(acc: Accelerator, stats: dict[str, float], tokens: int, sequences: int) -> dict[str, float]:
    """Per-token means and the per-sequence KL over the global batch, identical on every process."""
    per_token = [k for k in stats if k != "kl_per_sequence"]
    local = [stats[k] * tokens for k in per_token] + [stats["kl_per_sequence"] * sequences, tokens, sequences]
    total = acc.reduce(torch.tensor(local, dtype=torch.float64, device=acc.device), "sum").tolist()
    n = len(per_token)
    out = {k: total[i] / max(total[n + 1], 1) for i, k in enumerate(per_token)}
    out["kl_per_sequence"] = total[n] / max(total[n + 2], 1)
    return out
