"""Snakemake benchmark files of a method trained in several jobs, as the one row its table cell reads."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd


def combine_benchmarks(paths: list[str | Path], out_path: str | Path) -> None:
    """One benchmark row for several jobs: seconds, I/O and CPU time summed; memory the maximum; load time-weighted."""
    rows = pd.concat([pd.read_csv(p, sep="\t").iloc[:1] for p in paths], ignore_index=True)
    rows = rows.apply(pd.to_numeric, errors="coerce")
    out = {col: rows[col].max() if col.startswith("max_") else rows[col].sum() for col in rows if col != "h:m:s"}
    if "mean_load" in rows:
        out["mean_load"] = float((rows["mean_load"] * rows["s"]).sum() / max(rows["s"].sum(), 1e-9))
    out["h:m:s"] = str(timedelta(seconds=round(float(out["s"]))))
    columns = ["s", "h:m:s", *[c for c in rows if c not in ("s", "h:m:s")]]
    pd.DataFrame([out])[columns].to_csv(out_path, sep="\t", index=False, float_format="%.2f")
