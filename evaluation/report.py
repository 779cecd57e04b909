"""Per-task tables (Markdown, CSV, LaTeX) and plots from the rows' metrics.json and benchmark files."""

from __future__ import annotations

import html
import importlib
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.data import atomic_output  # noqa: E402
from evaluation.tasks import task_spec  # noqa: E402


def read_benchmark(path: str | Path) -> dict:
    """Snakemake's benchmark TSV: wall-clock seconds and peak resident memory (MB)."""
    row = pd.read_csv(path, sep="\t").iloc[0]
    rss = pd.to_numeric(row.get("max_rss"), errors="coerce")
    return {"seconds": float(row["s"]), "max_rss_mb": float(rss) if np.isfinite(rss) else float("nan")}


def aggregate_seeds(metric_files: list[str | Path], train_benchmarks: list, generate_benchmarks: list) -> dict:
    """Mean over seeds of every metric; spread over seeds; cost from the benchmark files."""
    per_seed = [json.loads(Path(p).read_text()) for p in metric_files]
    out = aggregate_metrics(per_seed)
    train = [read_benchmark(p) for p in train_benchmarks]
    gen = [read_benchmark(p) for p in generate_benchmarks]
    out["cost"] = {
        "train_seconds": float(np.mean([b["seconds"] for b in train])),
        "generate_seconds": float(np.mean([b["seconds"] for b in gen])),
        "peak_rss_mb": float(np.nanmax([b["max_rss_mb"] for b in train + gen])),
    }
    out["train_stats"] = _train_stats(train_benchmarks)
    out["provenance"] = _provenance(train_benchmarks, per_seed)
    out["seeds"] = per_seed
    return out


def aggregate_metrics(per_seed: list[dict]) -> dict:
    """Mean over seeds of every number in the seeds' metrics, their spread, and the mean 95% interval."""
    names = [k for k, v in per_seed[0].items() if isinstance(v, (int, float))]
    out: dict = {k: float(np.mean([m[k] for m in per_seed])) for k in names}
    out["num_seeds"] = len(per_seed)
    out["seed_std"] = {k: float(np.std([m[k] for m in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0 for k in names}
    cis = [m.get("ci95", {}) for m in per_seed]
    out["ci95"] = {
        k: None
        if any(c.get(k) is None for c in cis)
        else [float(np.mean([c[k][0] for c in cis])), float(np.mean([c[k][1] for c in cis]))]
        for k in cis[0]
    }
    return out


TRAIN_STATS = {
    "scored_samples": np.mean,
    "dropped_unscored": np.sum,
    "heldout_perplexity": np.mean,
    "base_heldout_perplexity": np.mean,
    "probe_auc": np.mean,
    "probe_auc_within": np.mean,
    "r_auc": np.mean,
    "r_auc_token": np.mean,
}


def _train_stats(train_benchmarks: list) -> dict:
    """Samples the reward never scored (summed over seeds), held-out corpus perplexity, the controllability
    probe's AUCs and NADO's R's AUCs (means), from the `train_stats.json` a training job leaves beside its benchmark file; a method
    that reports none of them gets {}."""
    stats = [
        json.loads(p.read_text()) for b in train_benchmarks if (p := Path(b).with_name("train_stats.json")).is_file()
    ]
    return {k: float(f([s[k] for s in stats])) for k, f in TRAIN_STATS.items() if stats and all(k in s for s in stats)}


def _provenance(train_benchmarks: list, per_seed: list[dict]) -> dict:
    """The first seed's training (its model.json) and evaluation provenance; None where a run predates it."""
    model = Path(train_benchmarks[0]).with_name("model.json") if train_benchmarks else None
    train = json.loads(model.read_text()).get("provenance") if model and model.is_file() else None
    return {"train": train, "evaluate": per_seed[0].get("provenance")}


def _decimals(value: float, scale: float = 1.0, count: bool = False) -> int:
    """Places for a cell: percentages 2 (as the papers print them), counts none, others by size."""
    if scale != 1.0:
        return 2
    if count and float(value).is_integer():
        return 0
    return 3 if abs(value) < 10 else 2 if abs(value) < 1000 else 0


def _fmt(value: float, scale: float) -> str:
    return f"{value * scale:.{_decimals(value, scale)}f}"


def _cell(
    value: float, ci: list[float] | None, std: float, num_seeds: int, scale: float = 1.0, count: bool = False
) -> str:
    """`value [ci]`, or `value ± std [ci]` over seeds, all at the precision the value's size calls for."""
    if value is None or not np.isfinite(value):
        return "–"
    places = _decimals(value, scale, count)
    text = f"{value * scale:.{places}f}"
    if num_seeds > 1:
        text += f" ± {std * scale:.{places}f}"
    if ci is not None and np.isfinite(ci[0]):
        text += f" [{ci[0] * scale:.{places}f}, {ci[1] * scale:.{places}f}]"
    return text


def _latex(tex: str) -> str:
    for old, new in (("↓", r"$\downarrow$"), ("↑", r"$\uparrow$"), ("±", r"$\pm$"), ("%", r"\%"), ("–", "--")):
        tex = tex.replace(old, new)
    return tex


def column_group(label: str) -> str:
    """The Quark paper's header groups, read off a column's label."""
    low = label.lower()
    if "perplexity" in low or "ppl" in low:
        return "Fluency"
    if low.startswith(("dist-", "diversity", "uniq")):
        return "Diversity"
    if "auc" in low:
        return "Control"
    if low.startswith(("train (", "generate (", "peak rss", "unscored")):
        return "Cost"
    return "" if label == "Method" else "Attribute"


def grouped(frame: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """The columns in the paper's groups (attribute, fluency, diversity, control, cost), under a two-level header."""
    order = ["", "Attribute", "Fluency", "Diversity", "Control", "Cost"]
    out = frame[sorted(frame.columns, key=lambda c: order.index(column_group(c)))]  # stable: in-group order kept
    out.columns = pd.MultiIndex.from_tuples([(column_group(c).replace("Attribute", attribute), c) for c in out.columns])
    return out


CI_CELL = re.compile(r"^(.+?) (\[.+\])$")  # "mean [low, high]" or "mean ± std [low, high]"


def _stacked(top: str, bottom: str, size: str = r"\scriptsize ") -> str:
    return rf"\begin{{tabular}}[t]{{@{{}}l@{{}}}}{top}\\ {size}{bottom}\end{{tabular}}"


def _halves(text: str) -> tuple[str, str]:
    """Two lines of words, as even in length as the spaces allow."""
    words = text.split(" ")
    cut = min(range(1, len(words)), key=lambda i: abs(len(" ".join(words[:i])) - len(" ".join(words[i:]))))
    return " ".join(words[:cut]), " ".join(words[cut:])


def latex_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The printed table's cells: each interval on a line of its own under its mean, in a smaller size, and each
    label on two lines (its parenthesis, smaller, under its name), so the table keeps a legible size on a page."""

    def cell(text: str) -> str:
        found = CI_CELL.match(text)
        return _stacked(*found.groups()) if found else text

    def label(text: str) -> str:
        name, paren, detail = text.partition(" (")
        if paren:
            return _stacked(name, paren.strip() + detail)
        return _stacked(*_halves(text), size="") if text.count(" ") > 1 else text

    out = frame.map(cell)
    out.columns = pd.MultiIndex.from_tuples([(group, label(name)) for group, name in frame.columns])
    return out


def latex_table(body: str, caption: str) -> str:
    """A booktabs tabular as a captioned float, scaled down to the text width when wider (never up): one that fits a
    page. `workflow/scripts/check_latex.py` compiles every task's table.tex and refuses an overfull line."""
    caption = _latex(caption).replace("_", r"\_").replace("×", r"$\times$")
    return (
        "\\begin{table}[t]\n\\centering\n\\small\n"
        "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"
        + _latex(body)
        + "}\n\\caption{"
        + caption
        + "}\n\\end{table}\n"
    )


HTML_STYLE = """<style>
body { font-family: sans-serif; font-size: 13px; }
table { border-collapse: collapse; margin-bottom: 1em; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.5em; }
th, td { border-bottom: 1px solid #ccc; padding: 3px 8px; white-space: nowrap; }
th { background: #f2f2f2; }
td:first-child { text-align: left; font-weight: bold; }
</style>"""


def html_table(
    frame: pd.DataFrame, caption: str, attribute: str, note: str, reference: pd.DataFrame | None, source: str = ""
) -> str:
    """A standalone page for the HTML report: the grouped table under its caption, the note, the published numbers."""
    table = grouped(frame, attribute).to_html(index=False, border=0)
    opened = table.index(">") + 1  # after the opening <table ...> tag
    table = f"{table[:opened]}\n<caption>{html.escape(caption)}</caption>{table[opened:]}"
    parts = [
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(caption)}</title>',
        HTML_STYLE,
        "</head><body>",
        table,
        f"<p>{html.escape(note)}</p>",
    ]
    if reference is not None:
        parts += [
            f"<p>Published numbers, for reference only ({html.escape(source)}; other model, judge and scale):</p>",
            reference.to_html(index=False, border=0),
        ]
    return "\n".join([*parts, "</body></html>\n"])


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.open = [], False

    def handle_starttag(self, tag, attrs):
        if tag in ("caption", "th", "td"):
            self.open = True
            self.cells.append((tag, ""))

    def handle_endtag(self, tag):
        self.open = False

    def handle_data(self, data):
        if self.open:
            self.cells[-1] = (self.cells[-1][0], self.cells[-1][1] + data)


def html_cells(page: str) -> list[tuple[str, str]]:
    """(tag, text) of every caption, th and td of an HTML page, in order, whitespace collapsed: what a table shows."""
    parser = _Cells()
    parser.feed(page)
    return [(tag, " ".join(text.split())) for tag, text in parser.cells]


def make_table(
    rows: list[tuple[str, dict]],
    metrics: list[str],
    out_prefix: str | Path,
    labels: dict[str, str] | None = None,
    percent: set[str] = frozenset(),
    reference: tuple[str, list[dict]] | None = None,
    caption: str = "",
    attribute: str = "Attribute",
) -> pd.DataFrame:
    """rows: (display name, aggregated metrics). Writes {prefix}.md, .csv, .tex and .html; returns the display frame.

    `percent` metrics print as percentages (their labels say so). `reference` = (source, rows of published numbers keyed by metric) adds
    a separate, labelled table of the paper's numbers to the Markdown and LaTeX files (never to the CSV, which holds
    only what this suite measured).
    """
    labels = labels or {}
    label = {k: labels.get(k, k) for k in metrics}
    display, numeric = [], []
    for name, m in rows:
        d = {"Method": name}
        n = {"method": name, "num_seeds": m["num_seeds"], "num_prompts": m.get("num_prompts")}
        for k in metrics:
            ci = m["ci95"].get(k)
            std = m["seed_std"].get(k, 0.0)
            # a metric without an interval is a count (uniq): no decimals
            d[label[k]] = _cell(m.get(k), ci, std, m["num_seeds"], 100.0 if k in percent else 1.0, ci is None)
            low, high = ci if ci is not None else (None, None)
            n[k], n[f"{k}_ci_low"], n[f"{k}_ci_high"], n[f"{k}_seed_std"] = m.get(k), low, high, std
        trained = m.get("train_stats", {})
        if any("heldout_perplexity" in r.get("train_stats", {}) for _, r in rows):
            d["Held-out PPL ↓"] = _cell(trained.get("heldout_perplexity"), None, 0.0, 1)
        if any("probe_auc" in r.get("train_stats", {}) for _, r in rows):  # reward-conditioned rows' dial
            d["Probe AUC ↑ (all / within prompt)"] = (
                f"{trained['probe_auc']:.3f} / {trained['probe_auc_within']:.3f}" if "probe_auc" in trained else "–"
            )
        if any("r_auc" in r.get("train_stats", {}) for _, r in rows):  # NADO's and ACF's auxiliary model
            d["R AUC ↑ (seq / token)"] = (
                f"{trained['r_auc']:.3f} / {trained['r_auc_token']:.3f}" if "r_auc" in trained else "–"
            )
        if any("dropped_unscored" in r.get("train_stats", {}) for _, r in rows):
            d["Unscored"] = f"{trained['dropped_unscored']:.0f}" if "dropped_unscored" in trained else "–"
        cost = m["cost"]
        d["Train (min)"] = f"{cost['train_seconds'] / 60:.1f}"
        d["Generate (min)"] = f"{cost['generate_seconds'] / 60:.1f}"
        d["Peak RSS (GB)"] = f"{cost['peak_rss_mb'] / 1024:.2f}"
        n.update(trained | cost)
        display.append(d)
        numeric.append(n)
    frame = pd.DataFrame(display)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    note = "Cells: mean [95% bootstrap CI over prompts]; with several seeds, mean ± std over seeds [mean CI]."
    md, tex = (
        frame.to_markdown(index=False, disable_numparse=True) + f"\n\n{note}\n",
        latex_table(
            latex_cells(grouped(frame, attribute)).to_latex(index=False, multicolumn=True, multicolumn_format="c"),
            f"{caption} {note}".strip(),
        ),
    )
    ref = None
    if reference is not None:
        source, ref_rows = reference
        ref = pd.DataFrame(
            [
                {
                    "Method": r["method"],
                    **{
                        label[k]: "–" if r.get(k) is None else _fmt(r[k], 100.0 if k in percent else 1.0)
                        for k in metrics
                    },
                }
                for r in ref_rows
            ]
        )
        ref = ref.loc[:, (ref != "–").any(axis=0)]
        md += f"\nPublished numbers, for reference only ({source}; other model, judge and scale):\n\n"
        md += ref.to_markdown(index=False, disable_numparse=True) + "\n"
        tex += latex_table(
            ref.to_latex(index=False),
            f"Published numbers, for reference only ({source}; other model, judge and scale).",
        )
    page = html_table(frame, caption, attribute, note, ref, reference[0] if reference else "")
    Path(f"{out_prefix}.html").write_text(page, encoding="utf-8")
    Path(f"{out_prefix}.md").write_text(md, encoding="utf-8")
    pd.DataFrame(numeric).to_csv(f"{out_prefix}.csv", index=False)
    Path(f"{out_prefix}.tex").write_text(tex, encoding="utf-8")
    return frame


BASELINE = "Base model"  # methods/base/method.yaml's name: the row every plot draws as a reference line


def write_task_report(
    task: str, rows: list[tuple[str, dict]], out_dir: str | Path, profile: str, judge: str | None = None
) -> None:
    """table.md, table.csv, table.tex, table.html and plot.png of one task column, each written whole and renamed."""
    evaluator = importlib.import_module(task_spec(task).evaluator)
    reference = (evaluator.PAPER_SOURCE, evaluator.paper_rows(task)) if hasattr(evaluator, "paper_rows") else None
    labels = evaluator.labels(task) if hasattr(evaluator, "labels") else evaluator.LABELS
    percent = getattr(evaluator, "PERCENT", set())
    first = rows[0][1] if rows else {}
    n = f"{first.get('num_prompts', 0):.0f} prompts × {first.get('num_samples', 0) / max(first.get('num_prompts', 1), 1):.0f} samples"
    caption = f"Task {task}, {profile} profile: {n}{f', judge {judge}' if judge else ''}."
    stem = Path(out_dir) / f"table.tmp{os.getpid()}"
    attribute = evaluator.__name__.rsplit(".", 1)[-1].capitalize()
    make_table(rows, evaluator.metrics(task), stem, labels, percent, reference, caption, attribute)
    for suffix in (".md", ".csv", ".tex", ".html"):
        os.replace(f"{stem}{suffix}", Path(out_dir) / f"table{suffix}")
    note = (
        f"Bars: mean; whiskers: 95% bootstrap interval over prompts; dashed line: {BASELINE.lower()}. "
        f"{n}{f', judge {judge}' if judge else ''}."
    )
    with atomic_output(Path(out_dir) / "plot.png") as png:
        make_plot(rows, evaluator.plotted(task), f"{task} ({profile} profile)", png, labels, percent, note)


def make_plot(
    rows: list[tuple[str, dict]],
    metrics: list[str],
    title: str,
    out_path: str | Path,
    labels: dict | None = None,
    percent: set[str] = frozenset(),
    note: str = "",
) -> None:
    """One horizontal bar chart per metric, with 95% bootstrap intervals as error bars where they exist, the base
    model's value as a dashed line, `percent` metrics on a 0-100 axis, and `note` (what the bars are, n, the judge)
    under the panels."""
    labels = labels or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.5 * len(rows) + 2.0), sharey=True)
    names = [name for name, _ in rows][::-1]
    for ax, k in zip(np.atleast_1d(axes), metrics):
        scale = 100.0 if k in percent else 1.0
        values = np.array([m.get(k, np.nan) for _, m in rows][::-1], dtype=float) * scale
        cis = [
            np.array(m["ci95"].get(k), dtype=float) * scale if m["ci95"].get(k) else (v, v)
            for (_, m), v in zip(rows[::-1], values)
        ]
        lo, hi = np.array([c[0] for c in cis], dtype=float), np.array([c[1] for c in cis], dtype=float)
        ax.barh(names, values, xerr=[values - lo, hi - values], color="#4c72b0", capsize=3)
        if BASELINE in names:
            ax.axvline(values[names.index(BASELINE)], color="#555555", linestyle="--", linewidth=1)
        ax.set_title(labels.get(k, k), fontsize=10)
        ax.set_xlabel(
            f"{labels.get(k, k).rstrip(' ↑↓')}{' (%)' if k in percent and '%' not in labels.get(k, k) else ''}"
        )
        if k in percent:
            ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    if note:
        fig.text(0.01, 0.01, note, fontsize=8, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.05 if note else 0, 1, 1))
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def write_budget_curve(
    task: str,
    rows: list[tuple[str, int, dict]],
    out_dir: str | Path,
    profile: str,
    references: list[tuple[str, dict]] = (),
) -> pd.DataFrame:
    """budget_curve.{md,csv,png}: each (method, budget multiple, aggregated metrics) row's plotted metrics against the
    scored samples its training drew and against its training minutes, one line per method; each (name, metrics)
    reference row (the base model, a method at its own budget) is a dashed line at its value."""
    evaluator = importlib.import_module(task_spec(task).evaluator)
    metrics, labels = evaluator.plotted(task), evaluator.LABELS
    records = []
    for method, budget, m in [*rows, *((name, None, m) for name, m in references)]:
        stats = m.get("train_stats", {})
        record = {
            "method": method,
            "budget": budget,
            "scored_samples": stats.get("scored_samples"),
            "train_minutes": m["cost"]["train_seconds"] / 60 if m.get("cost", {}).get("train_seconds") else None,
            "probe_auc": stats.get("probe_auc"),
        }
        for k in metrics:
            low, high = m["ci95"].get(k) or (None, None)
            record |= {k: m.get(k), f"{k}_ci_low": low, f"{k}_ci_high": high}
        records.append(record)
    frame = pd.DataFrame(records)
    out_dir = Path(out_dir)
    with atomic_output(out_dir / "budget_curve.csv") as path:
        frame.to_csv(path, index=False)
    shown = pd.DataFrame({"method": frame["method"]})
    shown["budget"] = [f"{b:g}×" if pd.notna(b) else "reference" for b in frame["budget"]]
    shown["scored samples"] = [f"{n:.0f}" if pd.notna(n) else "–" for n in frame["scored_samples"]]
    shown["training minutes"] = [f"{t:.1f}" if pd.notna(t) else "–" for t in frame["train_minutes"]]
    for k in metrics:
        shown[labels.get(k, k)] = [_cell(r[k], [r[f"{k}_ci_low"], r[f"{k}_ci_high"]], 0.0, 1) for r in records]
    if frame["probe_auc"].notna().any():
        shown["Probe AUC"] = [f"{a:.3f}" if pd.notna(a) else "–" for a in frame["probe_auc"]]
    with atomic_output(out_dir / "budget_curve.md") as path:
        Path(path).write_text(shown.to_markdown(index=False) + "\n")
    curves, lines = frame[frame["budget"].notna()], frame[frame["budget"].isna()]
    fig, axes = plt.subplots(2, len(metrics), figsize=(3.6 * len(metrics), 6.4), squeeze=False)
    for row, x in enumerate(["scored_samples", "train_minutes"]):
        for ax, k in zip(axes[row], metrics):
            for method, group in curves.groupby("method", sort=False):
                group = group.sort_values("budget")
                y = group[k].to_numpy(float)
                low, high = (group[f"{k}_ci_{e}"].fillna(group[k]).to_numpy(float) for e in ("low", "high"))
                ax.errorbar(group[x].astype(float), y, yerr=[y - low, high - y], marker="o", capsize=3, label=method)
            for i, (_, ref) in enumerate(lines.iterrows()):
                ax.axhline(ref[k], color="0.35", linestyle=("--", ":", "-.")[i % 3], linewidth=1, label=ref["method"])
            ax.set_xlabel("scored samples" if x == "scored_samples" else "training minutes")
            ax.set_title(labels.get(k, k), fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{task}: metric against training budget ({profile} profile); bars: 95% CI over prompts")
    fig.tight_layout()
    with atomic_output(out_dir / "budget_curve.png") as png:
        fig.savefig(png, dpi=120)
    plt.close(fig)
    return frame
