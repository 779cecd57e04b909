"""Snakemake job: the ensemble manifest, model.json, train_stats.json (held-out perplexity of the ensemble) and
train.benchmark.tsv summed over the two expert jobs."""

import csv
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "workflow" / "scripts"))  # noqa: F821
from _job import main  # noqa: E402

from methods.common.provenance import write_model_json  # noqa: E402
from methods.common.task import read_corpus  # noqa: E402
from methods.dexperts.dexperts import write_ensemble, write_train_stats  # noqa: E402


def combine_benchmarks(paths: list[str], out: str) -> None:
    """One benchmark row for jobs run one after the other: times and I/O add up, peak memory is the larger."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows.append(next(csv.DictReader(f, delimiter="\t")))
    seconds = sum(float(r["s"]) for r in rows)
    combined = {}
    for key in rows[0]:
        values = [r.get(key, "") for r in rows]
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            combined[key] = values[0]
            continue
        if key == "s" or key in ("io_in", "io_out", "cpu_time"):
            combined[key] = f"{sum(numbers):.2f}"
        elif key == "mean_load":  # time-weighted
            combined[key] = f"{sum(n * float(r['s']) for n, r in zip(numbers, rows)) / max(seconds, 1e-9):.2f}"
        else:  # max_rss, max_vms, max_uss, max_pss
            combined[key] = f"{max(numbers):.2f}"
    combined["h:m:s"] = str(timedelta(seconds=round(seconds)))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerow(combined)


def run(sm):
    hparams = dict(sm.params.hparams)
    model_dir = write_ensemble(Path(sm.output.ensemble), Path(sm.input.base), Path(sm.input.expert),
                               Path(sm.input.antiexpert), hparams)  # fmt: skip
    write_model_json(sm.output.model, model_dir, "dexperts", int(sm.wildcards.seed), hparams, sm.params.device)
    write_train_stats(Path(sm.output.model).parent, sm.wildcards.task, read_corpus(sm.input.corpus), model_dir,
                      sm.params.device)  # fmt: skip
    combine_benchmarks(list(sm.input.benchmarks), sm.output.benchmark)


main(run, snakemake)  # noqa: F821
