"""The task columns: which evaluator scores each, and how its labelled corpus is built from the shipped data."""

from __future__ import annotations

from pathlib import Path

from methods.common.data import iter_jsonl
from methods.common.errors import SuiteError
from methods.common.task import Text


def rtp_corpus(path: str | Path) -> list[Text]:
    """Prompts and continuations of a RealToxicityPrompts file, scored 1 - their Perspective toxicity."""
    texts = []
    for lineno, row in iter_jsonl(path):
        for part in ("prompt", "continuation"):
            item = row.get(part) if isinstance(row, dict) else None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise SuiteError(f"{path}:{lineno}: no '{part}.text' (the corpus needs RealToxicityPrompts rows)")
            tox = item.get("toxicity")
            texts.append(Text(item["text"].strip(), None if tox is None else 1.0 - float(tox)))
    return [t for t in texts if t.text]


CORPUS_BUILDERS = {"toxicity": rtp_corpus}


def build_corpus(task: str, path: str | Path) -> list[Text]:
    if task not in CORPUS_BUILDERS:
        raise SuiteError(f"no corpus builder for task '{task}'")
    return CORPUS_BUILDERS[task](path)
