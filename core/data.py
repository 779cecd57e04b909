"""Files the suite reads and writes: prompts (RealToxicityPrompts JSONL, `{"prompt": {"text": ...}}`, or JSONL with a
`prompt` string), labelled corpus texts, JSON and JSONL, each output written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import SuiteError


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    meta: dict


def _prompt_text(row: object) -> str | None:
    if not isinstance(row, dict):
        return None
    prompt = row.get("prompt")
    if isinstance(prompt, dict):
        prompt = prompt.get("text")
    return prompt if isinstance(prompt, str) else None


def iter_jsonl(path: str | Path):
    """(line number, object) for each non-empty line; a missing file or a bad line is a SuiteError naming it."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise SuiteError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
                ) from None


def read_prompts(path: str | Path) -> list[Prompt]:
    """Read every prompt of a JSONL file; a bad line is a SuiteError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"prompts file not found: {path}")
    prompts = []
    for lineno, row in iter_jsonl(path):
        text = _prompt_text(row)
        if text is None:
            raise SuiteError(f"{path}:{lineno}: no prompt (expected a 'prompt' string or 'prompt.text')")
        pid = str(row.get("id", f"{path.stem}-{lineno}"))
        meta = {k: v for k, v in row.items() if k not in ("prompt", "id")}
        if isinstance(row.get("prompt"), dict):
            meta["prompt_scores"] = {k: v for k, v in row["prompt"].items() if k != "text"}
        prompts.append(Prompt(pid, text, meta))
    if not prompts:
        raise SuiteError(f"{path}: no prompts in file")
    return prompts


def select_prompts(
    prompts: list[Prompt],
    max_prompts: int | None,
    seed: int,
    min_prompt_toxicity: float | None = None,
    max_prompt_toxicity: float | None = None,
    source: str | Path = "prompts",
) -> list[Prompt]:
    """Filter by the prompt's own (Perspective) toxicity where asked, then take a seeded random subset."""

    def keep(p: Prompt) -> bool:
        tox = p.meta.get("prompt_scores", {}).get("toxicity")
        if min_prompt_toxicity is not None and (tox is None or tox < min_prompt_toxicity):
            return False
        return max_prompt_toxicity is None or (tox is not None and tox < max_prompt_toxicity)

    kept = [p for p in prompts if keep(p)]
    if not kept:
        raise SuiteError(f"{source}: no prompts left after filtering (check the toxicity bounds)")
    if max_prompts is not None and len(kept) > max_prompts:
        kept = random.Random(seed).sample(kept, max_prompts)
    return kept


def write_prompts(prompts: list[Prompt], path: str | Path) -> None:
    write_jsonl(path, [{"id": p.id, "prompt": p.text, **p.meta} for p in prompts])


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: str | Path, obj: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` that becomes `path` only if the block ends without an error.

    For a file or a directory alike; the temporary name keeps the suffix, for writers that choose a format by it
    (matplotlib). A job killed mid-write never leaves a half-written output under its final name.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Text:
    """A text of the task's corpus and how much it has the task's wanted attribute.

    `score` is in [0, 1], in the reward's direction (1 = wanted: non-toxic, of the wanted sentiment, not repetitive),
    or None where the text carries no label. Toxicity labels come from Perspective (RealToxicityPrompts ships them),
    sentiment labels from the task's judge, repetition labels from the completion's own repetition.
    """

    text: str
    score: float | None


def read_corpus(path: str | Path) -> list[Text]:
    """Read `{"text": str, "score": float | null}` lines; a bad line is a SuiteError naming the file and line."""
    texts = []
    for lineno, row in iter_jsonl(path):
        score = row.get("score") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SuiteError(f"{path}:{lineno}: no 'text' string")
        if score is not None and not (isinstance(score, (int, float)) and 0.0 <= score <= 1.0):
            raise SuiteError(f"{path}:{lineno}: 'score' must be a number in [0, 1] or null, got {score!r}")
        texts.append(Text(row["text"], None if score is None else float(score)))
    return texts


def write_corpus(path: str | Path, texts: list[Text]) -> None:
    write_jsonl(path, [{"text": t.text, "score": t.score} for t in texts])
