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
