"""Job-level resume: a tiny Quark job SIGKILLed mid-round and mid-checkpoint ends exactly where an uninterrupted one does.

The job runs as a subprocess (`DRIVER`) that kills itself with SIGKILL at a chosen point: right after a chosen pool
commit, or inside a checkpoint write, after its weights file and before its state file. Every random draw of the
trainer is derived from (seed, round, batch) and the checkpoints hold the optimizer, scheduler and RNG states, so on
CPU with one thread the resumed job must end bitwise equal to the uninterrupted one: same pool, same weights.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.data import Prompt
from core.sampling import Sampling
from methods.common import checkpoint
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.quark import quark
from tests.conftest import CORPUS, ROOT

# 3 rounds; 10 prompts x 2 samples in 5 exploration batches per round; 4 steps per round, a checkpoint every 2
HPARAMS = dict(
    num_rounds=3,
    steps_per_round=4,
    checkpoint_every=2,
    prompts_per_round=10,
    samples_per_prompt=2,
    sample_batch_size=4,
    batch_size=4,
    lr=1e-2,
    warmup_steps=1,
)
SLOTS_PER_ROUND = 20

DRIVER = """
import os, signal, sys
sys.path.insert(0, os.environ["ROOT"])
import torch
torch.set_num_threads(1)
from methods.common import checkpoint
from methods.quark import pool, quark
from tests.methods.test_quark_resume import HPARAMS, counting_task

model_dir, run_dir, kill = sys.argv[1], sys.argv[2], sys.argv[3]
what, _, when = kill.partition(":")
calls = []

def die_after(fn, rnd=None):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        batch = args[1] if what == "commit" else None
        if rnd is None or (batch and batch[0].round == rnd):
            calls.append(1)
            if len(calls) == int(when.split(":")[-1]):
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped

if what == "commit":  # after the Nth pool commit of round R
    pool.Pool.add = die_after(pool.Pool.add, rnd=int(when.split(":")[0]))
elif what == "checkpoint":  # inside the Nth checkpoint write: weights on disk, state.json not yet
    checkpoint.save_file = die_after(checkpoint.save_file)
quark.train(counting_task(run_dir), model_dir, run_dir, HPARAMS, seed=0, device="cpu")
"""


def counting_task(run_dir: str | Path) -> Task:
    """The synthetic task; its reward appends how many samples it scored to `<run_dir>.calls`."""
    token_set = get_reward("token_set", token_ids=list(range(40, 70)))
    log = Path(f"{run_dir}.calls")

    def reward(prompts, completions, **kwargs):
        with log.open("a") as f:
            f.write(f"{len(completions)}\n")
        return token_set(prompts, completions, **kwargs)

    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    return Task("synthetic", prompts, reward, Sampling(max_new_tokens=6))


def run_driver(model_dir: Path, run_dir: Path, kill: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOT": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(model_dir), str(run_dir), kill],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def pool_rows(run_dir: Path) -> list[tuple]:
    db = sqlite3.connect(run_dir / "pool.sqlite")
    rows = db.execute("SELECT id, round, slot, completion_ids, reward FROM samples ORDER BY id").fetchall()
    db.close()
    return rows


def scored(run_dir: Path) -> int:
    return sum(int(line) for line in Path(f"{run_dir}.calls").read_text().split())


def test_a_killed_job_resumes_and_ends_bitwise_where_an_uninterrupted_one_does(tiny, tmp_path):
    model_dir = tiny[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the drivers' setting: CPU kernels are bitwise reproducible at a fixed thread count
    try:
        quark.train(counting_task(tmp_path / "ref"), model_dir, tmp_path / "ref", HPARAMS, seed=0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"

    first = run_driver(model_dir, run, "commit:1:3")  # mid-round: round 1, after 3 of its 5 batches
    assert first.returncode == -9, first.stderr[-2000:]
    after_first = pool_rows(run)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["ckpt-000000002", "ckpt-000000004"]  # round 0 done
    assert sum(r[1] == 1 for r in after_first) == 12  # 3 batches of 4 committed in round 1

    second = run_driver(model_dir, run, "checkpoint:1")  # mid-checkpoint: the first one it writes (round 1, step 2)
    assert second.returncode == -9, second.stderr[-2000:]
    assert "resuming from" in second.stdout and "ckpt-000000004" in second.stdout
    after_second = pool_rows(run)
    assert any(".tmp" in p.name for p in checkpoints.iterdir())  # killed inside the write, whose state.json is absent
    assert not (checkpoints / "ckpt-000000006").exists()

    third = run_driver(model_dir, run, "none:0")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "ckpt-000000004" in third.stdout  # the half-written ckpt-6 was discarded
    assert json.loads((run / checkpoint.RUN_FILE).read_text())["finished"]

    # (a) every committed sample survived every kill, unchanged
    final = pool_rows(run)
    assert set(after_first) <= set(final) and set(after_second) <= set(final)
    # no sample was scored twice: the restarts paid the reward only for the slots not yet committed
    assert scored(run) == scored(tmp_path / "ref") == 3 * SLOTS_PER_ROUND
    # (c) the same pool and bitwise the same final weights as the uninterrupted job
    assert [r[1:] for r in final] == [r[1:] for r in pool_rows(tmp_path / "ref")]
    resumed, reference = (
        load_file(run / "model" / "model.safetensors"),
        load_file(tmp_path / "ref/model/model.safetensors"),
    )
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["resumed_from"] == ["ckpt-000000004"]  # the chain that led to the final state
    assert [r["pool_size"] for r in stats["rounds"]] == [20, 40, 60]
    assert not checkpoints.exists()  # retired once the model is written


def test_a_finished_run_is_never_resumed(tiny, tmp_path):
    model_dir, run = tiny[0], tmp_path / "run"
    hparams = dict(num_rounds=1, steps_per_round=1, prompts_per_round=4, sample_batch_size=4, batch_size=2)
    quark.train(counting_task(run), model_dir, run, hparams, seed=0, device="cpu")
    first = pool_rows(run)
    quark.train(counting_task(run), model_dir, run, {**hparams, "prompts_per_round": 6}, seed=0, device="cpu")
    assert len(first) == 4 and len(pool_rows(run)) == 6  # a finished run is never resumed, its pool not reused
    assert scored(run) == 10
