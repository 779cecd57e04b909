"""Method hyperparameters: one dataclass per method, every field with `metadata={"help": ...}`."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TypeVar

import torch
import yaml

from core.errors import SuiteError

T = TypeVar("T")


def native_bf16() -> bool:
    """Whether bfloat16 autocast runs natively here: a CUDA GPU with bf16, else a CPU with AVX-512 BF16 or AMX.

    Elsewhere (an AVX2 CPU, say) oneDNN emulates it: sampling SmolLM2-135M took 3.3x as long as in fp32 on a 2-core
    AMD EPYC without AVX-512 (workflow/scripts/bench.py).
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def from_dict(cls: type[T], values: dict, source: str) -> T:
    """Build a config dataclass, naming `source` if a key is unknown; `bf16: auto` becomes `native_bf16()`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SuiteError(f"{source}: unknown hyperparameter(s) {', '.join(unknown)} for {cls.__name__}")
    if values.get("bf16") == "auto":
        values = {**values, "bf16": native_bf16()}
    hints = typing.get_type_hints(cls)
    return cls(**{k: _checked(v, hints[k], k, source) for k, v in values.items()})


def _checked(value, hint, key: str, source: str):
    """`value` if it is of the field's type (an int passes for a float); a string that reads as one (Snakemake's
    `--config` passes nested values as strings) becomes it. A `Literal` field takes one of its values. Anything else
    is a one-line error."""
    if typing.get_origin(hint) is typing.Literal:
        if value in typing.get_args(hint):
            return value
        names = " or ".join(map(repr, typing.get_args(hint)))
        raise SuiteError(f"{source}: hyperparameter '{key}' must be {names}, not {value!r}")
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)

    def fits(v) -> bool:
        if isinstance(v, bool) and bool not in allowed:
            return False
        return isinstance(v, allowed) or (isinstance(v, int) and float in allowed)

    if fits(value):
        return float(value) if isinstance(value, int) and not isinstance(value, bool) and int not in allowed else value
    if isinstance(value, str) and str not in allowed:
        parsed = yaml.safe_load(value)
        if fits(parsed):
            return _checked(parsed, hint, key, source)
    names = " or ".join("None" if a is type(None) else a.__name__ for a in allowed)
    raise SuiteError(f"{source}: hyperparameter '{key}' must be {names}, not {value!r}")


def for_task(levels: list[dict | None], task: str | None, source: str) -> dict:
    """One task's hyperparameters: each level (a method.yaml profile, then a config's `hparams.<method>`) over the
    ones before it, and each level's `per_task[task]` over that level. The DAG merges once, here; a method's train()
    receives the merged values.

    Budgets that must differ by task live under `per_task`: a repetition completion is three times as long as a
    toxicity one, so the same number of samples costs three times the time.
    """
    merged = {}
    for level in levels:
        level = dict(level or {})
        per_task = level.pop("per_task", None) or {}
        if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
            raise SuiteError(f"{source}: 'per_task' must map task names to hyperparameters")
        merged |= level | per_task.get(task, {})
    return merged


def canonical(value: object) -> object:
    """`value` with every dict's keys sorted, recursively; lists keep their order.

    Snakemake decides whether a job's params changed by comparing their `repr` with the last run's, and a dict's repr
    follows its insertion order, which is the config file's key order. A rule's dict or list params pass through
    this so that the same settings written in another order count as unchanged and only a new value reruns a job.
    """
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return type(value)(canonical(item) for item in value)
    return value
