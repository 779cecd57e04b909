"""What a train entry point is given about its task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from methods.common.data import Prompt, iter_jsonl, write_jsonl
from methods.common.errors import SuiteError
from methods.common.rewards import Reward
from methods.common.sampling import Sampling


@dataclass(frozen=True)
class Text:
    """A text of the task's corpus and how much it has the task's wanted attribute.

    `score` is in [0, 1], in the reward's direction (1 = wanted: non-toxic, of the wanted sentiment, not repetitive),
    or None where the text carries no label. Toxicity labels come from Perspective (RealToxicityPrompts ships them),
    sentiment labels from the task's judge, repetition labels from the completion's own repetition.
    """

    text: str
    score: float | None


@dataclass
class Task:
    name: str  # e.g. "toxicity", "sentiment-positive", "repetition"
    train_prompts: list[Prompt]
    reward: Reward  # higher is better
    sampling: Sampling  # exploration settings: completion length, nucleus top-p
    corpus: list[Text] = field(default_factory=list)  # labelled texts: attribute experts, fine-tuning corpora


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
