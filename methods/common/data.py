"""Prompt files: RealToxicityPrompts JSONL (`{"prompt": {"text": ...}}`) or JSONL with a `prompt` string."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from methods.common.errors import SuiteError


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
