"""Command-line tools of the shared evaluators.

    python -m evaluation score --scorer profanity_check --input texts.jsonl --out scored.jsonl
    python -m evaluation recount results/reference/mini

`score` reads one JSON object per line with a `text` field and writes each object back with `score` added:
higher means more of the scorer's attribute (for a toxicity scorer, more toxic); null where it could not score. `recount` recomputes the text-only metrics (distinct-n, repetition) of a results
tree from its generations and rewrites its tables (see evaluation/recount.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from core.data import iter_jsonl, write_jsonl
from core.errors import SuiteError, run_cli
from evaluation.scorers import get_scorer


def read_texts(path: Path) -> list[dict]:
    rows = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SuiteError(f"{path}:{lineno}: no 'text' string")
        rows.append(row)
    return rows


def score(args: argparse.Namespace) -> None:
    rows = read_texts(args.input)
    scorer = get_scorer(args.scorer)
    scores = []
    for start in tqdm(range(0, len(rows), args.batch_size), desc=f"scoring with {args.scorer}", unit="batch"):
        scores += scorer([r["text"] for r in rows[start : start + args.batch_size]])
    write_jsonl(args.out, [{**row, "score": s} for row, s in zip(rows, scores)])
    print(f"scored {len(rows)} texts ({sum(s is None for s in scores)} unscored) -> {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("score", help="score texts from a JSONL file with a registered scorer")
    p.add_argument("--scorer", required=True, help="scorer name, e.g. profanity_check or perspective")
    p.add_argument("--input", type=Path, required=True, help="JSONL with a 'text' field per line")
    p.add_argument("--out", type=Path, required=True, help="JSONL to write, each input object plus 'score'")
    p.add_argument("--batch-size", type=int, default=256)
    p = commands.add_parser("recount", help="recompute text-only metrics from a results tree's generations")
    p.add_argument("results_dir", type=Path, help="a profile's results directory, e.g. results/reference/mini")
    p.add_argument("--configfile", type=Path, help="the config that produced it (its judges); default: the default")
    args = parser.parse_args()
    if args.command == "score":
        score(args)
    else:
        from evaluation.recount import recount

        rows = recount(args.results_dir, *([args.configfile] if args.configfile else []))
        print(f"recounted {len(rows)} rows under {args.results_dir}")


if __name__ == "__main__":
    run_cli(main)
