import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from core.errors import SuiteError
from evaluation import toxicity
from evaluation.metrics import bootstrap_ci, bootstrap_pooled_ci, distinct_metrics, distinct_n
from evaluation.perplexity import conditional_perplexity
from evaluation.report import aggregate_seeds, html_cells, make_table


def test_distinct_n_divides_by_words_as_dexperts_and_quark_count():
    texts = ["a b c", "a b d"]  # 6 words; the papers divide every n by the word count, not the n-gram count
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # a, b, c, d
    assert distinct_n(texts, 2) == pytest.approx(3 / 6)  # ab, bc, bd
    assert distinct_n(texts, 3) == pytest.approx(2 / 6)  # abc, abd
    assert distinct_n(["x"], 2) == 0.0
    assert distinct_n(["a  b"], 1) == pytest.approx(3 / 3)  # split on single spaces: "a", "", "b"


def _records(texts_by_prompt):
    return [
        {"prompt_id": pid, "prompt": "p", "sample": i, "text": t, "token_ids": [1]}
        for pid, texts in texts_by_prompt.items()
        for i, t in enumerate(texts)
    ]


def test_distinct_metrics_average_over_prompts():
    records = _records({"p1": ["a b c", "a b d"], "p2": ["x x x x"]})
    metrics, table = distinct_metrics(records)
    assert table.loc["p2", "dist_1"] == pytest.approx(1 / 4) and table.loc["p2", "dist_2"] == pytest.approx(1 / 4)
    assert metrics["dist_2"] == pytest.approx((3 / 6 + 1 / 4) / 2)
    assert metrics["ci95"]["dist_2"] == (pytest.approx(1 / 4), pytest.approx(3 / 6))


def test_toxicity_metrics_follow_the_rtp_protocol():
    records = _records({"p1": ["a", "b", "c"], "p2": ["d", "e", "f"], "p3": ["g", "h", "i"]})
    scores = {"a": 0.1, "b": 0.6, "c": 0.2, "d": 0.3, "e": 0.4, "f": 0.1, "g": 0.9, "h": 0.95, "i": 0.0}
    ppl = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    metrics, table = toxicity.evaluate(records, lambda texts: [scores[t] for t in texts], ppl)
    assert metrics["avg_max_toxicity"] == pytest.approx((0.6 + 0.4 + 0.95) / 3)
    assert metrics["toxicity_probability"] == pytest.approx(2 / 3)
    assert metrics["mean_toxicity"] == pytest.approx(np.mean(list(scores.values())))
    assert metrics["perplexity"] == pytest.approx(50)
    assert metrics["num_prompts"] == 3 and metrics["num_samples"] == 9
    lo, hi = metrics["ci95"]["avg_max_toxicity"]
    assert 0.4 <= lo <= metrics["avg_max_toxicity"] <= hi <= 0.95
    assert table.loc["p2", "toxic"] == 0.0 and table.loc["p3", "max_toxicity"] == 0.95


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.2, 30), rng.normal(0.5, 0.2, 3000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)


def test_pooled_interval_resamples_prompts_whole():
    rng = np.random.default_rng(0)
    counts = np.stack([rng.integers(5, 10, 200), np.full(200, 10)], axis=1)  # (unique, total) per prompt

    def rate(c):
        return 1 - c[..., 0] / c[..., 1]

    lo, hi = bootstrap_pooled_ci(counts, rate)
    assert lo < rate(counts.sum(axis=0)) < hi and hi - lo < 0.05
    assert bootstrap_pooled_ci(counts[:1], rate) == (rate(counts[0]),) * 2


def test_perplexity_matches_a_brute_force_computation(tiny):
    _, tokenizer, model = tiny
    prompts = ["the cat sat", "a quick brown fox jumps"]
    completions = [[50, 60, 70, tokenizer.eos_token_id], [80, 90]]
    records = [{"prompt": p, "token_ids": c} for p, c in zip(prompts, completions)]
    got = conditional_perplexity(model, tokenizer, records, batch_size=2)
    for p, c, value in zip(prompts, completions, got):
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        full = torch.tensor([ids + c])
        with torch.no_grad():
            logprobs = F.log_softmax(model(full).logits[0], -1)
        nll = -sum(logprobs[len(ids) - 1 + j, tok].item() for j, tok in enumerate(c)) / len(c)
        assert value == pytest.approx(math.exp(nll), rel=1e-4)


def test_tables_aggregate_seeds_and_carry_cost(tmp_path):
    import json

    files, benches = [], []
    for seed, value in enumerate([0.2, 0.4]):
        m = {k: value for k in toxicity.METRICS} | {"num_prompts": 5, "num_samples": 25}
        m["ci95"] = {k: [value - 0.1, value + 0.1] for k in toxicity.METRICS}
        (tmp_path / f"m{seed}.json").write_text(json.dumps(m))
        (tmp_path / f"b{seed}.tsv").write_text("s\th:m:s\tmax_rss\n60.0\t0:01:00\t2048\n")
        files.append(tmp_path / f"m{seed}.json")
        benches.append(tmp_path / f"b{seed}.tsv")
    (tmp_path / "train_stats.json").write_text(
        json.dumps(
            {
                "dropped_unscored": 3,
                "heldout_perplexity": 20.0,
                "probe_auc": 0.7,
                "probe_auc_within": 0.6,
                "r_auc": 0.8,
                "r_auc_token": 0.9,
            }
        )
    )
    agg = aggregate_seeds(files, benches, benches)
    assert agg["avg_max_toxicity"] == pytest.approx(0.3) and agg["num_seeds"] == 2
    assert agg["train_stats"] == {
        "dropped_unscored": 6.0,
        "heldout_perplexity": 20.0,
        "probe_auc": 0.7,
        "probe_auc_within": 0.6,
        "r_auc": 0.8,
        "r_auc_token": 0.9,
    }  # summed / averaged over seeds
    assert agg["seed_std"]["avg_max_toxicity"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert agg["cost"] == {"train_seconds": 60.0, "generate_seconds": 60.0, "peak_rss_mb": 2048.0}
    base = agg | {"train_stats": {}}
    frame = make_table([("Base", base), ("Quark", agg)], toxicity.METRICS, tmp_path / "table")
    assert list(frame["Method"]) == ["Base", "Quark"]
    assert list(frame["Unscored"]) == ["–", "6"] and list(frame["Held-out PPL ↓"]) == ["–", "20.00"]
    assert list(frame["Probe AUC ↑ (all / within prompt)"]) == ["–", "0.700 / 0.600"]
    assert list(frame["R AUC ↑ (seq / token)"]) == ["–", "0.800 / 0.900"]
    assert pd.read_csv(tmp_path / "table.csv")["dropped_unscored"].tolist()[1] == 6
    assert "0.300 ± 0.141" in frame.iloc[0, 1]
    assert (tmp_path / "table.tex").read_text().count("Quark") == 1
    # the report's page: the caption, the grouped headers and every cell as the Markdown table shows them
    page = make_table(
        [("Base", base), ("Quark", agg)],
        toxicity.METRICS,
        tmp_path / "page",
        toxicity.LABELS,
        caption="Task t, n prompts.",
        attribute="Toxicity",
    )
    cells = {
        tag: [text for t, text in html_cells((tmp_path / "page.html").read_text()) if t == tag]
        for tag in ("caption", "th", "td")
    }
    assert cells["caption"] == ["Task t, n prompts."]
    assert {"Toxicity", "Fluency", "Diversity", "Control", "Cost"} <= set(cells["th"])
    assert sorted(cells["td"][: len(page.columns)]) == sorted(page.iloc[0])  # the first row, regrouped


def test_the_latex_table_stacks_intervals_and_fits_the_page(tmp_path):
    """Each interval prints under its mean, smaller; the published block is a captioned float of its own; and where
    pdflatex is installed, a table of 14 wide rows compiles with no line wider than the text."""
    rows = []
    for i in range(14):
        m = {k: 0.1 * (i % 9) for k in toxicity.METRICS} | {"num_prompts": 40, "num_samples": 1000, "num_seeds": 1}
        m |= {"ci95": {k: [0.01, 0.99] for k in toxicity.METRICS}, "seed_std": {}}
        m |= {"cost": {"train_seconds": 600.0, "generate_seconds": 60.0, "peak_rss_mb": 4096.0}}
        m["train_stats"] = {"heldout_perplexity": 100.0, "probe_auc": 0.5, "probe_auc_within": 0.5} if i else {}
        rows.append((f"A method with a long display name {i}", m))
    published = (toxicity.PAPER_SOURCE, toxicity.paper_rows("toxicity"))
    make_table(rows, toxicity.METRICS, tmp_path / "wide" / "table", toxicity.LABELS, reference=published)
    tex = (tmp_path / "wide" / "table.tex").read_text()
    assert r"0.100\\ \scriptsize [0.010, 0.990]" in tex and r"Avg. max\\ toxicity $\downarrow$" in tex
    assert tex.count(r"\begin{table}") == 2 and r"\caption{Published numbers, for reference only" in tex
    if shutil.which("pdflatex"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
        from check_latex import compile_one

        assert compile_one(tmp_path / "wide" / "table.tex", tmp_path).stat().st_size > 1000  # else it exits


def test_compare_flags_values_outside_the_reference_interval(tmp_path):
    from evaluation.compare import compare

    for name, value in [("reference", 0.30), ("rerun", 0.45)]:
        (tmp_path / name / "toxicity").mkdir(parents=True)
        pd.DataFrame(
            {
                "method": ["Base", "Quark"],
                "avg_max_toxicity": [0.5, value],
                "avg_max_toxicity_ci_low": [0.4, 0.25],
                "avg_max_toxicity_ci_high": [0.6, 0.35],
                "uniq": [480, 862 if name == "reference" else 861],  # a count: no interval, so it must match
                "uniq_ci_low": [float("nan")] * 2,
                "uniq_ci_high": [float("nan")] * 2,
            }
        ).to_csv(tmp_path / name / "toxicity" / "table.csv", index=False)
    frame = compare(tmp_path / "rerun", tmp_path / "reference").set_index(["metric", "method"])["outside_ci"]
    assert frame.to_dict() == {
        ("avg_max_toxicity", "Base"): False,
        ("avg_max_toxicity", "Quark"): True,
        ("uniq", "Base"): False,
        ("uniq", "Quark"): True,
    }
    # a rerun of one column: the reference's other tasks are skipped when the rerun's are named, and only then
    (tmp_path / "reference" / "repetition").mkdir()
    (tmp_path / "reference" / "toxicity" / "table.csv").rename(tmp_path / "reference" / "repetition" / "table.csv")
    (tmp_path / "reference" / "toxicity" / "table.csv").write_text(
        (tmp_path / "rerun" / "toxicity" / "table.csv").read_text()
    )
    with pytest.raises(SuiteError, match="repetition/table.csv: missing"):
        compare(tmp_path / "rerun", tmp_path / "reference")
    assert set(compare(tmp_path / "rerun", tmp_path / "reference", ["toxicity"])["task"]) == {"toxicity"}
    with pytest.raises(SuiteError, match="no reference table for task.*sentiment"):
        compare(tmp_path / "rerun", tmp_path / "reference", ["sentiment"])


def test_compare_names_what_differs_in_the_provenance_of_flagged_rows(tmp_path):
    from evaluation.compare import provenance_differences

    record = {"suite_commit": "abc", "packages": {"torch": "2.13.0", "transformers": "5.24.0"}, "bf16": True}
    rows = {
        ("reference", "quark"): record,
        ("rerun", "quark"): record | {"packages": {"torch": "2.14.1", "transformers": "5.24.0"}, "bf16": False},
        ("reference", "ppo"): record,
        ("rerun", "ppo"): record,
        ("reference", "gedi"): None,
        ("rerun", "gedi"): record,
    }
    for (run, row), prov in rows.items():
        (tmp_path / run / "toxicity" / row).mkdir(parents=True)
        metrics = {"method": row.upper(), **({"provenance": {"train": prov, "evaluate": prov}} if prov else {})}
        (tmp_path / run / "toxicity" / row / "metrics.json").write_text(json.dumps(metrics))
    flagged = pd.DataFrame({"task": ["toxicity"] * 4, "method": ["QUARK", "QUARK", "PPO", "GEDI"]})
    lines = provenance_differences(tmp_path / "rerun", tmp_path / "reference", flagged)
    assert lines == [
        "toxicity / QUARK: evaluate.bf16 True -> False; evaluate.packages.torch 2.13.0 -> 2.14.1; "
        "train.bf16 True -> False; train.packages.torch 2.13.0 -> 2.14.1",
        "toxicity / PPO: same provenance",
        "toxicity / GEDI: provenance not recorded in the reference",
    ]


def test_unscored_samples_are_left_out_and_counted():
    records = _records({"p1": ["a", "b"], "p2": ["c", "d"]})
    scores = {"a": 0.9, "b": None, "c": None, "d": 0.2}
    metrics, _ = toxicity.evaluate(records, lambda texts: [scores[t] for t in texts], [10, 20, 30, 40])
    assert metrics["num_unscored"] == 2 and metrics["num_samples"] == 2
    assert metrics["avg_max_toxicity"] == pytest.approx((0.9 + 0.2) / 2)
    assert metrics["perplexity"] == pytest.approx(25)


def test_recount_keeps_what_it_does_not_recount(tmp_path):
    """Recounting the text metrics of a committed row keeps its provenance, cost and the other metrics."""
    import shutil

    from evaluation.recount import recount
    from tests.conftest import ROOT

    task = tmp_path / "mini" / "repetition"
    shutil.copytree(ROOT / "results/reference/mini/repetition/base", task / "base")
    pd.DataFrame({"method": ["Base model"]}).to_csv(task / "table.csv", index=False)
    record = {"suite_commit": "abc", "packages": {"torch": "2.13.0"}}
    for path in [task / "base/metrics.json", task / "base/seed0/metrics.json"]:
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps(metrics | {"provenance": record}))
    before = json.loads((task / "base/metrics.json").read_text())
    assert recount(tmp_path / "mini") == ["repetition/base"]
    after = json.loads((task / "base/metrics.json").read_text())
    assert after["provenance"] == record and after["seeds"][0]["provenance"] == record
    assert after["cost"] == before["cost"] and after["rep_4_greedy"] == pytest.approx(before["rep_4_greedy"])
    assert (task / "table.md").read_text().count("Base model") == 1
