"""Quark's data pool: every scored sample, in SQLite inside the run directory, re-ranked into quantiles each round.

Each exploration batch is committed as soon as it is scored, unscored samples included (reward NULL, kept out of
training and counted), keyed by (round, slot): a restarted job sees which slots of a round are done and pays the
reward only for the others. WAL mode: a killed writer loses at most the transaction it had open.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import SuiteError

SCHEMA_VERSION = 1
PROBE_ROUND = -1  # the round number of the probe set's samples: kept in the pool, never trained on


@dataclass
class Sample:
    prompt_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    prompt: str
    completion: str
    reward: float | None  # None: the reward could not score it (kept for the record, never trained on)
    round: int
    slot: int | None = None  # position in its round's exploration order


def assign_quantiles(rewards: np.ndarray, k: int, seed: int | list[int] = 0) -> np.ndarray:
    """Quantile index per reward: 0 for the best k-th, k-1 for the worst; equal-size bins by rank in the pool.

    Equal rewards are ordered at random (seeded), never by arrival: the reference code sorts the pool stably, so
    there a tied sample's token says which round it came from (on repetition most rewards are exactly 1.0; VADER
    gives neutral text exactly 0.5). Ties spread evenly over the quantiles they span, and every quantile is filled.
    """
    rewards = np.asarray(rewards, dtype=float)
    n = len(rewards)
    order = np.lexsort((np.random.default_rng(seed).random(n), -rewards))  # by reward, then a random key
    quantile = np.empty(n, dtype=np.int64)
    quantile[order] = (np.arange(n) * k) // max(n, 1)
    return quantile


def assign_quantiles_within(rewards: np.ndarray, groups: list, k: int, seed: int | list[int] = 0) -> np.ndarray:
    """Quantile index per reward, ranked within its group (a prompt's samples) instead of the whole pool.

    The sample at rank i (0: best; ties at random, as `assign_quantiles`) of a group of n gets the quantile that holds
    its mid-rank, floor((i + 1/2) k / n): a group of two or more always fills the best and the worst quantile (4
    samples, K = 5: r_0, r_1, r_3, r_4), a group of one gets the middle token, and a large group splits as the pool
    would.
    """
    rewards = np.asarray(rewards, dtype=float)
    groups = np.asarray(groups)
    key = np.random.default_rng(seed).random(len(rewards))
    quantile = np.empty(len(rewards), dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        order = members[np.lexsort((key[members], -rewards[members]))]
        quantile[order] = ((2 * np.arange(len(order)) + 1) * k) // (2 * len(order))
    return quantile


class Pool:
    SCHEMA = """CREATE TABLE IF NOT EXISTS samples (
        id INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT, prompt_ids TEXT, completion_ids TEXT,
        prompt TEXT, completion TEXT, reward REAL, round INTEGER, slot INTEGER)"""
    COLUMNS = "prompt_id, prompt_ids, completion_ids, prompt, completion, reward, round, slot"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        exists = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'samples'").fetchone()
        if exists and version != SCHEMA_VERSION:
            self.db.close()
            raise SuiteError(
                f"{self.path}: pool schema version {version}, this code reads {SCHEMA_VERSION}; "
                "move it away to start afresh"
            )
        self.db.execute(self.SCHEMA)
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.db.commit()

    def add(self, samples: list[Sample]) -> None:
        """Commit samples in one transaction: all of them or, if the job dies first, none."""
        rows = [
            (
                s.prompt_id,
                json.dumps(s.prompt_ids),
                json.dumps(s.completion_ids),
                s.prompt,
                s.completion,
                s.reward,
                s.round,
                s.slot,
            )
            for s in samples
        ]
        with self.db:
            self.db.executemany(f"INSERT INTO samples ({self.COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        """Scored samples, the ones training sees."""
        return self.db.execute("SELECT COUNT(*) FROM samples WHERE reward IS NOT NULL AND round >= 0").fetchone()[0]

    def samples(self, rnd: int | None = None, scored_only: bool = True) -> list[Sample]:
        """Scored samples (or all, with `scored_only=False`) of every training round or of round `rnd` (the probe
        set: PROBE_ROUND), in commit order."""
        where = ["reward IS NOT NULL"] if scored_only else []
        where += ["round >= 0"] if rnd is None else [f"round = {int(rnd)}"]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(f"SELECT {self.COLUMNS} FROM samples {clause} ORDER BY id")
        return [Sample(r[0], json.loads(r[1]), json.loads(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def unscored(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM samples WHERE reward IS NULL AND round >= 0").fetchone()[0]

    def explored_slots(self, rnd: int) -> set[int]:
        """Slots of round `rnd` already committed, scored or not."""
        return {r[0] for r in self.db.execute("SELECT slot FROM samples WHERE round = ?", (rnd,))}

    def keep_newest(self, max_size: int) -> None:
        """Cap the scored pool, dropping the oldest samples."""
        with self.db:
            self.db.execute(
                "DELETE FROM samples WHERE reward IS NOT NULL AND round >= 0 AND id NOT IN "
                "(SELECT id FROM samples WHERE reward IS NOT NULL AND round >= 0 ORDER BY id DESC LIMIT ?)",
                (max_size,),
            )

    def clear(self, before_round: int | None = None) -> None:
        """Drop every sample, or only the scored samples of rounds before `before_round`."""
        with self.db:
            if before_round is None:
                self.db.execute("DELETE FROM samples")
            else:
                self.db.execute(
                    "DELETE FROM samples WHERE reward IS NOT NULL AND round BETWEEN 0 AND ?", (before_round - 1,)
                )

    def close(self) -> None:
        self.db.close()
