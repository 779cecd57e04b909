"""Where a task's reward varies, and how far another judge's ranking agrees with it: the probe's reference points.

On a task's scored base samples (methods/common/base_samples.py) it reports

    within_prompt_share   the share of the reward's variance that lies within prompts (1 - between-prompt share)
    prompt_range          the median over prompts of the range of their samples' rewards
    chance                the probe's chance band on the probe split: the mean and standard deviation of its two
                          AUCs over random scores, what a dial that had learned nothing would score
    judge_auc, judge_auc_within
                          the probe split ranked by another scorer (lower score = better), as the controllability
                          probe ranks it by a model's delta (methods/common/probe.py): what a dial that had learned
                          the attribute as that judge sees it would score

    .venv/bin/python workflow/scripts/reward_spread.py \
        --samples results/reference/mini/toxicity/_base_samples/seed0/samples.jsonl --judge profanity_check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from evaluation.scorers import get_scorer  # noqa: E402
from methods.common.base_samples import BaseSamples  # noqa: E402
from methods.common.probe import concordance  # noqa: E402


def spread(rows: pd.DataFrame) -> dict:
    """The within-prompt share of the reward's variance and the median per-prompt reward range."""
    by_prompt = rows.groupby("prompt_id")["reward"]
    within = rows["reward"] - by_prompt.transform("mean")
    return {
        "samples": len(rows),
        "within_prompt_share": float(within.var(ddof=0) / rows["reward"].var(ddof=0)),
        "prompt_range": float((by_prompt.max() - by_prompt.min()).median()),
    }


def chance_band(probe: pd.DataFrame, draws: int = 1000, seed: int = 0) -> dict:
    """The mean and standard deviation of the probe's AUC, all and within prompt, over `draws` random scorings."""
    rng = np.random.default_rng(seed)
    noise = [rng.standard_normal(len(probe)) for _ in range(draws)]
    auc = np.array([concordance(x, probe["reward"]) for x in noise])
    within = np.array([concordance(x, probe["reward"], probe["prompt_id"]) for x in noise])
    return {"auc": [float(auc.mean()), float(auc.std())], "auc_within": [float(within.mean()), float(within.std())]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=Path, required=True, help="a task's base samples (samples.jsonl)")
    parser.add_argument("--judge", default=None, help="a scorer of evaluation/scorers.py, higher = worse")
    args = parser.parse_args()
    rows = pd.DataFrame([r for r in BaseSamples.read(args.samples).rows if r["reward"] is not None])
    probe = rows[rows["probe"]]
    report = {"pool": spread(rows[~rows["probe"]]), "probe": spread(probe), "chance": chance_band(probe)}
    if args.judge:
        better = -pd.Series(get_scorer(args.judge)(probe["text"].tolist()), index=probe.index)
        report["judge"] = args.judge
        report["judge_auc"] = concordance(better, probe["reward"])
        report["judge_auc_within"] = concordance(better, probe["reward"], probe["prompt_id"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
