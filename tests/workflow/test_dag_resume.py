"""DAG-level resume: the test profile's DAG, SIGKILLed in the middle of Quark's training job, then rerun.

Two copies of the workflow run side by side: one uninterrupted, one killed (its whole process group, so the job
dies with Snakemake) as soon as Quark's first checkpoint is on disk. The rerun must leave every output finished
before the kill untouched, resume the training job from its checkpoint, and end with the same table.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from tests.conftest import snakemake

TEST = "workflow/config/test.yaml"
SMALL = {"tasks": ["toxicity"], "methods": ["quark"]}  # 8 jobs: enough DAG to interrupt, small enough for CI
COST = ("seconds", "minutes", "rss")  # the table's cost columns differ between any two runs


def start(repo: Path) -> subprocess.Popen:
    (repo / "small.yaml").write_text(yaml.safe_dump(SMALL))
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "all", "--configfile", TEST, "small.yaml"]
    return subprocess.Popen(
        cmd,
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
        start_new_session=True,
    )


def outputs(repo: Path, skip: Path) -> dict[str, int]:
    """Modification times of every result file outside `skip` (the job in flight)."""
    root = repo / "results"
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and skip not in p.parents
    }


def test_a_killed_dag_reruns_only_unfinished_jobs_and_ends_with_the_same_table(repo_copy, tmp_path):
    killed, whole = repo_copy, tmp_path / "whole"
    shutil.copytree(killed, whole)
    uninterrupted, run = start(whole), start(killed)
    train_dir = killed / "results/test/toxicity/quark/seed0"
    deadline = time.monotonic() + 600
    while not [p for p in train_dir.glob("checkpoints/ckpt-*/state.json") if ".tmp" not in p.parent.name]:
        assert run.poll() is None, run.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = outputs(killed, train_dir)
    assert "test/base_model/model.safetensors" in finished and "test/data/toxicity/train.jsonl" in finished
    assert not (train_dir / "model.json").exists()

    assert snakemake(killed, "--unlock", "all", "--configfile", TEST, "small.yaml").returncode == 0
    rerun = snakemake(killed, "--rerun-incomplete", "all", "--configfile", TEST, "small.yaml")
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "resuming from" in log and "checkpoints/ckpt-" in log  # the training job picked up its own checkpoint
    rules = {line.split()[-1].rstrip(":") for line in log.splitlines() if line.startswith(("rule ", "localrule "))}
    assert rules.isdisjoint({"base_model", "prepare_train_prompts", "prepare_eval_prompts", "prepare_corpus"}), rules
    assert "train" in rules, rules
    after = outputs(killed, train_dir)
    assert {k: after.get(k) for k in finished} == finished  # nothing finished before the kill was redone
    assert not [p for p in (killed / "results").rglob("*.tmp*")]  # no temporary leftovers

    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stdout.read()[-3000:]
    tables = [pd.read_csv(repo / "results/test/toxicity/table.csv") for repo in (killed, whole)]
    keep = [c for c in tables[1].columns if not any(word in c for word in COST)]
    assert len(keep) > 5 and list(tables[0]["method"]) == ["Quark"]
    pd.testing.assert_frame_equal(tables[0][keep], tables[1][keep])
