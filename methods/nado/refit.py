"""Refit a NADO run's R on the same scored samples with other hyperparameters, and print R's AUCs and losses.

The instrument behind the R experiments in methods/nado/README.md: the samples are drawn and scored once, by the
run, and only R changes. Nothing is written.

    .venv/bin/python -m methods.nado.refit results/exp/n1/mini/toxicity/nado/seed0 '{r_layers: 4, r_steps: 150}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from transformers import set_seed

from core.config import from_dict
from core.errors import SuiteError, run_cli
from core.models import load_model, read_meta
from methods.nado.aux_model import AuxModel, base_rate, fit_aux, read_samples
from methods.nado.nado import META_FILE, NadoConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a NADO training directory (holds samples.jsonl and model/)")
    parser.add_argument("changes", nargs="?", default="{}", help="hyperparameters to change, as a YAML mapping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    changes = yaml.safe_load(args.changes)
    if not isinstance(changes, dict):
        raise SuiteError(f"changes must be a YAML mapping such as '{{r_steps: 100}}', got {args.changes!r}")
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    meta = read_meta(args.run / "model", META_FILE, "NADO")
    cfg = from_dict(NadoConfig, {**meta["config"], **changes}, "changes")
    base, tokenizer = load_model(meta["base_model"], "cpu")
    samples = read_samples(args.run / "samples.jsonl")
    aux = AuxModel.from_base(meta["base_model"], cfg.r_layers, "cpu", base_rate(samples, cfg.label_threshold))
    stats = fit_aux(aux, samples, cfg, tokenizer.pad_token_id, sampler=base, anchor=base, seed=args.seed)
    print(json.dumps({"changes": changes, **stats, "config": asdict(cfg)}))


if __name__ == "__main__":
    run_cli(main)
