"""Job-level resume of PPO: a tiny job SIGKILLed after its first checkpoint resumes there and ends bitwise where an
uninterrupted one does; a restart with other settings is refused.

The job runs as a subprocess (`DRIVER`) that kills itself with SIGKILL right after its Nth complete checkpoint.
Prompt choice comes from (seed, round) and each iteration's sampling seed and minibatch order from (seed, iteration);
the checkpoint holds the weights, AdamW, the schedule, beta, the score normalisation and the RNG states. So on CPU
with one thread, the resumed job must end bitwise equal to the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import SuiteError
from methods.common import checkpoint
from methods.ppo import ppo
from tests.conftest import ROOT
from tests.methods.test_quark_resume import (  # Quark's resume test's task: token_set, counted calls
    counting_task,
    scored,
)

# 2 rounds of 6 prompts x 2 samples, cut into 4 PPO iterations of 6; a checkpoint after every iteration. An adaptive
# beta with a short horizon and score normalisation from iteration 0: both must come back from the checkpoint.
HPARAMS = dict(
    num_rounds=2,
    prompts_per_round=6,
    samples_per_prompt=2,
    rollout_batch_size=6,
    minibatch_size=3,
    micro_batch_size=3,
    ppo_epochs=2,
    lr=1e-2,
    warmup_steps=1,
    horizon=20.0,
    target_kl=0.5,
    sample_batch_size=6,
    forward_batch_size=6,
    checkpoint_every=1,
    keep_checkpoints=2,
)
SAMPLES = 2 * 6 * 2
# what each iteration's record must reproduce exactly (the rest are timings)
COMPARED = ("iteration", "round", "scored", "kl_coef", "reward", "kl", "entropy", "policy_loss", "value_loss")

DRIVER = """
import os, signal, sys
sys.path.insert(0, os.environ["ROOT"])
import torch
torch.set_num_threads(1)
from methods.common import checkpoint
from methods.ppo import ppo
from tests.methods.test_ppo_resume import HPARAMS, counting_task

model_dir, run_dir, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
save, saved = checkpoint.Checkpoints.save, []

def save_then_die(self, *args, **kwargs):
    path = save(self, *args, **kwargs)
    saved.append(path)
    if len(saved) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

checkpoint.Checkpoints.save = save_then_die
ppo.train(counting_task(run_dir), model_dir, run_dir, HPARAMS, seed=0, device="cpu")
"""


def run_driver(model_dir: Path, run_dir: Path, kill_after: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOT": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(model_dir), str(run_dir), str(kill_after)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_killed_ppo_job_resumes_from_its_checkpoint_and_ends_bitwise_where_an_uninterrupted_one_does(tiny, tmp_path):
    model_dir = tiny[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver's setting: CPU kernels are bitwise reproducible at a fixed thread count
    try:
        ppo.train(counting_task(tmp_path / "ref"), model_dir, tmp_path / "ref", HPARAMS, seed=0, device="cpu")
    finally:
        torch.set_num_threads(threads)
    run, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"

    first = run_driver(model_dir, run, kill_after=1)  # killed right after the checkpoint of iteration 0
    assert first.returncode == -9, first.stderr[-2000:]
    assert [p.name for p in checkpoints.iterdir()] == ["ckpt-000000001"]
    assert scored(run) == 6 and not (run / "model").exists()
    # an unfinished run is resumed only with its own settings: others are refused in one line naming the directory,
    # before anything is loaded or written (the resume below then finds the run as the kill left it)
    other = {**HPARAMS, "lr": 1e-3, "ppo_epochs": 1, "keep_checkpoints": 3}  # keep_checkpoints may change
    message = f"{run}: holds an unfinished PPO run with other settings (ppo_epochs, lr); rerun with its settings"
    with pytest.raises(SuiteError, match="^" + re.escape(message)):
        ppo.train(counting_task(run), model_dir, run, other, seed=0, device="cpu")
    assert scored(run) == 6 and [p.name for p in checkpoints.iterdir()] == ["ckpt-000000001"]

    second = run_driver(model_dir, run, kill_after=0)
    assert second.returncode == 0, second.stderr[-2000:]
    # (a) it resumed from the checkpoint and did not redo iteration 0: 18 more samples, as many as the 3 left
    assert "resuming from" in second.stdout and "ckpt-000000001" in second.stdout
    assert "iteration 0:" not in second.stdout and "iteration 1:" in second.stdout
    assert scored(run) == scored(tmp_path / "ref") == SAMPLES
    stats, ref_stats = (json.loads((d / "train_stats.json").read_text()) for d in (run, tmp_path / "ref"))
    assert stats["resumed_from"] == ["ckpt-000000001"] and ref_stats["resumed_from"] == []
    # (b) it completed: model written, run marked finished, checkpoints retired
    assert json.loads((run / checkpoint.RUN_FILE).read_text())["finished"] and not checkpoints.exists()
    assert stats["scored_samples"] == SAMPLES
    assert [[r[k] for k in COMPARED] for r in stats["iterations"]] == [
        [r[k] for k in COMPARED] for r in ref_stats["iterations"]
    ]
    assert len({r["kl_coef"] for r in stats["iterations"]}) == 4  # beta moved every iteration: restored, not reset
    # (c) bitwise the same policy and value head as the uninterrupted job
    for name in ("model/model.safetensors", ppo.VALUE_HEAD_FILE):
        resumed, reference = load_file(run / name), load_file(tmp_path / "ref" / name)
        assert resumed.keys() == reference.keys()
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), name
    base, trained = load_file(model_dir / "model.safetensors"), load_file(run / "model/model.safetensors")
    assert base.keys() == trained.keys() and any(not torch.equal(base[k], trained[k]) for k in base)  # it trained
