"""Sampling speed on this machine: the suite's sampler against model.generate(), in fp32 and bf16 autocast.

Prints the CPU, the measured matmul peak (2048 x 2048, fp32 and bf16 autocast), and for each precision the tokens/s of
`sample_generate` (generate()) and `sample` (the suite's decode loop) side by side, with the speed-up and each as a
share of the peak. FLOPs are estimated as 2 x parameters x tokens the model reads (prompt and sampled), which counts
the embedding matrix once, as the tied LM head, and leaves attention out. Sequences are fixed-length (EOS suppressed)
so that both samplers draw the same number of tokens; prompts are random ids. `native_bf16()` is what `bf16: auto`
picks.

    .venv/bin/python workflow/scripts/bench.py --model results/mini/base_model [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> str:
    """The CPU's model name and the flags that decide its fp32/bf16 matmul speed."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    name, flags = fields.get("model name", "unknown"), set(fields.get("flags", "").split())
    return f"{name}; " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in FLAGS)


def matmul_peak(torch, bf16: bool, repeats: int) -> float:
    """GFLOP/s of a 2048 x 2048 matmul, the best of `repeats`."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        a @ b
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory (the base_model rule's)")
    parser.add_argument("--batch", type=int, default=64, help="sequences per call")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=20, help="sampled tokens per sequence")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per sampler and precision (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="batch 8, 4 new tokens, 1 repeat: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.new_tokens, args.repeats = 8, 4, 1
    sys.path.insert(0, str(ROOT))
    import torch

    from methods.common.config import native_bf16
    from methods.common.models import load_model
    from methods.common.sampling import Sampling, sample, sample_generate

    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu()}")
    print(f"torch {torch.__version__}, {args.threads} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native_bf16() = {native_bf16()}")  # fmt: skip
    peak = {mode: matmul_peak(torch, mode == "bf16", 5) for mode in ("fp32", "bf16")}
    print("matmul peak 2048x2048: " + ", ".join(f"{m} {g:.0f} GFLOP/s" for m, g in peak.items()))

    model, tokenizer = load_model(args.model, "cpu")
    params = sum(p.numel() for p in model.parameters())
    prompts = torch.randint(100, 1000, (args.batch, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    sampling = Sampling(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, top_p=args.top_p,
                        batch_size=args.batch)  # fmt: skip
    sampled = args.batch * args.new_tokens
    flops = 2 * params * args.batch * (args.prompt_tokens + args.new_tokens)
    print(f"{params / 1e6:.0f}M parameters; batch {args.batch}, {args.prompt_tokens}-token prompts, "
          f"{args.new_tokens} new tokens, top_p {args.top_p}; FLOPs = 2 x params x prompt and sampled tokens")  # fmt: skip
    for mode in ("fp32", "bf16"):
        seconds = {"generate": [], "sample": []}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            sample(model, tokenizer, prompts[:2].tolist(), sampling)  # warm-up
            for _ in range(args.repeats):
                for name, sampler in (("generate", sample_generate), ("sample", sample)):
                    started = time.perf_counter()
                    sampler(model, tokenizer, prompts.tolist(), sampling)
                    seconds[name].append(time.perf_counter() - started)
        rate = {name: sampled / statistics.median(s) for name, s in seconds.items()}
        share = {name: 100 * flops / statistics.median(s) / 1e9 / peak[mode] for name, s in seconds.items()}
        print(f"{mode}: generate {rate['generate']:.0f} tok/s ({share['generate']:.1f}% of peak), "
              f"sample {rate['sample']:.0f} tok/s ({share['sample']:.1f}% of peak), "
              f"speed-up {rate['sample'] / rate['generate']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
