"""Build the paper profile's data files from the Hugging Face Hub (needs network and `datasets`).

    python workflow/scripts/fetch_paper_data.py --out data/paper

RealToxicityPrompts (Gehman et al. 2020, allenai/real-toxicity-prompts), for toxicity and, as OpenWebText
sentences, for sentiment:
    rtp_nontoxic_test.jsonl  10,000 prompts with Perspective toxicity < 0.5, as DExperts and Quark evaluate on
    rtp_train.jsonl          every other prompt, for training and for typing the sentiment eval prompts
DExperts' exact 10K rows are not on the Hub; this draws its own 10K with a fixed seed, so numbers are comparable in
protocol, not row for row.

WikiText-103 (Merity et al. 2016, Salesforce/wikitext, config wikitext-103-raw-v1), for repetition, in the raw
layout the suite reads (' = Title = ' headings, one paragraph per line; evaluation/tasks.py, wikitext_articles):
    wikitext-103-train.txt   the train split: training prefixes and the human-text corpus
    wikitext-103-test.txt    the test split: evaluation prefixes, as Welleck et al. (2020) and the Quark paper report
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.data import write_jsonl  # noqa: E402
from core.errors import run_cli  # noqa: E402

WIKITEXT = ("Salesforce/wikitext", "wikitext-103-raw-v1")
WIKITEXT_SPLITS = {"train": "train", "test": "test", "valid": "validation"}


def wikitext_lines(rows: Iterable[dict]) -> Iterable[str]:
    """The Hub's rows are the raw file's lines, blank ones as ''; give each back its newline (blanks as ' ')."""
    for row in rows:
        yield (row["text"].rstrip("\n") or " ") + "\n"


def write_wikitext(split: str, path: Path) -> int:
    from datasets import load_dataset

    rows = load_dataset(*WIKITEXT, split=WIKITEXT_SPLITS[split])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(tqdm(wikitext_lines(rows), total=len(rows), desc=f"WikiText-103 {split}", unit="line"))
    tmp.replace(path)
    return len(rows)


def write_rtp(out: Path, test_size: int, seed: int) -> None:
    from datasets import load_dataset

    rows = load_dataset("allenai/real-toxicity-prompts", split="train")
    rows = [dict(r, id=f"rtp-{i}") for i, r in enumerate(rows)]
    nontoxic = [r for r in rows if r["prompt"]["toxicity"] is not None and r["prompt"]["toxicity"] < 0.5]
    test = random.Random(seed).sample(nontoxic, test_size)
    test_ids = {r["id"] for r in test}
    train = [r for r in rows if r["id"] not in test_ids]
    write_jsonl(out / "rtp_nontoxic_test.jsonl", test)
    write_jsonl(out / "rtp_train.jsonl", train)
    print(f"wrote {len(test)} test and {len(train)} train prompts to {out}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/paper", help="output directory")
    parser.add_argument("--test-size", type=int, default=10_000, help="non-toxic test prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wikitext-eval-split",
        choices=["test", "valid"],
        default="test",
        help="WikiText-103 split for the repetition eval prefixes (the paper profile reads wikitext-103-test.txt)",
    )
    parser.add_argument("--skip-rtp", action="store_true", help="write the WikiText files only")
    parser.add_argument("--skip-wikitext", action="store_true", help="write the RealToxicityPrompts files only")
    args = parser.parse_args()

    out = Path(args.out)
    if not args.skip_rtp:
        write_rtp(out, args.test_size, args.seed)
    if not args.skip_wikitext:
        for split in ("train", args.wikitext_eval_split):
            lines = write_wikitext(split, out / f"wikitext-103-{split}.txt")
            print(f"wrote {lines} lines of WikiText-103 {split} to {out}/wikitext-103-{split}.txt")


if __name__ == "__main__":
    run_cli(main)
