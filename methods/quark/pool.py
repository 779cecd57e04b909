"""Quark's data pool: every scored sample, in SQLite inside the run directory, re-ranked into quantiles each round."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Sample:
    prompt_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    prompt: str
    completion: str
    reward: float
    round: int


def assign_quantiles(rewards: np.ndarray, k: int) -> np.ndarray:
    """Quantile index per reward: 0 for the best k-th, k-1 for the worst; equal-size bins, ties by position."""
    n = len(rewards)
    order = np.argsort(-np.asarray(rewards, dtype=float), kind="stable")
    quantile = np.empty(n, dtype=np.int64)
    quantile[order] = (np.arange(n) * k) // max(n, 1)
    return quantile


class Pool:
    SCHEMA = """CREATE TABLE IF NOT EXISTS samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT, prompt_ids TEXT, completion_ids TEXT,
        prompt TEXT, completion TEXT, reward REAL NOT NULL, round INTEGER)"""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(self.SCHEMA)
        self.db.commit()

    def add(self, samples: list[Sample]) -> None:
        rows = [
            (
                s.prompt_id,
                json.dumps(s.prompt_ids),
                json.dumps(s.completion_ids),
                s.prompt,
                s.completion,
                s.reward,
                s.round,
            )
            for s in samples
        ]
        with self.db:
            self.db.executemany(
                "INSERT INTO samples (prompt_id, prompt_ids, completion_ids, prompt, completion, reward, round)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def samples(self) -> list[Sample]:
        rows = self.db.execute(
            "SELECT prompt_id, prompt_ids, completion_ids, prompt, completion, reward, round FROM samples ORDER BY id"
        )
        return [Sample(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def keep_newest(self, max_size: int) -> None:
        """Cap the pool, dropping the oldest samples."""
        with self.db:
            self.db.execute(
                "DELETE FROM samples WHERE id NOT IN (SELECT id FROM samples ORDER BY id DESC LIMIT ?)", (max_size,)
            )

    def clear(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM samples")

    def close(self) -> None:
        self.db.close()
