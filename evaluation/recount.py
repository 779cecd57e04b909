"""Recompute the metrics that depend on the generated text alone, from a results tree's committed generations.

    python -m evaluation recount results/reference/mini

For every `<task>/<row>/seed*/generations.jsonl` it runs the task evaluator's `text_metrics` (distinct-n; the
repetition metrics), replaces those values in the seed's `metrics.json` and `per_prompt.csv`, drops values the
evaluator no longer reports, re-averages the row over seeds, and rewrites the task's tables and plot. Scores that
need a model or a judge (perplexity, toxicity, sentiment) are kept as they are: no model is loaded. Used when a
text metric's definition changes, so that the committed numbers follow it without retraining or resampling.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import yaml

from core.data import read_jsonl, write_json
from core.errors import SuiteError
from evaluation.report import aggregate_metrics, write_task_report
from evaluation.tasks import task_spec

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "workflow" / "config" / "config.yaml"


def _kept(key: str, reported: set[str]) -> bool:
    return key in reported or key.startswith("num_") or key in ("ci95", "provenance")


def recount_seed(seed_dir: Path, evaluator, task: str) -> dict:
    old = json.loads((seed_dir / "metrics.json").read_text())
    if old.get("num_unscored"):
        raise SuiteError(f"{seed_dir / 'metrics.json'}: {old['num_unscored']} unscored samples; rerun `evaluate`")
    new, table = evaluator.text_metrics(read_jsonl(seed_dir / "generations.jsonl"))
    reported = set(evaluator.metrics(task))
    dropped = {k for k in old if not _kept(k, reported)}
    metrics = {k: v for k, v in old.items() if k not in dropped} | {k: v for k, v in new.items() if k != "ci95"}
    metrics["ci95"] = {k: v for k, v in old["ci95"].items() if k not in dropped} | new["ci95"]
    write_json(seed_dir / "metrics.json", metrics)
    per_prompt = pd.read_csv(seed_dir / "per_prompt.csv", index_col=0)
    per_prompt = per_prompt.drop(columns=[c for c in per_prompt.columns if c in dropped])
    for column in table.columns:
        per_prompt[column] = table[column]
    per_prompt.to_csv(seed_dir / "per_prompt.csv")
    return metrics


def judges(config: Path) -> dict[str, str]:
    """The judge each task's table names: the config's `scorers.<task>` (a name, or {name: ..., ...})."""
    specs = yaml.safe_load(config.read_text(encoding="utf-8")).get("scorers") or {}
    return {task: spec["name"] if isinstance(spec, dict) else spec for task, spec in specs.items()}


def recount(results_dir: Path, config: Path = DEFAULT_CONFIG) -> list[str]:
    """Recount every task column under `results_dir`, whose judges `config` names; returns the rows it rewrote."""
    judge = judges(config)
    tables = sorted(results_dir.glob("*/table.csv"))
    if not tables:
        raise SuiteError(f"{results_dir}: no <task>/table.csv; name a profile's results directory")
    done = []
    for table_path in tables:
        task_dir = table_path.parent
        task = task_dir.name
        evaluator = importlib.import_module(task_spec(task).evaluator)
        rows = []
        for name in pd.read_csv(table_path)["method"]:
            row_file = next(
                (p for p in task_dir.glob("*/metrics.json") if json.loads(p.read_text())["method"] == name), None
            )
            if row_file is None:
                raise SuiteError(f"{table_path}: no {task}/<row>/metrics.json for the row '{name}'")
            per_seed = [recount_seed(d, evaluator, task) for d in sorted(row_file.parent.glob("seed*"))]
            old = json.loads(row_file.read_text())
            row = {
                "method": name,
                **aggregate_metrics(per_seed),
                "cost": old["cost"],
                "train_stats": old.get("train_stats", {}),
                **({"provenance": old["provenance"]} if "provenance" in old else {}),
                "seeds": per_seed,
            }
            write_json(row_file, row)
            rows.append((name, row))
            done.append(f"{task}/{row_file.parent.name}")
        write_task_report(task, rows, task_dir, results_dir.name, judge.get(task))
    return done
