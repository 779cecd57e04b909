"""bf16 autocast against fp32 for sampling on this machine, to check what `bf16: auto` picks.

Samples `--batch` continuations of `--new-tokens` tokens after random `--prompt-tokens`-token prompts from the mini
base model through the suite's own sampler, alternating fp32 and bf16 `--repeats` times, and prints the median
seconds of each mode with `native_bf16()`'s answer. On a CPU without AVX-512 BF16 or AMX, oneDNN emulates bf16.

    .venv/bin/python workflow/scripts/bench_bf16.py --model results/mini/base_model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory (the base_model rule's)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per generate() call")
    parser.add_argument("--prompt-tokens", type=int, default=48, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=16, help="sampled tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from methods.common.config import native_bf16
    from methods.common.models import load_model
    from methods.common.sampling import Sampling, sample

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, "cpu")
    prompts = torch.randint(100, 1000, (args.batch, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    sampling = Sampling(max_new_tokens=args.new_tokens, batch_size=args.batch)
    seconds = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for mode in seconds:
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                sample(model, tokenizer, prompts.tolist(), sampling)
            seconds[mode].append(time.perf_counter() - started)
    fp32, bf16 = (statistics.median(seconds[m]) for m in ("fp32", "bf16"))
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native_bf16() = {native_bf16()}")
    print(
        f"{args.batch} x {args.new_tokens} tokens: fp32 {fp32:.2f} s, bf16 {bf16:.2f} s (bf16 / fp32 = {bf16 / fp32:.2f})"
    )


if __name__ == "__main__":
    main()
