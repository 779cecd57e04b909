"""Compare a rerun's tables with the committed reference, metric by metric.

    python -m evaluation.compare results/mini results/reference/mini [--tasks repetition ...]

For every task table of the reference (or those `--tasks` names) and every method row in both, prints the
reference value with its 95% interval and the rerun's value, and flags a rerun value outside the reference interval
(a value without an interval, such as the count uniq, must equal the reference's; a metric the rerun lacks is flagged
too). Exit status 1 if any is flagged. For each flagged row it then prints how the two runs' provenance differs
(commit, library versions, CPU or GPU, dtype: methods/common/provenance.py), from the rows' metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from core.errors import SuiteError, run_cli


def compare(run_dir: Path, reference_dir: Path, tasks: list[str] | None = None) -> pd.DataFrame:
    rows = []
    tables = sorted(reference_dir.glob("*/table.csv"))
    if not tables:
        raise SuiteError(f"{reference_dir}: no */table.csv to compare with")
    if tasks is not None:
        unknown = sorted(set(tasks) - {t.parent.name for t in tables})
        if unknown:
            raise SuiteError(f"{reference_dir}: no reference table for task(s) {', '.join(unknown)}")
        tables = [t for t in tables if t.parent.name in tasks]
    for ref_path in tables:
        task = ref_path.parent.name
        run_path = run_dir / task / "table.csv"
        if not run_path.is_file():
            raise SuiteError(f"{run_path}: missing (the reference has task '{task}')")
        ref, run = pd.read_csv(ref_path).set_index("method"), pd.read_csv(run_path).set_index("method")
        metrics = [c[: -len("_ci_low")] for c in ref.columns if c.endswith("_ci_low")]
        for method in ref.index.intersection(run.index):
            for m in metrics:
                lo, hi, reference = ref.at[method, f"{m}_ci_low"], ref.at[method, f"{m}_ci_high"], ref.at[method, m]
                value = run.at[method, m] if m in run.columns else float("nan")  # a metric the rerun lacks: flagged
                # a metric without an interval (a count such as uniq) must match the reference
                outside = value != reference if pd.isna(lo) or pd.isna(hi) else not lo <= value <= hi
                rows.append(
                    {
                        "task": task,
                        "method": method,
                        "metric": m,
                        "reference": reference,
                        "ci_low": lo,
                        "ci_high": hi,
                        "rerun": value,
                        "outside_ci": bool(outside),
                    }
                )
    return pd.DataFrame(rows)


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def row_provenance(task_dir: Path) -> dict[str, dict | None]:
    """Each row's provenance (flattened, training and evaluation) by the method name its table shows."""
    rows = {}
    for path in task_dir.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        rows[metrics.get("method")] = _flat(metrics["provenance"]) if metrics.get("provenance") else None
    return rows


def provenance_differences(run_dir: Path, reference_dir: Path, flagged: pd.DataFrame) -> list[str]:
    """One line per flagged (task, row): what differs between the rerun's provenance and the reference's."""
    lines, read = [], {}  # each task directory's rows read once
    for task, method in flagged[["task", "method"]].drop_duplicates().itertuples(index=False):
        if task not in read:
            read[task] = row_provenance(reference_dir / task), row_provenance(run_dir / task)
        ref, run = read[task][0].get(method), read[task][1].get(method)
        if ref is None or run is None:
            lines.append(f"{task} / {method}: provenance not recorded in the {'reference' if ref is None else 'rerun'}")
            continue
        diffs = [f"{k} {ref.get(k)} -> {run.get(k)}" for k in sorted(set(ref) | set(run)) if ref.get(k) != run.get(k)]
        lines.append(f"{task} / {method}: " + ("; ".join(diffs) if diffs else "same provenance"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a rerun's {results_dir}/{profile}")
    parser.add_argument("reference_dir", type=Path, help="e.g. results/reference/mini")
    parser.add_argument("--tasks", nargs="+", help="compare only these tasks (default: every reference task)")
    args = parser.parse_args()
    frame = compare(args.run_dir, args.reference_dir, args.tasks)
    print(frame.to_markdown(index=False, floatfmt=".4f"))
    flagged = int(frame["outside_ci"].sum())
    print(f"\n{flagged} of {len(frame)} values outside the reference's 95% interval")
    if flagged:
        print("\nProvenance (reference -> rerun) of the flagged rows:")
        for line in provenance_differences(args.run_dir, args.reference_dir, frame[frame["outside_ci"]]):
            print(f"- {line}")
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
