"""The DAG: a new method directory is scheduled; the test profile runs end to end; bad input fails in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from methods.dexperts.dexperts import read_ensemble
from tests.conftest import ROOT, snakemake

TEST = "workflow/config/test.yaml"


def override(repo, **values) -> str:
    path = repo / "override.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def assert_one_line_error(result, *needles: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_dry_run_schedules_a_new_method_directory(repo_copy):
    method = repo_copy / "methods" / "dummy"
    method.mkdir()
    (method / "method.yaml").write_text("name: Dummy\ncitation: none\ntasks: [toxicity]\nhparams: {}\n")
    (method / "__init__.py").write_text("from methods.base import generate, train\n")
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, override(repo_copy, methods=["base", "dummy"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for path in [
        "toxicity/dummy/seed0/model.json",
        "toxicity/dummy/seed0/generations.jsonl",
        "toxicity/dummy/seed0/metrics.json",
        "toxicity/dummy/metrics.json",
    ]:
        assert f"results/test/{path}" in out, path
    assert "toxicity/quark/" not in out


def test_default_run_schedules_every_method_on_every_task_it_declares(repo_copy):
    """`snakemake all` on the default profile is the full comparison: each methods/<name>/ row on each of its tasks."""
    config = yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text())
    declared = {p.parent.name: yaml.safe_load(p.read_text())["tasks"] for p in (ROOT / "methods").glob("*/method.yaml")}
    assert set(declared) <= {row.partition("-")[0] for row in config["methods"]}
    result = snakemake(repo_copy, "-n", "all")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for row in config["methods"]:
        method = row.partition("-")[0]
        for task in config["tasks"]:
            scheduled = [f"results/mini/{task}/{method}/seed0/model.json", f"results/mini/{task}/{row}/metrics.json"]
            for path in scheduled:
                assert (path in out) == (task in declared[method]), (row, task, path)


def test_test_profile_runs_end_to_end(repo_copy):
    result = snakemake(repo_copy, "all", "--configfile", TEST)
    assert result.returncode == 0, result.stderr[-3000:]
    results = repo_copy / "results" / "test"
    rows = ["Base model", "Quark", "Quark (worst-quantile token)"]
    out = results / "toxicity"
    table = pd.read_csv(out / "table.csv")
    assert list(table["method"]) == rows
    assert table["avg_max_toxicity"].between(0, 1).all() and (table["perplexity"] > 1).all()
    assert (table["train_seconds"] > 0).all() and (table["peak_rss_mb"] > 0).all()
    assert "Quark (worst-quantile token)" in (out / "table.md").read_text()
    tex = (out / "table.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\caption{Task toxicity, test profile: 6 prompts" in tex
    assert "\\multicolumn{3}{c}{Toxicity}" in tex and "Fluency &" in tex and "\\toprule" in tex
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "quark" / "seed0" / "metrics.json").read_text())
    assert metrics["num_prompts"] == 6 and metrics["num_samples"] == 18
    records = [json.loads(line) for line in (out / "quark" / "seed0" / "generations.jsonl").open()]
    assert {"prompt_id", "sample", "text", "token_ids"} <= set(records[0])
    stats = json.loads((out / "quark" / "seed0" / "train_stats.json").read_text())
    assert len(stats["rounds"]) == 2 and stats["rounds"][1]["pool_size"] == 40
    # round 0 was the task's shared base samples, 20 of them: the first draw of the set's first 20 prompts
    assert stats["base_samples"] == "shared: results/test/toxicity/_base_samples/seed0/samples.jsonl", stats
    shared = [json.loads(line) for line in (out / "_base_samples" / "seed0" / "samples.jsonl").open()]
    assert len(shared) == 2 * 40 and stats["rounds"][0]["pool_size"] == 20
    # what produced the row: versions, machine and dtype, from training (model.json) and evaluation
    prov = json.loads((out / "quark" / "metrics.json").read_text())["provenance"]
    assert prov["train"]["packages"]["torch"] == prov["evaluate"]["packages"]["torch"] == torch.__version__
    assert prov["train"]["bf16"] is False and prov["train"]["cpu"] and prov["evaluate"]["bf16"] is None
    # each job's output is in its log: the training job's per-round summaries, every task's table job's log
    assert "round 1:" in (out / "quark" / "seed0" / "train.log").read_text()
    assert (out / "quark" / "seed0" / "evaluate.log").is_file()
    assert {p.stem for p in (results / "logs" / "table").glob("*.log")} == {
        "toxicity",
        "sentiment-positive",
        "sentiment-negative",
        "repetition",
    }

    # sentiment: 3 typed prompts of each reported type, positive rates in [0, 1], the paper's rows kept apart
    for task, types in {
        "sentiment-positive": ["negative", "neutral"],
        "sentiment-negative": ["positive", "neutral"],
    }.items():
        table = pd.read_csv(results / task / "table.csv")
        assert list(table["method"]) == rows
        for t in types:
            assert table[f"positive_rate_{t}"].between(0, 1).all()
        metrics = json.loads((results / task / "base" / "seed0" / "metrics.json").read_text())
        assert [metrics[f"num_prompts_{t}"] for t in types] == [3, 3]
        assert "Published numbers, for reference only" in (results / task / "table.md").read_text()
    # toxicity: the DExperts paper's rows below the table, never in its CSV
    assert "DExperts Table 1" in (results / "toxicity" / "table.md").read_text()
    assert "DExperts (large)" not in set(pd.read_csv(results / "toxicity" / "table.csv")["method"])
    # repetition: one fixed-length greedy and two sampled continuations per prefix
    table = pd.read_csv(results / "repetition" / "table.csv")
    assert list(table["method"]) == rows and table["rep_4_greedy"].between(0, 1).all()
    records = [json.loads(line) for line in (results / "repetition" / "base" / "seed0" / "generations.jsonl").open()]
    assert sorted(r["decoding"] for r in records) == ["greedy"] * 6 + ["sampling"] * 12
    assert {len(r["token_ids"]) for r in records} == {12}

    # a second run has nothing left to do
    again = snakemake(repo_copy, "all", "--configfile", TEST, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def write(repo, name, text):
    path = repo / "data" / name
    path.write_text(text)
    return f"data/{name}"


BAD_INPUTS = {
    "schema": (lambda r: {"eval": {"num_samples": "many"}}, ["eval/num_samples", "override.yaml"]),
    "unknown method": (lambda r: {"methods": ["base", "nope"]}, ["unknown method 'nope'"]),
    "unknown task": (lambda r: {"tasks": ["nope"]}, ["unknown task 'nope'"]),
    "no usable wikitext prefix": (lambda r: {"data": {"repetition": {"prefix_words": 5000}}}, ["no usable prefix"]),
    "missing prompts": (
        lambda r: {"data": {"toxicity": {"eval_prompts": "data/none.jsonl"}}},
        ["prompts file not found", "data/none.jsonl"],
    ),
    "bad json line": (
        lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "bad.jsonl", '{"prompt": "a"}\n{oops\n')}}},
        ["data/bad.jsonl:2", "not valid JSON"],
    ),
    "no prompt": (
        lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "np.jsonl", '{"prompt": "a"}\n{"text": "b"}\n')}}},
        ["data/np.jsonl:2", "no prompt"],
    ),
    "empty prompts": (
        lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "empty.jsonl", "\n")}}},
        ["data/empty.jsonl", "no prompts"],
    ),
    "model path": (lambda r: {"base_model": "path:/no/such/model"}, ["model directory not found", "/no/such/model"]),
    "control character": (
        lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "cc.jsonl", '{"prompt": "a\tb"}\n')}}},
        ["data/cc.jsonl:1", "Invalid control character at column 14"],
    ),
    "no method runs a task": (
        lambda r: {"methods": ["dexperts"], "tasks": ["repetition"]},
        ["no requested method runs task 'repetition'"],
    ),
    "unknown judge": (
        lambda r: {"scorers": {"toxicity": "nope"}},
        ["scorers.toxicity: unknown scorer 'nope'", "minilm_toxicity", "perspective"],
    ),
    "unknown reward scorer": (
        lambda r: {"reward": {"toxicity": {"scorer": "nope"}}},
        ["reward.toxicity: unknown scorer 'nope'"],
    ),
    "unknown reward": (
        lambda r: {"reward": {"toxicity": {"name": "nope"}}},
        ["reward.toxicity.name: unknown reward 'nope'", "diversity"],
    ),
    "untyped sentiment prompts": (
        lambda r: {"tasks": ["sentiment-positive"], "sentiment_prompts": {"typed": "data/rtp/dev.jsonl"}},
        ["data/rtp/dev.jsonl:1", "no sentiment_type"],
    ),
    "missing typed sentiment prompts": (
        lambda r: {"tasks": ["sentiment-negative"], "sentiment_prompts": {"typed": "data/none.jsonl"}},
        ["sentiment_prompts.typed", "data/none.jsonl"],
    ),
    "results_dir is a file": (
        lambda r: {"results_dir": write(r, "blocker", "a file\n")},
        ["results_dir", "data/blocker is a file"],
    ),
    "results_dir under a file": (
        lambda r: {"results_dir": write(r, "blocker2", "a file\n") + "/sub"},
        ["results_dir", "data/blocker2 is a file"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_in_one_line(repo_copy, case):
    make, needles = BAD_INPUTS[case]
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, override(repo_copy, **make(repo_copy)))
    assert_one_line_error(result, *needles)


def test_unknown_method_on_the_command_line_blames_the_command_line(repo_copy):
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, "--config", "methods=[base,nope]")
    assert_one_line_error(result, "--config methods=", "unknown method 'nope'")
    assert "test.yaml" not in [line for line in result.stderr.splitlines() if line.startswith("error:")][0]


def test_hyphen_in_a_method_directory_fails_in_one_line(repo_copy):
    shutil.copytree(repo_copy / "methods" / "base", repo_copy / "methods" / "my-method")
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST)
    assert_one_line_error(result, "methods/my-method", "hyphen")


def test_a_misspelt_key_in_a_method_yaml_fails_in_one_line(repo_copy):
    spec = repo_copy / "methods" / "quark" / "method.yaml"
    spec.write_text(spec.read_text().replace("budget_keys:", "budget_key:"))
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST)
    assert_one_line_error(result, "methods/quark/method.yaml", "'budget_key' was unexpected", "method.schema.yaml")


def test_variant_keyword_generate_does_not_take_fails_in_one_line(repo_copy):
    """docs/adding-a-method.md's own example, on a copy of `base`: a variant option its generate() has no parameter for."""
    mine = repo_copy / "methods" / "my_method"
    shutil.copytree(repo_copy / "methods" / "base", mine)
    spec = yaml.safe_load((mine / "method.yaml").read_text())
    spec["variants"] = {"strong": {"name": "Mine (strong)", "generate": {"strength": 2.0}}}
    (mine / "method.yaml").write_text(yaml.safe_dump(spec))
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, "--config", "methods=[base,my_method-strong]")
    assert_one_line_error(result, "methods/my_method/method.yaml", "variant 'strong'", "strength")


def test_corrupt_model_directory_fails_in_one_line(repo_copy):
    model = repo_copy / "corrupt_model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "vocab_size": 10}')
    (model / "model.safetensors").write_text("not a safetensors file")
    settings = override(repo_copy, base_model=f"path:{model}")
    result = snakemake(repo_copy, "results/test/base_model", "--configfile", TEST, settings)
    assert_one_line_error(result, str(model), "cannot load the model")
    assert "cannot load the model" in (repo_copy / "results/test/logs/base_model.log").read_text()  # kept to read


def test_method_without_entry_points_fails_in_one_line(repo_copy):
    method = repo_copy / "methods" / "broken"
    method.mkdir()
    (method / "method.yaml").write_text("name: Broken\ntasks: [toxicity]\n")
    (method / "__init__.py").write_text("def train(*a, **k):\n    pass\n")
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST)
    assert_one_line_error(result, "methods/broken/__init__.py", "generate")


def resources_by_rule(result) -> dict[str, str]:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    blocks = {}
    for block in out.split("\nrule ")[1:]:
        name = block.split(":", 1)[0]
        blocks.setdefault(name, next((line for line in block.splitlines() if "resources:" in line), ""))
    return blocks


def test_slurm_profile_sizes_requests_from_the_config_profile(repo_copy):
    """Requests come from the config profile's `cluster` section; a user's --configfile adds account and partitions
    and a --set-resources override of one key keeps the others."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    user = repo_copy / "cluster.yaml"
    user.write_text("device: cuda\ncluster: {account: lab, partition: cpu, gpu_partition: gpu}\n")
    result = snakemake(
        repo_copy,
        "-n",
        "all",
        "--configfile",
        TEST,
        str(user),
        "--profile",
        "workflow/profiles/slurm",
        "--set-resources",
        "train:mem_mb=5000",
    )
    blocks = resources_by_rule(result)
    assert {"train", "generate", "evaluate", "base_model"} <= set(blocks)
    assert "mem_mb=5000" in blocks["train"] and "runtime=15" in blocks["train"], blocks["train"]
    assert "mem_mb=3000" in blocks["generate"] and "runtime=15" in blocks["generate"]  # test.yaml, not 64 GB
    for rule in ["train", "generate", "evaluate", "type_sentiment_prompts", "prepare_corpus"]:  # they load models
        assert "gpu=1" in blocks[rule] and "slurm_partition=gpu" in blocks[rule], (rule, blocks[rule])
        assert "slurm_account=lab" in blocks[rule], (rule, blocks[rule])
    assert "gpu=" not in blocks["base_model"] and "slurm_partition=cpu" in blocks["base_model"]
    mini = resources_by_rule(snakemake(repo_copy, "-n", "all", "--profile", "workflow/profiles/slurm"))
    assert "mem_mb=12000" in mini["train"] and "runtime=480" in mini["train"], mini["train"]


def test_a_request_no_node_can_take_fails_before_submission(repo_copy, tmp_path):
    """With sinfo reporting only a node smaller than the test profile's requests, the run stops in one line, before
    SLURM could hold the job PENDING for ever."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in {
        "sinfo": "echo 'main* 2 2000'",
        "sbatch": "exit 1",
        "sacct": "exit 1",
        "squeue": "exit 0",
    }.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    env_path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "all", "--configfile", TEST, "--profile", "workflow/profiles/slurm"]
    result = subprocess.run(
        cmd, cwd=repo_copy, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": env_path}
    )
    assert_one_line_error(result, "asks 1 CPUs and 3000 MB", "partition 'default'", "2 CPUs/2000 MB", "cluster.mem_mb.")
    assert not (repo_copy / "results").exists()


TRAINING_RULES = {
    "prepare_train_prompts",
    "prepare_corpus",
    "base_samples",
    "train",
    "dexperts_expert",
    "dexperts_ensemble",
    "acf_sample",
    "acf_train_r",
    "acf_train_lm",
    "acf_finish",
}


def planned_rules(result) -> set[str]:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    return {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith(("rule ", "localrule "))}


def test_evaluation_settings_never_retrain(repo_copy):
    """After a finished run, each evaluation setting in turn reruns generation and evaluation only; a training
    setting retrains exactly the methods it reaches (DExperts' experts and ACF's rounds are multi-job trainers)."""
    rows = override(repo_copy, methods=["base", "quark", "dexperts", "acf"], tasks=["toxicity"])
    finished = snakemake(repo_copy, "all", "--configfile", TEST, rows)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (repo_copy / "mine.jsonl").write_text((repo_copy / "data/rtp/dev.jsonl").read_text())  # a reviewer's own prompts
    evaluation_changes = {
        "eval prompts file": {"data": {"toxicity": {"eval_prompts": "mine.jsonl"}}},
        "max_prompts": {"eval": {"max_prompts": 7}},
        "num_samples": {"eval": {"num_samples": 4}},
        "top_p": {"eval": {"top_p": 0.8}},
    }
    for name, change in evaluation_changes.items():
        (repo_copy / "change.yaml").write_text(yaml.safe_dump(change))
        planned = planned_rules(snakemake(repo_copy, "-n", "all", "--configfile", TEST, rows, "change.yaml"))
        assert planned & TRAINING_RULES == set(), (name, planned)
        assert {"generate", "evaluate"} <= planned, (name, planned)
    # a training setting: Quark's learning rate retrains Quark alone
    (repo_copy / "change.yaml").write_text(yaml.safe_dump({"hparams": {"quark": {"lr": 0.5}}}))
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, rows, "change.yaml")
    planned = planned_rules(result)
    assert planned & TRAINING_RULES == {"train"}, planned
    trained = [
        line.split()[1]
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip().startswith("output:") and line.strip().endswith("model.json")
    ]
    assert trained == ["results/test/toxicity/quark/seed0/model.json"], trained
    # the same settings written in another key order (sorted, as yaml.safe_dump writes them, or reversed), with one
    # evaluation setting changed: Snakemake compares params by their text, so a dict param built in the file's key
    # order would rerun the base model and every training job
    config = yaml.safe_load((repo_copy / TEST).read_text())
    for order, text in {
        "sorted": yaml.safe_dump(config),
        "reversed": yaml.safe_dump(reversed_keys(config), sort_keys=False),
    }.items():
        (repo_copy / "reordered.yaml").write_text(text)
        (repo_copy / "change.yaml").write_text(yaml.safe_dump({"eval": {"max_prompts": 7}}))
        planned = planned_rules(
            snakemake(repo_copy, "-n", "all", "--configfile", "reordered.yaml", rows, "change.yaml")
        )
        assert planned & (TRAINING_RULES | {"base_model"}) == set(), (order, planned)
        assert {"generate", "evaluate"} <= planned, (order, planned)


def reversed_keys(value):
    """`value` with every dict's keys in reverse order: the same config, written another way."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return value


def expert_jobs(result) -> list[str]:
    """The outputs of the planned dexperts_expert jobs."""
    lines = (result.stdout + result.stderr).splitlines()
    return sorted(lines[i + 2].split()[1] for i, line in enumerate(lines) if line.startswith("rule dexperts_expert"))


def test_the_two_sentiment_columns_share_their_experts_roles_swapped(repo_copy):
    rows = override(repo_copy, methods=["base", "dexperts"], tasks=["sentiment-positive", "sentiment-negative"])
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, rows)
    run = "results/test/sentiment-positive/dexperts/seed0"
    assert expert_jobs(result) == [f"{run}/antiexpert", f"{run}/expert"], result.stdout[-3000:]
    built = snakemake(
        repo_copy, "--configfile", TEST, rows, "--", "results/test/sentiment-negative/dexperts/seed0/model.json"
    )
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = repo_copy / "results/test/sentiment-negative/dexperts/seed0/ensemble"
    spec = read_ensemble(manifest)
    assert spec["expert"].resolve() == (repo_copy / run / "antiexpert").resolve()
    assert spec["antiexpert"].resolve() == (repo_copy / run / "expert").resolve()
    assert json.loads((repo_copy / run / "antiexpert/train_stats.json").read_text())["texts"] > 0
    # a setting that differs between the two columns trains each column its own experts
    (repo_copy / "change.yaml").write_text(
        yaml.safe_dump({"hparams": {"dexperts": {"per_task": {"sentiment-negative": {"lr": 0.5}}}}})
    )
    apart = expert_jobs(snakemake(repo_copy, "-n", "all", "--configfile", TEST, rows, "change.yaml"))
    negative = "results/test/sentiment-negative/dexperts/seed0"
    assert apart == [f"{negative}/antiexpert", f"{negative}/expert"], apart  # sentiment-positive's are built already


def test_budget_curve_trains_each_multiple_once_and_plots_it(repo_copy):
    """`snakemake budget_curve`: a budget row x2 trains with its budget keys doubled, and draws twice the samples."""
    change = override(
        repo_copy,
        tasks=["toxicity"],
        methods=["base"],
        budget_curve={"task": "toxicity", "methods": ["quark"], "budgets": [1, 2]},
    )
    result = snakemake(repo_copy, "budget_curve", "--configfile", TEST, change)
    assert result.returncode == 0, result.stderr[-3000:]
    out = repo_copy / "results" / "test" / "toxicity"
    runs = {
        k: json.loads((out / row / "seed0" / "model.json").read_text()) for k, row in ((1, "quark"), (2, "quark-x2"))
    }
    assert runs[2]["hparams"]["num_rounds"] == 2 * runs[1]["hparams"]["num_rounds"]
    assert {k: v for k, v in runs[2]["hparams"].items() if k != "num_rounds"} == {
        k: v for k, v in runs[1]["hparams"].items() if k != "num_rounds"
    }
    curve = pd.read_csv(out / "budget_curve.csv")
    trained, base = curve[curve["budget"].notna()], curve[curve["budget"].isna()]
    assert list(trained["budget"]) == [1, 2]
    assert trained["scored_samples"].iloc[1] == 2 * trained["scored_samples"].iloc[0]
    assert trained["avg_max_toxicity"].between(0, 1).all() and (trained["train_minutes"] > 0).all()
    # the default reference row, the base model, is drawn at its own value
    assert list(base["method"]) == ["Base model"]
    base_metrics = json.loads((out / "base" / "metrics.json").read_text())
    assert base["avg_max_toxicity"].iloc[0] == pytest.approx(base_metrics["avg_max_toxicity"])
    assert "Quark" in (out / "budget_curve.md").read_text() and "| reference |" in (out / "budget_curve.md").read_text()
    assert (out / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_nested_values_given_with_config_are_typed_as_in_a_configfile(repo_copy):
    """Snakemake hands nested --config values over as strings ('2'); the schema wants the integers they spell."""
    curve = "budget_curve={task: toxicity, methods: [quark], budgets: [1, 2]}"
    result = snakemake(repo_copy, "-n", "budget_curve", "--configfile", TEST, "--config", curve)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "toxicity/quark-x2/seed0/model.json" in result.stdout


def test_budget_curve_of_a_method_without_budget_keys_fails_in_one_line(repo_copy):
    change = override(repo_copy, budget_curve={"methods": ["base"], "budgets": [1, 2]})
    result = snakemake(repo_copy, "-n", "budget_curve", "--configfile", TEST, change)
    assert_one_line_error(result, "budget_curve", "no variant 'x2'", "budget_keys")


def planned_jobs(result) -> list[dict]:
    """Each planned job of a dry run as {rule, input: [...], output: [...], wildcards}."""
    jobs = []
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith(("rule ", "localrule ")):
            jobs.append({"rule": line.split()[1].rstrip(":"), "input": [], "output": []})
        elif jobs and line.strip().startswith(("input:", "output:")):
            key, _, files = line.strip().partition(": ")
            jobs[-1][key] = files.split(", ")
    return jobs


def test_the_base_samples_are_drawn_once_per_task_for_every_method_that_learns_from_them(repo_copy):
    rows = override(repo_copy, methods=["base", "quark", "dt", "nado", "acf"], tasks=["toxicity", "repetition"])
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, rows)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    drawn = sorted(out for j in jobs if j["rule"] == "base_samples" for out in j["output"] if out.endswith(".jsonl"))
    assert drawn == [f"results/test/{t}/_base_samples/seed0/samples.jsonl" for t in ("repetition", "toxicity")]
    for task, samples in zip(("repetition", "toxicity"), drawn):
        readers = sorted(
            next(o for o in j["output"] if "/seed0/" in o).split("/")[3] + ("" if j["rule"] == "train" else j["rule"])
            for j in jobs
            if samples in j["input"]
        )
        # Quark, DT-style and NADO train from them; of ACF's jobs only round 0's sampling reads them
        assert readers == ["acfacf_sample", "dt", "nado", "quark"], (task, readers)
        acf_rounds = [j for j in jobs if j["rule"] == "acf_sample" and f"/{task}/" in j["output"][0]]
        assert len(acf_rounds) > 1 and sum(samples in j["input"] for j in acf_rounds) == 1


def test_the_default_profile_scores_the_committed_sentiment_prompts_without_typing_them(repo_copy):
    """The mini profile ships its typed sentiment prompts, so its eval prompts are the ones every committed
    reference row was scored on, whatever the CPU or sampler (a fresh typing keeps few of them); `typed: null`
    types them again."""
    tasks = ["sentiment-positive", "sentiment-negative"]
    evals = [f"results/mini/data/{t}/eval.jsonl" for t in tasks]
    rows = override(repo_copy, methods=["base"], tasks=tasks)
    jobs = planned_jobs(snakemake(repo_copy, "-n", "all", "--configfile", "workflow/config/config.yaml", rows))
    assert "type_sentiment_prompts" not in {j["rule"] for j in jobs}
    assert {tuple(j["input"]) for j in jobs if j["rule"] == "prepare_eval_prompts"} == {
        ("data/rtp/dev-sentiment-types.jsonl",)
    }
    made = snakemake(repo_copy, *evals, "--configfile", "workflow/config/config.yaml", rows)
    assert made.returncode == 0, made.stderr[-3000:]
    for t, path in zip(tasks, evals):
        assert (repo_copy / path).read_bytes() == (ROOT / f"results/reference/mini/data/{t}/eval.jsonl").read_bytes()
    (repo_copy / "retype.yaml").write_text(yaml.safe_dump({"sentiment_prompts": {"typed": None}}))
    jobs = planned_jobs(
        snakemake(
            repo_copy, "-n", "--forceall", *evals, "--configfile", "workflow/config/config.yaml", rows, "retype.yaml"
        )
    )
    assert [j["rule"] for j in jobs].count("type_sentiment_prompts") == 1
    assert {tuple(j["input"]) for j in jobs if j["rule"] == "prepare_eval_prompts"} == {
        ("results/mini/data/sentiment_types.jsonl",)
    }


def test_a_training_variant_trains_its_own_run_and_its_worst_token_row_samples_from_it(repo_copy):
    """`quark-prompt` is a training variant (method.yaml `hparams`): its own run, with its hyperparameters over the
    method's; `quark-prompt-worst` (`from: prompt`) samples that run's model, and the paper row stays as it was."""
    rows = override(repo_copy, methods=["base", "quark", "quark-prompt", "quark-prompt-worst"], tasks=["toxicity"])
    jobs = planned_jobs(snakemake(repo_copy, "-n", "all", "--configfile", TEST, rows))
    trained = {j["output"][0] for j in jobs if j["rule"] == "train"}
    run = "results/test/toxicity/{}/seed0/model.json"
    assert trained == {run.format(r) for r in ("base", "quark", "quark-prompt")}, trained
    worst = next(j for j in jobs if j["rule"] == "generate" and "/quark-prompt-worst/" in j["output"][0])
    assert run.format("quark-prompt") in worst["input"], worst
    built = snakemake(repo_copy, "--configfile", TEST, rows, "--", run.format("quark-prompt"), run.format("quark"))
    assert built.returncode == 0, built.stderr[-3000:]
    paper, variant = (json.loads((repo_copy / run.format(r)).read_text())["hparams"] for r in ("quark", "quark-prompt"))
    assert (paper.get("quantile_scope", "pool"), variant["quantile_scope"]) == ("pool", "prompt")
    assert (paper.get("samples_per_prompt", 1), variant["samples_per_prompt"]) == (1, 2)
    assert {
        k: v for k, v in variant.items() if k not in {"quantile_scope", "samples_per_prompt", "prompts_per_round"}
    } == {k: v for k, v in paper.items() if k not in {"quantile_scope", "samples_per_prompt", "prompts_per_round"}}
