"""Method hyperparameters: one dataclass per method, every field with `metadata={"help": ...}`."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from methods.common.errors import SuiteError

T = TypeVar("T")


def from_dict(cls: type[T], values: dict, source: str) -> T:
    """Build a config dataclass, naming `source` if a key is unknown."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SuiteError(f"{source}: unknown hyperparameter(s) {', '.join(unknown)} for {cls.__name__}")
    return cls(**values)


def help_table(cls: type) -> str:
    """Markdown table of a config's fields, defaults and help, for the method READMEs."""
    rows = ["| option | default | help |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        rows.append(f"| `{f.name}` | `{f.default!r}` | {f.metadata.get('help', '')} |")
    return "\n".join(rows)


def from_dict_for_task(cls: type[T], values: dict, task: str, source: str) -> T:
    """`from_dict` after merging `values["per_task"][task]` over the other values.

    Budgets that must differ by task live there: a repetition completion is three times as long as a toxicity one,
    so the same number of samples costs three times the time.
    """
    values = dict(values)
    per_task = values.pop("per_task", None) or {}
    if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
        raise SuiteError(f"{source}: 'per_task' must map task names to hyperparameters")
    return from_dict(cls, {**values, **per_task.get(task, {})}, source)
