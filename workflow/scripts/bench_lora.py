"""Full fine-tuning against LoRA for Quark's training step, side by side in one run: peak RSS and sequences/s.

Each mode runs in its own subprocess, so each peak resident set is its own: loading the models, a pool of
synthetic samples (random completion tokens after real prompts; a step's cost depends on shapes, not on text), and
`--warmup` + `--steps` gradient steps of `Trainer.learn` at the mini profile's settings (batch 16, bf16 autocast,
prompts cut to 32 tokens). Only the `--steps` after the warm-up are timed.

    nice -n 10 .venv/bin/python workflow/scripts/bench_lora.py --model results/mini/base_model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LORA = {
    "r": 16,
    "alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def measure(args: argparse.Namespace) -> dict:
    """One mode, in this process: build the trainer, fill its pool, time the steps after the warm-up."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from core.data import read_prompts
    from core.sampling import Sampling
    from methods.common.task import Task
    from methods.quark.pool import Sample
    from methods.quark.quark import QuarkConfig, Trainer

    torch.manual_seed(0)
    prompts = read_prompts(ROOT / "data/rtp/train.jsonl")[: args.pool]
    task = Task("bench", prompts, lambda p, c, **k: [0.0] * len(c), Sampling(max_new_tokens=args.completion_tokens))
    cfg = QuarkConfig(
        steps_per_round=args.warmup + args.steps,
        batch_size=args.batch_size,
        lr=1e-4,
        warmup_steps=1,
        max_prompt_tokens=32,
        bf16=not args.fp32,
        lora=LORA if args.mode == "lora" else None,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(task, args.model, Path(out), cfg, seed=0, device="cpu")
        rng = np.random.default_rng(0)
        trainer.pool.add(
            [
                Sample(
                    p.id,
                    ids,
                    rng.integers(0, trainer.vocab_size, args.completion_tokens).tolist(),
                    p.text,
                    "",
                    float(rng.random()),
                    0,
                    i,
                )
                for i, (p, ids) in enumerate(zip(prompts, trainer.prompt_ids))
            ]
        )
        timed = {}
        original = trainer.optimizer.step

        def step(*a, **k):  # the clock starts after the warm-up steps
            out = original(*a, **k)
            if trainer.step + 1 == args.warmup:
                timed["start"] = time.perf_counter()
            return out

        trainer.optimizer.step = step
        trainer.learn(0)
        seconds = time.perf_counter() - timed["start"]
        trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.policy.parameters()) + sum(
            p.numel() for p in (trainer.ref.parameters() if trainer.ref is not None else [])
        )
    return {
        "mode": args.mode,
        "sequences_per_second": args.steps * args.batch_size / seconds,
        "seconds_per_step": seconds / args.steps,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable_parameters": trainable,
        "parameters_in_memory": total,
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "results/mini/base_model"), help="transformers directory")
    parser.add_argument("--steps", type=int, default=5, help="timed gradient steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed gradient steps first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--completion-tokens", type=int, default=20)
    parser.add_argument("--pool", type=int, default=256, help="synthetic pool size")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--out", help="also write the results here as JSON")
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args)))
        return
    rows = []
    for mode in ("full", "lora"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode],
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        if child.returncode != 0:
            sys.exit(f"error: the {mode} run failed: {child.stderr.strip().splitlines()[-1]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print("| mode | sequences/s | s/step | peak RSS (GB) | trainable params | params in memory | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['mode']} | {r['sequences_per_second']:.2f} | {r['seconds_per_step']:.2f} | {r['peak_rss_gb']:.2f} "
            f"| {r['trainable_parameters'] / 1e6:.2f} M | {r['parameters_in_memory'] / 1e6:.1f} M | {r['load_average']:.1f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
