"""Bad states: a disk that fills mid-checkpoint, a results directory that cannot be written, a checkpoint or pool
from another version, a reward that fails for whole batches, and weights that would have to be unpickled."""

from __future__ import annotations

import errno
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

from core.data import Prompt
from core.errors import SuiteError, run_cli
from core.models import load_model
from core.sampling import Sampling
from methods.common import checkpoint, rewards
from methods.common.checkpoint import Checkpoints
from methods.common.rewards import Retry, get_reward, score_rewards
from methods.common.task import Task
from methods.quark import quark
from tests.conftest import CORPUS, ROOT

HPARAMS = dict(num_rounds=2, steps_per_round=2, prompts_per_round=4, sample_batch_size=4, batch_size=2)


def task_with(reward) -> Task:
    return Task(
        "synthetic", [Prompt(f"p{i}", t, {}) for i, t in enumerate(CORPUS[:4])], reward, Sampling(max_new_tokens=4)
    )


def token_share(prompts, completions, completion_ids, **kwargs):
    return [sum(t < 100 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def one_line_exit(capsys, fn) -> str:
    """Run `fn` as an entry point does; return its one error line after checking the exit status."""
    with pytest.raises(SystemExit) as info:
        run_cli(fn)
    assert info.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- checkpoints ----


def test_a_disk_that_fills_mid_checkpoint_leaves_the_older_ones_intact(tmp_path, monkeypatch):
    ckpts = Checkpoints(tmp_path, "test", keep=2)
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    first = ckpts.save(1, weights, {"step": torch.tensor(1)}, {"round": 0})
    before = tree(first)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)  # the weights are written, then the optimizer state fails
    with pytest.raises(SuiteError, match="ckpt-000000002 .No space left on device.; older ones are intact") as info:
        ckpts.save(2, weights, {}, {"round": 1})
    assert "\n" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000001"]  # no half-written directory left behind
    assert tree(first) == before and ckpts.latest() == first
    tensors, objects, state = ckpts.load(first)
    assert torch.equal(tensors["w"], weights["w"]) and objects["step"].item() == 1 and state["round"] == 0


def test_a_training_job_that_runs_out_of_disk_exits_in_one_line(tiny, tmp_path, monkeypatch, capsys):
    writes = []

    def fill_on_second(*args, **kwargs):
        writes.append(1)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    real = checkpoint.save_file
    monkeypatch.setattr(checkpoint, "save_file", fill_on_second)
    run = tmp_path / "run"
    err = one_line_exit(
        capsys, lambda: quark.train(task_with(token_share), tiny[0], run, HPARAMS, seed=0, device="cpu")
    )
    assert "could not write checkpoint" in err and "ckpt-000000004" in err and "No space left on device" in err
    survivor = Checkpoints(run / "checkpoints", "quark").latest()
    assert survivor.name == "ckpt-000000002"  # round 0's, complete and loadable
    Checkpoints(run / "checkpoints", "quark").load(survivor)
    assert not (run / "model").exists() and not json.loads((run / checkpoint.RUN_FILE).read_text())["finished"]


def test_a_results_directory_that_cannot_be_written_is_a_one_line_error(tiny, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results directory should be\n")  # fails for root too, unlike chmod
    err = one_line_exit(
        capsys, lambda: quark.train(task_with(token_share), tiny[0], blocker / "run", HPARAMS, seed=0, device="cpu")
    )
    assert f"results directory {blocker / 'run'} is not writable" in err
    assert blocker.read_text() == "a file where the results directory should be\n"


@pytest.fixture(scope="module")
def crashed_run(tiny, tmp_path_factory) -> Path:
    """A run stopped in round 1 by a reward's SuiteError (a configuration problem), with round 0's checkpoint."""
    calls = []

    def misconfigured_in_round_1(prompts, completions, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise SuiteError("scorer 'x': no such model")
        return [0.5] * len(completions)

    run = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(SuiteError, match="no such model"):
        quark.train(task_with(misconfigured_in_round_1), tiny[0], run, HPARAMS, seed=0, device="cpu")
    assert len(calls) == 2  # a SuiteError is not retried
    return run


def set_state_version(run: Path) -> Path:
    state = next((run / "checkpoints").glob("ckpt-*")) / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "version": 99}))
    return state


def set_run_version(run: Path) -> Path:
    path = run / checkpoint.RUN_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 0}))
    return path


def set_pool_version(run: Path) -> Path:
    db = sqlite3.connect(run / "pool.sqlite")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    return run / "pool.sqlite"


@pytest.mark.parametrize("corrupt", [set_state_version, set_run_version, set_pool_version])
def test_state_from_an_incompatible_version_is_a_one_line_error_and_stays(crashed_run, tmp_path, tiny, corrupt, capsys):
    run = tmp_path / "run"
    shutil.copytree(crashed_run, run)
    named = corrupt(run)
    before = tree(run)
    err = one_line_exit(
        capsys, lambda: quark.train(task_with(token_share), tiny[0], run, HPARAMS, seed=0, device="cpu")
    )
    assert str(named) in err and "version" in err
    after = tree(run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {"pool.sqlite-wal", "pool.sqlite-shm"}, changed  # SQLite's own side files aside, untouched


def test_an_unfinished_run_with_other_settings_is_refused_and_kept(crashed_run, tmp_path, tiny, capsys):
    run = tmp_path / "run"
    shutil.copytree(crashed_run, run)
    before = tree(run)
    changed_lr = {**HPARAMS, "lr": 0.123}
    err = one_line_exit(
        capsys, lambda: quark.train(task_with(token_share), tiny[0], run, changed_lr, seed=0, device="cpu")
    )
    assert (
        err
        == f"error: {run}: holds an unfinished Quark run with other settings (lr); rerun with its settings to resume it, or move it away to start afresh"
    )
    after = tree(run)
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} <= {
        "pool.sqlite-wal",
        "pool.sqlite-shm",
    }


# ---- rewards that fail ----


def flaky(failures: int, exc: type[Exception] = ConnectionError):
    calls = []

    def reward(prompts, completions, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise exc("scorer unreachable")
        return [0.25] * len(completions)

    reward.calls = calls
    return reward


def test_a_raising_reward_is_retried_with_exponential_backoff(monkeypatch, capsys):
    sleeps = []
    monkeypatch.setattr(rewards.time, "sleep", sleeps.append)
    reward = flaky(2)
    assert score_rewards(reward, ["a", "b"], ["x", "y"], retry=Retry(attempts=4, delay=0.5)) == [0.25, 0.25]
    assert sleeps == [0.5, 1.0] and len(reward.calls) == 3
    assert capsys.readouterr().err.count("retrying in") == 2


def test_a_reward_down_for_every_attempt_leaves_the_batch_unscored(monkeypatch, capsys):
    sleeps = []
    monkeypatch.setattr(rewards.time, "sleep", sleeps.append)
    reward = flaky(100)
    assert score_rewards(reward, ["a"] * 3, ["x"] * 3, retry=Retry(attempts=4, delay=1.0, max_delay=3.0)) == [None] * 3
    assert sleeps == [1.0, 2.0, 3.0] and len(reward.calls) == 4  # bounded: capped delays, then it gives up
    last = capsys.readouterr().err.splitlines()[-1]
    assert "ConnectionError: scorer unreachable" in last and "3 samples count as unscored" in last


def test_retry_settings_come_from_the_reward_spec():
    assert get_reward("token_set", token_ids=[1], retries=1, backoff=0.25).retry == Retry(attempts=2, delay=0.25)


def test_a_job_whose_reward_fails_for_a_whole_batch_goes_on(tiny, tmp_path, capsys):
    calls = []

    def down_in_round_1(prompts, completions, completion_ids, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise TimeoutError("read timed out")
        return token_share(prompts, completions, completion_ids)

    down_in_round_1.retry = Retry(attempts=3, delay=0.0)
    quark.train(task_with(down_in_round_1), tiny[0], tmp_path / "run", HPARAMS, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["dropped_unscored"] == 4 and [r["pool_size"] for r in stats["rounds"]] == [4, 4]
    assert stats["rounds"][1]["dropped_unscored"] == 4
    assert "4 samples count as unscored" in capsys.readouterr().err


def test_a_reward_down_for_a_whole_round_still_stops_on_an_empty_pool(tiny, tmp_path, capsys):
    always = flaky(100)
    always.retry = Retry(attempts=2, delay=0.0)
    with pytest.raises(SuiteError, match="round 0: the pool is empty"):
        quark.train(task_with(always), tiny[0], tmp_path / "run", HPARAMS, seed=0, device="cpu")


# ---- nothing is unpickled ----


def test_pickled_weights_are_refused(tiny, tmp_path):
    path, tokenizer, model = tiny
    pickled = tmp_path / "pickled"
    shutil.copytree(path, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(SuiteError, match="no safetensors weights"):
        load_model(pickled)


def test_no_source_file_unpickles():
    """Every torch.load passes weights_only=True; no pickle, joblib or numpy pickles; safetensors never turned off."""
    unsafe = re.compile(r"pickle\.loads?\(|joblib\.load\(|allow_pickle\s*=\s*True|use_safetensors\s*=\s*False")
    offenders = []
    for folder in ("methods", "evaluation", "workflow", "core"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            calls = re.findall(r"torch\.load\([^)]*\)", text)
            offenders += [f"{path}: {c}" for c in calls if "weights_only=True" not in c]
            offenders += [f"{path}: {m}" for m in unsafe.findall(text)]
    assert not offenders, offenders
