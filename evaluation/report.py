"""Per-task tables (Markdown, CSV, LaTeX) and plots from the rows' metrics.json and benchmark files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LABELS = {
    "avg_max_toxicity": "Avg. max toxicity ↓",
    "toxicity_probability": "Toxicity prob. ↓",
    "mean_toxicity": "Mean toxicity ↓",
    "perplexity": "Perplexity ↓",
    "dist_1": "Dist-1 ↑",
    "dist_2": "Dist-2 ↑",
    "dist_3": "Dist-3 ↑",
}
PLOTTED = {"toxicity": ["avg_max_toxicity", "toxicity_probability", "perplexity", "dist_3"]}


def read_benchmark(path: str | Path) -> dict:
    """Snakemake's benchmark TSV: wall-clock seconds and peak resident memory (MB)."""
    row = pd.read_csv(path, sep="\t").iloc[0]
    rss = pd.to_numeric(row.get("max_rss"), errors="coerce")
    return {"seconds": float(row["s"]), "max_rss_mb": float(rss) if np.isfinite(rss) else float("nan")}


def aggregate_seeds(metric_files: list[str | Path], train_benchmarks: list, generate_benchmarks: list) -> dict:
    """Mean over seeds of every metric; spread over seeds; cost from the benchmark files."""
    per_seed = [json.loads(Path(p).read_text()) for p in metric_files]
    names = [k for k, v in per_seed[0].items() if isinstance(v, (int, float))]
    out: dict = {k: float(np.mean([m[k] for m in per_seed])) for k in names}
    out["num_seeds"] = len(per_seed)
    out["seed_std"] = {k: float(np.std([m[k] for m in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0 for k in names}
    cis = [m.get("ci95", {}) for m in per_seed]
    out["ci95"] = {k: [float(np.mean([c[k][0] for c in cis])), float(np.mean([c[k][1] for c in cis]))] for k in cis[0]}
    train = [read_benchmark(p) for p in train_benchmarks]
    gen = [read_benchmark(p) for p in generate_benchmarks]
    out["cost"] = {
        "train_seconds": float(np.mean([b["seconds"] for b in train])),
        "generate_seconds": float(np.mean([b["seconds"] for b in gen])),
        "peak_rss_mb": float(np.nanmax([b["max_rss_mb"] for b in train + gen])),
    }
    out["seeds"] = per_seed
    return out


def _cell(value: float, ci: list[float] | None, std: float, num_seeds: int) -> str:
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    if num_seeds > 1:
        text += f" ± {std:.3f}"
    if ci is not None and np.isfinite(ci[0]):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]" if abs(value) < 100 else f" [{ci[0]:.1f}, {ci[1]:.1f}]"
    return text


def make_table(rows: list[tuple[str, dict]], metrics: list[str], out_prefix: str | Path) -> pd.DataFrame:
    """rows: (display name, aggregated metrics). Writes {prefix}.md, .csv and .tex; returns the display frame."""
    display, numeric = [], []
    for name, m in rows:
        d = {"Method": name}
        n = {"method": name, "num_seeds": m["num_seeds"], "num_prompts": m.get("num_prompts")}
        for k in metrics:
            ci = m["ci95"].get(k)
            d[LABELS.get(k, k)] = _cell(m[k], ci, m["seed_std"].get(k, 0.0), m["num_seeds"])
            n[k], n[f"{k}_ci_low"], n[f"{k}_ci_high"], n[f"{k}_seed_std"] = m[k], ci[0], ci[1], m["seed_std"][k]
        cost = m["cost"]
        d["Train (min)"] = f"{cost['train_seconds'] / 60:.1f}"
        d["Generate (min)"] = f"{cost['generate_seconds'] / 60:.1f}"
        d["Peak RSS (GB)"] = f"{cost['peak_rss_mb'] / 1024:.2f}"
        n.update(cost)
        display.append(d)
        numeric.append(n)
    frame = pd.DataFrame(display)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    note = "Cells: mean [95% bootstrap CI over prompts]; with several seeds, mean ± std over seeds [mean CI]."
    Path(f"{out_prefix}.md").write_text(frame.to_markdown(index=False) + f"\n\n{note}\n", encoding="utf-8")
    pd.DataFrame(numeric).to_csv(f"{out_prefix}.csv", index=False)
    latex = frame.to_latex(index=False).replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$").replace("±", r"$\pm$")
    Path(f"{out_prefix}.tex").write_text(latex, encoding="utf-8")
    return frame


def make_plot(rows: list[tuple[str, dict]], metrics: list[str], title: str, out_path: str | Path) -> None:
    """One horizontal bar chart per metric, with 95% bootstrap intervals as error bars."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 0.5 * len(rows) + 1.6), sharey=True)
    names = [name for name, _ in rows][::-1]
    for ax, k in zip(np.atleast_1d(axes), metrics):
        values = np.array([m[k] for _, m in rows][::-1])
        lo = np.array([m["ci95"][k][0] for _, m in rows][::-1])
        hi = np.array([m["ci95"][k][1] for _, m in rows][::-1])
        ax.barh(names, values, xerr=[values - lo, hi - values], color="#4c72b0", capsize=3)
        ax.set_title(LABELS.get(k, k), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
