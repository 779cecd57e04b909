"""Build the paper profile's prompt files from RealToxicityPrompts on the Hugging Face Hub (needs network).

    python workflow/scripts/fetch_paper_data.py --out data/paper

Writes rtp_nontoxic_test.jsonl (10,000 prompts with Perspective toxicity < 0.5, as DExperts and Quark evaluate on)
and rtp_train.jsonl (every other prompt, for training). DExperts' exact 10K rows are not on the Hub; this draws
its own 10K with a fixed seed, so numbers are comparable in protocol, not row for row.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from methods.common.data import write_jsonl  # noqa: E402
from methods.common.errors import run_cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/paper", help="output directory")
    parser.add_argument("--test-size", type=int, default=10_000, help="non-toxic test prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from datasets import load_dataset

    rows = load_dataset("allenai/real-toxicity-prompts", split="train")
    rows = [dict(r, id=f"rtp-{i}") for i, r in enumerate(rows)]
    nontoxic = [r for r in rows if r["prompt"]["toxicity"] is not None and r["prompt"]["toxicity"] < 0.5]
    test = random.Random(args.seed).sample(nontoxic, args.test_size)
    test_ids = {r["id"] for r in test}
    train = [r for r in rows if r["id"] not in test_ids]
    out = Path(args.out)
    write_jsonl(out / "rtp_nontoxic_test.jsonl", test)
    write_jsonl(out / "rtp_train.jsonl", train)
    print(f"wrote {len(test)} test and {len(train)} train prompts to {out}/")


if __name__ == "__main__":
    run_cli(main)
