"""The cluster path on a real SLURM: the README's command runs the test profile to the same results as a local run.

Runs where `sinfo` answers (`bash workflow/scripts/slurm_cluster.sh` starts a single-node cluster on a Debian
machine); skipped elsewhere. Slow: every job is a SLURM job, polled by the executor plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import snakemake

CONFIG = ["--configfile", "workflow/config/test.yaml", "--config", "methods=[base,quark]", "tasks=[toxicity]"]


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(not slurm_answers(), reason="no SLURM cluster answers here (sinfo)")


def run_files(root) -> dict[str, object]:
    """Every metrics.json (parsed) and generations.jsonl (text) under a results directory, by relative path."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.name == "metrics.json":
            found[str(path.relative_to(root))] = json.loads(path.read_text())
        elif path.name == "generations.jsonl":
            found[str(path.relative_to(root))] = path.read_text()
    return found


def drop_cost(value):
    """A row's cost (seconds, peak memory) differs between any two runs; nothing else may."""
    return {k: v for k, v in value.items() if k != "cost"} if isinstance(value, dict) else value


def test_readme_slurm_command_matches_a_local_run(repo_copy):
    local = snakemake(repo_copy, "all", *CONFIG, "results_dir=local")
    assert local.returncode == 0, local.stderr[-3000:]
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "workflow/profiles/slurm",
        "all",
        *CONFIG,
        "results_dir=cluster",
    ]
    cluster = subprocess.run(
        cmd, cwd=repo_copy, capture_output=True, text=True, timeout=1800, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    assert cluster.returncode == 0, (cluster.stdout + cluster.stderr)[-3000:]
    assert "slurm" in (cluster.stdout + cluster.stderr).lower()  # it did go through the executor plugin
    local_files, cluster_files = run_files(repo_copy / "local"), run_files(repo_copy / "cluster")
    assert {k for k in local_files if k.endswith("generations.jsonl")} == {
        "test/toxicity/base/seed0/generations.jsonl",
        "test/toxicity/quark/seed0/generations.jsonl",
    }
    assert cluster_files.keys() == local_files.keys()
    for name, value in local_files.items():
        assert drop_cost(cluster_files[name]) == drop_cost(value), name
    # every cluster job kept its own log, beside its outputs
    assert (repo_copy / "cluster/test/toxicity/quark/seed0/train.log").read_text().strip()
