"""The DAG: a new method directory is scheduled; the test profile runs end to end; bad input fails in one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

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
    for path in ["toxicity/dummy/seed0/model.json", "toxicity/dummy/seed0/generations.jsonl",
                 "toxicity/dummy/seed0/metrics.json", "toxicity/dummy/metrics.json"]:  # fmt: skip
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
    assert (out / "table.tex").read_text().startswith("\\begin{tabular}")
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "quark" / "seed0" / "metrics.json").read_text())
    assert metrics["num_prompts"] == 6 and metrics["num_samples"] == 18
    records = [json.loads(line) for line in (out / "quark" / "seed0" / "generations.jsonl").open()]
    assert {"prompt_id", "sample", "text", "token_ids"} <= set(records[0])
    stats = json.loads((out / "quark" / "seed0" / "train_stats.json").read_text())
    assert len(stats["rounds"]) == 2 and stats["rounds"][1]["pool_size"] == 40

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
    "missing prompts": (lambda r: {"data": {"toxicity": {"eval_prompts": "data/none.jsonl"}}},
                        ["prompts file not found", "data/none.jsonl"]),
    "bad json line": (lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "bad.jsonl", '{"prompt": "a"}\n{oops\n')}}},
                      ["data/bad.jsonl:2", "not valid JSON"]),
    "no prompt": (lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "np.jsonl", '{"prompt": "a"}\n{"text": "b"}\n')}}},
                  ["data/np.jsonl:2", "no prompt"]),
    "empty prompts": (lambda r: {"data": {"toxicity": {"eval_prompts": write(r, "empty.jsonl", "\n")}}},
                      ["data/empty.jsonl", "no prompts"]),
    "model path": (lambda r: {"base_model": "path:/no/such/model"}, ["model directory not found", "/no/such/model"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_in_one_line(repo_copy, case):
    make, needles = BAD_INPUTS[case]
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, override(repo_copy, **make(repo_copy)))
    assert_one_line_error(result, *needles)


def test_method_without_entry_points_fails_in_one_line(repo_copy):
    method = repo_copy / "methods" / "broken"
    method.mkdir()
    (method / "method.yaml").write_text("name: Broken\ntasks: [toxicity]\n")
    (method / "__init__.py").write_text("def train(*a, **k):\n    pass\n")
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST)
    assert_one_line_error(result, "methods/broken/__init__.py", "generate")


def test_slurm_profile_resolves_every_jobs_resources(repo_copy):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cuda = override(repo_copy, device="cuda")
    result = snakemake(repo_copy, "-n", "all", "--configfile", TEST, cuda, "--profile", "workflow/profiles/slurm")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    blocks = {}
    for block in out.split("\nrule ")[1:]:
        name = block.split(":", 1)[0]
        resources = next((line for line in block.splitlines() if "resources:" in line), "")
        blocks.setdefault(name, resources)
    assert {"train", "generate", "evaluate", "base_model"} <= set(blocks)
    assert "runtime=2880" in blocks["train"] and "mem_mb=64000" in blocks["train"]
    assert "runtime=720" in blocks["generate"] and "runtime=240" in blocks["evaluate"]
    for rule in ["train", "generate", "evaluate", "type_sentiment_prompts", "prepare_corpus"]:  # they load models
        assert "gpu=1" in blocks[rule], (rule, blocks[rule])
    assert "gpu=" not in blocks["prepare_train_prompts"] and "gpu=" not in blocks["prepare_eval_prompts"]


TRAINING_RULES = {"prepare_train_prompts", "prepare_corpus", "train", "dexperts_expert", "dexperts_ensemble",
                  "acf_sample", "acf_train_r", "acf_train_lm", "acf_finish"}  # fmt: skip


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
    trained = [line.split()[1] for line in (result.stdout + result.stderr).splitlines()
               if line.strip().startswith("output:") and line.strip().endswith("model.json")]  # fmt: skip
    assert trained == ["results/test/toxicity/quark/seed0/model.json"], trained


def test_budget_curve_trains_each_multiple_once_and_plots_it(repo_copy):
    """`snakemake budget_curve`: a budget row x2 trains with its budget keys doubled, and draws twice the samples."""
    change = override(repo_copy, tasks=["toxicity"], methods=["base"],
                      budget_curve={"task": "toxicity", "methods": ["quark"], "budgets": [1, 2]})  # fmt: skip
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
    assert list(curve["budget"]) == [1, 2] and curve["scored_samples"].iloc[1] == 2 * curve["scored_samples"].iloc[0]
    assert curve["avg_max_toxicity"].between(0, 1).all() and (curve["train_minutes"] > 0).all()
    assert "Quark" in (out / "budget_curve.md").read_text()
    assert (out / "budget_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_curve_of_a_method_without_budget_keys_fails_in_one_line(repo_copy):
    change = override(repo_copy, budget_curve={"methods": ["base"], "budgets": [1, 2]})
    result = snakemake(repo_copy, "-n", "budget_curve", "--configfile", TEST, change)
    assert_one_line_error(result, "budget_curve", "no variant 'x2'", "budget_keys")
