"""The suite's speed on this machine, as a share of its measured peak, before and after each speed-up, side by side.

Prints the CPU, the measured matmul peak (2048 x 2048, fp32 and bf16 autocast) and, at the mini profile's shapes:
- sampling: tokens/s of `model.generate()` (`sample_generate`, the reference) and of the suite's `sample` in fp32
  and bf16 autocast (batch 64, 32-token prompts, 20 new tokens, EOS suppressed so that every sampler draws as many),
  and of `sample` decoding greedily: the model's forward passes alone, the floor under any sampler's time;
- training: sequences/s of one Quark step (batch 16: policy forward and backward, reference forward, the loss,
  AdamW) and one PPO minibatch (40 sequences as 2 micro-batches of 20: policy and value forward and backward,
  AdamW) and one GRPO step (TRL's GRPOTrainer as methods/grpo runs it, batch 16 = 2 prompts x 8 completions:
  sampling, a stand-in reward, the reference forward, policy forward and backward, AdamW), in the machine's native
  dtype (`bf16: auto`), prompts of 8 to 32 tokens, 20-token completions;
- memory: a Quark step's peak resident size and what its tensors account for.

"before" is the suite as it was (glibc's default allocator, unfused AdamW, SDPA's flash kernel for training, a
DynamicCache in the sampler, a frozen reference cast to bf16 at every forward), "after" is today's (freed memory
kept, fused AdamW, math attention for training, the reference's linear weights kept in bf16: core/speed.py; the
sampler's StaticCache, in bf16 under autocast: core/sampling.py: kv_cache; GRPO sampling through it, not TRL's
generate()). These are process-wide
settings, so every measurement runs in a fresh worker process, before and after alternating, `--repeats` times each; a row gives the median. FLOPs are
2 x parameters x tokens read (the embedding counted once, as the tied LM head; attention left out) for a forward
pass and 3x that for a forward and backward pass, so a share of the peak is an estimate (GRPO's: a forward to
sample, the reference's forward, the policy's forward and backward, 10x in all).

    .venv/bin/python workflow/scripts/bench.py --model results/mini/base_model [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
VARIANTS = ("before", "after")
KINDS = ("sampling", "quark", "ppo", "grpo")


def cpu() -> str:
    """The CPU's model name and the flags that decide its fp32/bf16 matmul speed."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    name, flags = fields.get("model name", "unknown"), set(fields.get("flags", "").split())
    return f"{name}; " + " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in FLAGS)


def matmul_peak(torch, bf16: bool, repeats: int = 5) -> float:
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


# ---- workers: one measurement each, in a process of its own ----


def usage() -> tuple[int, float]:
    """(minor page faults, kernel seconds) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def timed(step, warmup: int, steps: int) -> dict:
    """Median seconds of `steps` calls after `warmup`, with page faults and kernel seconds per call."""
    for _ in range(warmup):
        step()
    faults, kernel = usage()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    after = usage()
    return {
        "seconds": statistics.median(seconds),
        "faults": (after[0] - faults) / steps,
        "kernel_seconds": (after[1] - kernel) / steps,
    }


def batch_ids(torch, n: int, completion: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """`n` random prompts of 8 to 32 tokens and `completion`-token completions (ids 100-999)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 33, (n,), generator=g).tolist()
    prompts = [torch.randint(100, 1000, (k,), generator=g).tolist() for k in lengths]
    return prompts, [torch.randint(100, 1000, (completion,), generator=g).tolist() for _ in range(n)]


def sampling_worker(torch, args, variant: str) -> dict:
    import core.sampling
    from core.sampling import Sampling, sample, sample_generate

    if variant == "before":  # the sampler as it was: a cache that grows by concatenation
        from transformers import DynamicCache

        core.sampling.kv_cache = lambda model, length: DynamicCache(config=model.config)
    model, tokenizer = load(args.model)
    prompts = torch.randint(100, 1000, (args.batch, 32), generator=torch.Generator().manual_seed(0)).tolist()
    sampling = Sampling(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, top_p=0.9, batch_size=args.batch
    )
    greedy = replace(sampling, do_sample=False)  # the model's forward passes and an argmax: a floor for any sampler
    runs = {"sample": (sample, sampling)}
    runs |= {"greedy": (sample, greedy)} if variant == "after" else {"generate": (sample_generate, sampling)}
    out = {}
    for mode in ("fp32", "bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            for name, (sampler, how) in runs.items():
                out[f"{mode} {name}"] = timed(lambda f=sampler, h=how: f(model, tokenizer, prompts, h), 1, args.steps)
    return out


def quark_worker(torch, args, variant: str, bf16: bool) -> dict:
    from core.sampling import completion_logits, pack
    from methods.quark.quark import quark_loss
    from methods.quark.state import add_reward_tokens

    policy, tokenizer = load(args.model)
    ref = load(args.model)[0].requires_grad_(False)
    if variant == "after" and bf16:
        from core.speed import autocast_weights

        autocast_weights(ref)
    vocab = policy.get_input_embeddings().num_embeddings
    token = add_reward_tokens(policy, tokenizer, 5)[0]
    prompts, completions = batch_ids(torch, args.quark_batch, 20)
    conditioned = pack([p + [token] for p in prompts], completions, tokenizer.pad_token_id)
    plain = pack(prompts, completions, tokenizer.pad_token_id)
    optimizer = make_optimizer(torch, variant, policy.parameters())
    policy.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = completion_logits(policy, conditioned)[..., :vocab]
            with torch.no_grad():
                ref_logits = completion_logits(ref, plain)[..., :vocab]
        loss, _ = quark_loss(logits, ref_logits, conditioned.completion_ids, conditioned.completion_mask, 0.05, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    out = {"quark step": timed(step, 2, args.steps)}
    out["quark step"]["tokens"] = conditioned.input_ids.numel()
    out["memory"] = memory(torch, policy, ref, optimizer)
    return out


def ppo_worker(torch, args, variant: str, bf16: bool) -> dict:
    from core.sampling import pack
    from methods.ppo.losses import ppo_loss
    from methods.ppo.ppo import ValueHead, policy_forward

    policy, tokenizer = load(args.model)
    head = ValueHead(policy.config.hidden_size)
    prompts, completions = batch_ids(torch, args.ppo_batch, 20)
    packed = pack(prompts, completions, tokenizer.pad_token_id)
    n, C = len(prompts), packed.completion_ids.shape[1]
    old = torch.full((n, C), -3.0)
    advantages, returns = torch.randn(n, C, generator=torch.Generator().manual_seed(1)), torch.zeros(n, C)
    optimizer = make_optimizer(torch, variant, [*policy.parameters(), *head.parameters()])

    def step():
        optimizer.zero_grad(set_to_none=True)
        for micro in torch.arange(n).split(n // 2):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logprobs, values, _ = policy_forward(policy, head, packed.rows(micro))
            mask = packed.completion_mask[micro]
            loss, _ = ppo_loss(
                logprobs, values, old[micro], returns[micro], advantages[micro], returns[micro], mask, 0.2, 0.2, 0.1
            )
            (loss / 2).backward()
        optimizer.step()

    out = {"ppo minibatch": timed(step, 2, args.steps)}
    out["ppo minibatch"]["tokens"] = packed.input_ids.numel()
    return out


def grpo_worker(torch, args, variant: str, bf16: bool) -> dict:
    """Seconds per optimizer step of methods/grpo's trainer: TRL samples, scores, and takes one step."""
    import tempfile

    from transformers import TrainerCallback
    from transformers.training_args import OptimizerNames

    from core.data import Prompt
    from core.sampling import Sampling
    from methods.common.task import Task
    from methods.grpo.grpo import GRPOHparams, build_trainer

    prompts, _ = batch_ids(torch, 64, 0)
    texts = [" ".join(f"w{t}" for t in p) for p in prompts]

    def reward(prompts, completions, completion_ids=None, **kwargs):  # varies within a group: advantages not all 0
        return [float(len(set(ids)) % 3) for ids in completion_ids]

    sampling = Sampling(max_new_tokens=20, min_new_tokens=20, top_p=1.0)
    task = Task("bench", [Prompt(str(i), t, {}) for i, t in enumerate(texts)], reward, sampling)
    cfg = GRPOHparams(
        scored_samples=args.grpo_batch * (2 + args.steps),
        batch_size=args.grpo_batch,
        num_generations=8,
        lr=1e-5,
        max_prompt_tokens=32,
        bf16=bf16,
        save_steps=None,
        logging_steps=1000,
    )
    steps: list[dict] = []

    class Clock(TrainerCallback):  # one optimizer step: TRL samples, scores and learns
        def on_step_begin(self, *a, **k):
            steps.append({"started": time.perf_counter(), "usage": usage()})

        def on_step_end(self, *a, **k):
            faults, kernel = usage()
            step = steps[-1]
            step |= {"seconds": time.perf_counter() - step["started"], "faults": faults - step["usage"][0]}
            step["kernel_seconds"] = kernel - step["usage"][1]

    with tempfile.TemporaryDirectory() as out:
        trainer, _ = build_trainer(task, args.model, Path(out), cfg, seed=0, device="cpu")
        if variant == "before":  # the suite before core/speed.py and the suite sampler: unfused AdamW, generate()
            trainer.args.optim = OptimizerNames.ADAMW_TORCH
            trainer.suite_sampler = False
        trainer.add_callback(Clock())
        trainer.train()
    timed_steps = steps[2:]  # the first two steps warm up
    out = {key: statistics.median(s[key] for s in timed_steps) for key in ("seconds", "faults", "kernel_seconds")}
    return {"grpo step": {**out, "tokens": args.grpo_batch * (32 + 20)}}


def load(path: Path):
    from core.models import load_model

    return load_model(path, "cpu")


def make_optimizer(torch, variant: str, params):
    from core.speed import adamw

    params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5) if variant == "before" else adamw(params, lr=1e-5)


def memory(torch, policy, ref, optimizer) -> dict:
    """GB: the peak resident size and what the step's long-lived tensors account for."""
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors) / 1e9  # noqa: E731
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "peak resident": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "policy weights (fp32)": nbytes(policy.parameters()),
        "reference weights": nbytes(ref.parameters()),
        "gradients": nbytes(p.grad for p in policy.parameters() if p.grad is not None),
        "AdamW moments": nbytes(states),
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.worker_variant == "after":
        from core.speed import keep_freed_memory, math_attention

        keep_freed_memory()
        math_attention()
    from core.config import native_bf16

    kind, bf16 = args.worker, native_bf16()
    if kind == "sampling":
        out = sampling_worker(torch, args, args.worker_variant)
    elif kind == "quark":
        out = quark_worker(torch, args, args.worker_variant, bf16)
    elif kind == "ppo":
        out = ppo_worker(torch, args, args.worker_variant, bf16)
    else:
        out = grpo_worker(torch, args, args.worker_variant, bf16)
    print(json.dumps(out))


# ---- the driver ----


def run_worker(args, kind: str, variant: str) -> dict:
    passed = [
        "--model",
        str(args.model),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--new-tokens",
        str(args.new_tokens),
        "--steps",
        str(args.steps),
        "--quark-batch",
        str(args.quark_batch),
        "--ppo-batch",
        str(args.ppo_batch),
        "--grpo-batch",
        str(args.grpo_batch),
    ]
    cmd = [sys.executable, __file__, "--worker", kind, "--worker-variant", variant, *passed]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"bench: the {kind} worker ({variant}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory (the base_model rule's)")
    parser.add_argument("--batch", type=int, default=64, help="sampled sequences per call")
    parser.add_argument("--new-tokens", type=int, default=20, help="sampled tokens per sequence")
    parser.add_argument("--quark-batch", type=int, default=16, help="sequences per Quark step (mini: 16)")
    parser.add_argument("--ppo-batch", type=int, default=40, help="sequences per PPO minibatch (mini: 40)")
    parser.add_argument("--grpo-batch", type=int, default=16, help="completions per GRPO step (mini: 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per worker (median)")
    parser.add_argument("--repeats", type=int, default=3, help="workers per variant, before and after alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--only", choices=KINDS, action="append", help="measure only these")
    parser.add_argument("--quick", action="store_true", help="small batches, 1 step, 1 repeat: a smoke test")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.quick:
        args.batch, args.new_tokens, args.quark_batch, args.ppo_batch, args.steps, args.repeats = 8, 4, 4, 4, 1, 1
        args.grpo_batch = 8
    if args.worker:
        worker(args)
        return
    import torch

    from core.config import native_bf16

    torch.set_num_threads(args.threads)
    native = "bf16" if native_bf16() else "fp32"
    print(f"cpu: {cpu()}")
    print(
        f"torch {torch.__version__}, {args.threads} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native dtype (bf16: auto) {native}"
    )
    peak = {mode: matmul_peak(torch, mode == "bf16") for mode in ("fp32", "bf16")}
    print("matmul peak 2048x2048: " + ", ".join(f"{m} {g:.0f} GFLOP/s" for m, g in peak.items()))
    params = sum(p.numel() for p in load(args.model)[0].parameters())
    print(
        f"{params / 1e6:.0f}M parameters; before = default allocator, unfused AdamW, flash attention, dynamic KV"
        " cache, reference cast at each forward, GRPO through generate(); after = core/speed.py and the static KV"
        " cache, GRPO through the suite sampler;"
        f" medians of {args.repeats} workers x {args.steps} calls each"
    )

    results: dict[str, dict[str, list[dict]]] = {}
    for _ in range(args.repeats):
        for kind in args.only or KINDS:
            for variant in VARIANTS:
                for name, m in run_worker(args, kind, variant).items():
                    results.setdefault(name, {}).setdefault(variant, []).append(m)
    report(results, peak, native, params, args)


def report(results: dict, peak: dict, native: str, params: int, args) -> None:
    def median(name: str, variant: str, key: str) -> float:
        return statistics.median(m[key] for m in results[name][variant])

    for name, by_variant in results.items():
        if name == "memory":
            continue
        mode = name.split()[0] if name.startswith(("fp32", "bf16")) else native
        if name.startswith(("fp32", "bf16")):
            unit, work = "tok/s", args.batch * args.new_tokens
            flops = 2 * params * args.batch * (32 + args.new_tokens)
        else:
            unit = "seq/s"
            kind = name.split()[0]
            work = {"quark": args.quark_batch, "ppo": args.ppo_batch, "grpo": args.grpo_batch}[kind]
            tokens = median(name, "after", "tokens")
            flops = {"quark": 8, "ppo": 6, "grpo": 10}[kind] * params * tokens  # + a reference forward, + sampling
        cells = []
        for variant in by_variant:
            s = median(name, variant, "seconds")
            cells.append(
                f"{variant} {work / s:.1f} {unit} ({100 * flops / s / 1e9 / peak[mode]:.1f}% of {mode} peak, "
                f"{median(name, variant, 'faults'):,.0f} page faults, "
                f"{median(name, variant, 'kernel_seconds'):.2f} s in the kernel)"
            )
        ratio = ""
        if len(by_variant) == 2:
            ratio = f"; speed-up {median(name, 'before', 'seconds') / median(name, 'after', 'seconds'):.2f}x"
        print(f"{name}: " + ", ".join(cells) + ratio)
    if "memory" in results:
        for variant, runs in results["memory"].items():
            parts = ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0])
            print(f"quark step memory, GB ({variant}): {parts}")


if __name__ == "__main__":
    main()
