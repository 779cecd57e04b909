"""Quark's objective on a fixed set of base samples, offline: does the reward token learn a dial, and at what drift?

No exploration: the policy trains on the task's shared base samples (600 prompts x 4 draws on toxicity) under
`quark_loss`, with the reward tokens assigned pool-wide (the paper) or within each prompt's draws
(`--scope prompt`), and at each `--at` step it reports, on the probe split (never trained on):

    probe_auc, probe_auc_within   the controllability probe (methods/common/probe.py)
    nll, kl, entropy              quark_loss's terms, mean over the training steps since the previous report
    sampled (at the last step)    the probe prompts sampled under the best and the worst token (top-p 0.9, 20
                                  tokens): mean and per-prompt max of the judge's score (`--scorer`: toxicity,
                                  that is 1 - reward), and perplexity under p0, beside p0's own samples of the
                                  same prompts

`--control-token ","` is the positive control: every sample's reward becomes the number of times that token occurs
in its completion, a reward the policy can follow through one output logit, and the judge counts it in the samples.
If the reward tokens learn no dial even for it, the fault is in the training, not in how hard the reward is to learn.
`--only-reward-tokens` freezes the model but for the reward tokens' embedding rows, which then act as one soft
prompt per quantile: nothing but the tokens can fit the pool. `--reward-token-lr-scale` keeps the whole model
training and moves the reward tokens' rows that many times further each step (Quark's `reward_token_lr_scale`).
`--train-probe N` adds the same probe on the samples of N training prompts (`train_probe_auc`,
`train_probe_auc_within`): if the tokens order the samples they were trained on but not the probe split's, they
learn and do not generalise; if they order neither, the objective does not make them carry the reward at all.

    .venv/bin/python workflow/scripts/quark_offline.py --model results/mini/base_model \
        --samples results/reference/mini/toxicity/_base_samples/seed0/samples.jsonl \
        --scope prompt --entropy-coef 0.06 --at 60 180 360 --out results/exp/offline/prompt-a006.json

The schedule is the mini profile's (AdamW, lr 1e-4, 10 warm-up steps, batch 16, reward token at the end of the
prompt) with its linear decay spread over the last `--at` step, under bf16 autocast where the hardware runs it
natively, as the training jobs (`--bf16 auto`; `off` for fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from core.config import native_bf16  # noqa: E402
from core.models import load_model  # noqa: E402
from core.sampling import Sampling, completion_logits, pack, sample  # noqa: E402
from core.speed import adamw, autocast_weights, math_attention  # noqa: E402
from evaluation.perplexity import conditional_perplexity  # noqa: E402
from evaluation.scorers import get_scorer  # noqa: E402
from methods.common.base_samples import BaseSamples  # noqa: E402
from methods.common.tokens import rows_step_scaled  # noqa: E402
from methods.common.probe import ProbeSample, controllability  # noqa: E402
from methods.quark.pool import assign_quantiles, assign_quantiles_within  # noqa: E402
from methods.quark.quark import quark_loss  # noqa: E402
from methods.quark.state import add_reward_tokens, place_token  # noqa: E402


def sampled(model, ref, tokenizer, probe: list[ProbeSample], prefix, draws: int, judge, suppress) -> dict:
    """The probe prompts sampled `draws` times each from `model` given `prefix(prompt_ids)`, scored by `judge`."""
    prompts = {s.prompt_id: s for s in probe}
    rows = [s for s in prompts.values() for _ in range(draws)]
    completions = sample(model, tokenizer, [prefix(s.prompt_ids) for s in rows], Sampling(batch_size=64), suppress)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    score = np.array(judge(texts), dtype=float)
    records = [{"prompt": tokenizer.decode(s.prompt_ids), "token_ids": c} for s, c in zip(rows, completions)]
    ppl = conditional_perplexity(ref, tokenizer, records)
    return {
        "avg_max_score": float(score.reshape(-1, draws).max(1).mean()),
        "mean_score": float(score.mean()),
        "perplexity": float(np.mean(ppl)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the base model directory")
    parser.add_argument("--samples", type=Path, required=True, help="a task's base samples (samples.jsonl)")
    parser.add_argument("--scope", choices=["pool", "prompt"], default="pool")
    parser.add_argument("--entropy-coef", type=float, default=0.06)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--quantiles", type=int, default=5)
    parser.add_argument("--at", type=int, nargs="+", default=[60, 180, 360], help="report after these steps")
    parser.add_argument("--samples-per-prompt", type=int, default=0, help="sampled measure's draws per probe prompt")
    parser.add_argument("--p0", action="store_true", help="also the sampled measure of p0 itself")
    parser.add_argument("--scorer", default="minilm_toxicity", help="judge of the sampled measure")
    parser.add_argument("--control-token", help="positive control: the reward is this token's count in the completion")
    parser.add_argument("--only-reward-tokens", action="store_true", help="train the reward tokens' rows only")
    parser.add_argument("--train-probe", type=int, default=0, help="also probe the samples of N training prompts")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--reward-token-lr-scale", type=float, default=1.0, help="reward rows' step scale")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: if native)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bf16 = native_bf16() if args.bf16 == "auto" else args.bf16 == "on"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        run(args, bf16)


def run(args: argparse.Namespace, bf16: bool) -> None:
    math_attention()  # as the training jobs (core/speed.py)
    torch.manual_seed(args.seed)
    policy, tokenizer = load_model(args.model)
    rows = [r for r in BaseSamples.read(args.samples).rows if r["reward"] is not None]
    if args.control_token is not None:
        ids = tokenizer.encode(args.control_token, add_special_tokens=False)
        if len(ids) != 1:
            raise SystemExit(f"--control-token {args.control_token!r} is {len(ids)} tokens, not one")
        rows = [r | {"reward": float(r["completion_ids"].count(ids[0]))} for r in rows]
    train = [r for r in rows if not r["probe"]]
    as_probe = lambda r: ProbeSample(r["prompt_id"], r["prompt_ids"], r["completion_ids"], r["reward"])  # noqa: E731
    probe = [as_probe(r) for r in rows if r["probe"]]
    rewards = np.array([r["reward"] for r in train])
    train_prompts = sorted({r["prompt_id"] for r in train})
    probed = set(np.random.default_rng([args.seed, 0, 3]).permutation(train_prompts)[: args.train_probe])
    train_probe = [as_probe(r) for r in train if r["prompt_id"] in probed]
    K = args.quantiles
    if args.scope == "pool":
        quantiles = assign_quantiles(rewards, K, [args.seed, 0, 2])
    else:
        quantiles = assign_quantiles_within(rewards, [r["prompt_id"] for r in train], K, [args.seed, 0, 2])

    ref = load_model(args.model)[0].requires_grad_(False).eval()
    if bf16:
        autocast_weights(ref)
    V0 = policy.get_input_embeddings().num_embeddings
    reward_ids = add_reward_tokens(policy, tokenizer, K)
    pad = tokenizer.pad_token_id

    def condition(prompt_ids: list[int], k: int) -> list[int]:
        return place_token(prompt_ids, reward_ids[k], "end")

    if args.only_reward_tokens:  # a soft prompt per quantile: the model frozen but for the reward tokens' rows
        policy.requires_grad_(False)
        table = policy.get_input_embeddings().weight.requires_grad_(True)
        table.register_hook(lambda grad: torch.cat([torch.zeros_like(grad[:V0]), grad[V0:]]))
    optimizer = adamw([p for p in policy.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 10, max(args.at))
    order = np.random.default_rng([args.seed, 0, 1]).permutation(len(train))
    judge = None
    if args.samples_per_prompt:
        judge = (
            get_scorer(args.scorer)
            if args.control_token is None
            else lambda t: [x.count(args.control_token) for x in t]
        )
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "bf16": bf16, "pool": len(train), "at": []}
    if judge is not None and args.p0:
        report["p0_sampled"] = sampled(ref, ref, tokenizer, probe, list, args.samples_per_prompt, judge, None)
    window: list[dict] = []
    started = time.perf_counter()
    for step in range(max(args.at) + 1):
        if step in args.at:
            point = {"step": step, "seconds": time.perf_counter() - started}
            point |= controllability(policy, probe, condition, 0, K - 1, pad, V0)
            if train_probe:
                trained = controllability(policy, train_probe, condition, 0, K - 1, pad, V0)
                point |= {f"train_{key}": value for key, value in trained.items()}
            if window:
                point |= {key: float(np.mean([w[key] for w in window])) for key in window[0]}
            if judge is not None and step == max(args.at):
                policy.eval()
                for name, k in (("best", 0), ("worst", K - 1)):
                    point[f"sampled_{name}"] = sampled(
                        policy,
                        ref,
                        tokenizer,
                        probe,
                        lambda p, k=k: condition(p, k),
                        args.samples_per_prompt,
                        judge,
                        reward_ids,
                    )
            report["at"].append(point)
            print(json.dumps(point), flush=True)
            window = []
        if step == max(args.at):
            break
        policy.train()
        idx = [order[(step * args.batch_size + j) % len(train)] for j in range(args.batch_size)]
        prompts, completions = [train[i]["prompt_ids"] for i in idx], [train[i]["completion_ids"] for i in idx]
        conditioned = pack([condition(p, quantiles[i]) for i, p in zip(idx, prompts)], completions, pad)
        logits = completion_logits(policy, conditioned)[..., :V0]
        with torch.no_grad():
            ref_logits = completion_logits(ref, pack(prompts, completions, pad))[..., :V0]
        loss, stats = quark_loss(
            logits, ref_logits, conditioned.completion_ids, conditioned.completion_mask, args.kl_coef, args.entropy_coef
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with rows_step_scaled(policy.get_input_embeddings().weight, reward_ids, args.reward_token_lr_scale):
            optimizer.step()
        scheduler.step()
        window.append({key: stats[key] for key in ("nll", "kl", "kl_per_sequence", "entropy")})
        if not math.isfinite(stats["loss"]):
            raise SystemExit(f"step {step}: the loss is {stats['loss']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
