"""The scored base-model samples that Quark's round 0, DT-style's data, NADO's R and ACF's first R all start from.

The DAG draws them once per task and seed (rule `base_samples`, settings in the config's `base_samples`) and every
such method reads that file, so they start from the same samples and nothing is drawn twice. The layout:

    the task's training prompts, in one order fixed by the seed
    the first `probe_prompts` of it: the probe split, `probe_samples_per_prompt` draws each, held out of every
        method's training (Quark's and DT-style's controllability probe, R's AUC and NADO's alpha)
    the next `prompts`: `samples_per_prompt` draws each

A method asks for n samples at k per prompt and gets draws 0 .. k-1 of the first ceil(n / k) training prompts: a
prefix of one draw, so two methods that ask for the same get the same samples, and Quark's 400 at one per prompt
are among NADO's 2,400 at four. A job given no such file, or one that does not hold what it asks for (a budget row,
another prompt length), draws its own the same way and says so in its train_stats.json (`base_samples`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.config import from_dict
from core.data import iter_jsonl, write_json, write_jsonl
from core.errors import SuiteError
from core.models import encode_prompts
from methods.common.rollout import sample_and_score
from methods.common.task import Task

ORDER_KEY = 31_337  # seeds the prompts' order, apart from every sampling draw
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class Spec:
    """What a set of base samples holds (the config's `base_samples`), or what a method asks of one."""

    prompts: int | None = None  # training prompts that carry draws; None: every one outside the probe split
    samples_per_prompt: int = 1
    probe_prompts: int = 0
    probe_samples_per_prompt: int = 4
    max_prompt_tokens: int = 64  # prompts are cut from the left to this length
    top_p: float = 1.0  # nucleus top-p of the draws (every method that reads them explores at 1.0)
    batch_size: int = 64  # sequences per sampling call
    bf16: bool = False  # bfloat16 autocast while sampling

    def __post_init__(self):
        if self.samples_per_prompt < 1 or self.probe_samples_per_prompt < 1 or self.probe_prompts < 0:
            raise SuiteError(f"base samples: counts must be positive, got {self}")

    def covers(self, want: Spec) -> str | None:
        """Why samples drawn to this spec cannot serve `want`, or None if they can."""
        same = ("max_prompt_tokens", "top_p") + (("probe_prompts",) if want.probe_prompts else ())
        for key in same:
            if getattr(self, key) != getattr(want, key):
                return f"{key} {getattr(want, key)} asked, {getattr(self, key)} held"
        if want.samples_per_prompt > self.samples_per_prompt:
            return f"{want.samples_per_prompt} samples per prompt asked, {self.samples_per_prompt} held"
        if want.probe_prompts and want.probe_samples_per_prompt > self.probe_samples_per_prompt:
            return (
                f"{want.probe_samples_per_prompt} probe samples per prompt asked, {self.probe_samples_per_prompt} held"
            )
        if self.prompts is not None and (want.prompts is None or want.prompts > self.prompts):
            return f"{want.prompts or 'every'} training prompts asked, {self.prompts} held"
        return None


def split_prompts(num_prompts: int, probe_prompts: int, seed: int) -> tuple[list[int], list[int]]:
    """(the probe split's prompt indices, sorted; every other training prompt, in draw order), fixed by the seed."""
    if probe_prompts >= num_prompts:
        raise SuiteError(
            f"a probe split of {probe_prompts} prompts leaves none of the {num_prompts} training prompts to train on"
        )
    order = np.random.default_rng([seed, ORDER_KEY]).permutation(num_prompts).tolist()
    return sorted(order[:probe_prompts]), order[probe_prompts:]


@dataclass
class BaseSamples:
    """Scored samples as rows {prompt_index, prompt_id, prompt, prompt_ids, draw, completion_ids, text, reward,
    probe}; a reward of None marks a sample the reward could not score (kept, so that readers count it)."""

    spec: Spec
    seed: int
    rows: list[dict]
    stats: dict
    source: str = "in memory"  # where the set was read from

    def select(self, want: Spec) -> tuple[list[dict], list[dict]]:
        """(training rows, probe rows) of `want`: draws < k of the first `want.prompts` training prompts, in prompt
        order (a prompt's draws together), and the probe split's first draws."""
        rank = {p: r for r, p in enumerate(self.order)}
        limit = len(rank) if want.prompts is None else want.prompts
        train = [
            row
            for row in self.rows
            if not row["probe"] and rank[row["prompt_index"]] < limit and row["draw"] < want.samples_per_prompt
        ]
        train.sort(key=lambda row: (rank[row["prompt_index"]], row["draw"]))
        probe = [row for row in self.rows if row["probe"] and row["draw"] < want.probe_samples_per_prompt]
        return train, probe if want.probe_prompts else []

    @property
    def digest(self) -> str:
        """What the set holds, as a hash: part of a resumable run's identity, so that a redrawn set starts afresh."""
        return hashlib.sha256(json.dumps([self.seed, self.rows]).encode()).hexdigest()

    @property
    def order(self) -> list[int]:
        """The training prompts that carry draws, in draw order."""
        seen: dict[int, None] = {}
        for row in self.rows:
            if not row["probe"]:
                seen.setdefault(row["prompt_index"], None)
        return list(seen)

    def write(self, out_dir: Path) -> None:
        write_jsonl(Path(out_dir) / "samples.jsonl", self.rows)
        write_json(Path(out_dir) / STATS_FILE, {"spec": asdict(self.spec), "seed": self.seed, **self.stats})

    @classmethod
    def read(cls, samples: str | Path) -> BaseSamples:
        path = Path(samples)
        meta = json.loads(path.with_name(STATS_FILE).read_text())
        spec = from_dict(Spec, meta.pop("spec"), str(path.with_name(STATS_FILE)))
        seed = meta.pop("seed")
        return cls(spec, seed, [row for _, row in iter_jsonl(path)], meta, source=str(path))


def draw(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    spec: Spec,
    seed: int,
    desc: str,
    suppress_ids: list[int] | None = None,
) -> BaseSamples:
    """Draw and score the samples `spec` describes from `model` (the base model), from the seed alone; the global
    random state is left as it was."""
    texts = [p.text for p in task.train_prompts]
    prefixes = encode_prompts(tokenizer, texts, spec.max_prompt_tokens)
    probe, rest = split_prompts(len(texts), spec.probe_prompts, seed)
    rest = rest if spec.prompts is None else rest[: spec.prompts]
    slots = [(p, j, True) for p in probe for j in range(spec.probe_samples_per_prompt)]
    slots += [(p, j, False) for p in rest for j in range(spec.samples_per_prompt)]
    sampling = replace(task.sampling, top_p=spec.top_p, do_sample=True, batch_size=spec.batch_size)
    device = next(model.parameters()).device
    chosen = [p for p, _, _ in slots]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.bf16):
            ro = sample_and_score(
                model, tokenizer, task.reward, texts, prefixes, chosen, sampling, suppress_ids, desc, keep_unscored=True
            )
    rows = [
        {
            "prompt_index": p,
            "prompt_id": task.train_prompts[p].id,
            "prompt": texts[p],
            "prompt_ids": prefixes[p],
            "draw": j,
            "completion_ids": c,
            "text": t,
            "reward": r,
            "probe": probe_row,
        }
        for (p, j, probe_row), c, t, r in zip(slots, ro.completions, ro.texts, ro.rewards)
    ]
    scored = [r for r in ro.rewards if r is not None]
    stats = {
        "samples": len(rows),
        "dropped_unscored": len(rows) - len(scored),
        "mean_reward": float(np.mean(scored)) if scored else None,
        "tokens": ro.tokens,
        "sample_seconds": ro.seconds,
        "tokens_per_second": ro.tokens / max(ro.seconds, 1e-9),
    }
    return BaseSamples(spec, seed, rows, stats)


def base_samples(
    task: Task,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int | None,
    per_prompt: int,
    seed: int,
    desc: str,
    suppress_ids: list[int] | None = None,
    **settings,
) -> tuple[list[dict], list[dict], dict]:
    """(training rows, probe rows, where they came from) for a method that asks the base model `model` for n samples
    (None: `per_prompt` on every training prompt) at `per_prompt` per prompt (more, where the training prompts outside
    the probe split are too few for n), with `settings` (Spec's other fields):
    from the task's shared set when it holds them for this seed, else drawn here (`suppress_ids` never sampled)."""
    prompts = None
    if n is not None:
        available = len(task.train_prompts) - settings.get("probe_prompts", 0)
        if math.ceil(n / per_prompt) > available > 0:  # too few prompts: more draws of each, so that n still come
            per_prompt = math.ceil(n / available)
        prompts = math.ceil(n / per_prompt)
    want = Spec(prompts=prompts, samples_per_prompt=per_prompt, **settings)
    shared, why = task.base_samples, "no shared set was given"
    if shared is not None:
        why = f"seed {shared.seed} held" if shared.seed != seed else shared.spec.covers(want)
    started = time.perf_counter()
    if shared is not None and why is None:
        found = shared
    else:
        if shared is not None:
            print(f"{desc}: drawing its own: the shared base samples do not serve it ({why})", flush=True)
        found = draw(model, tokenizer, task, want, seed, desc, suppress_ids)
    train, probe = found.select(want)
    train = train[:n]
    rewards = [r["reward"] for r in train if r["reward"] is not None]
    stats = {
        "base_samples": f"shared: {found.source}" if found is shared else f"drawn by this job ({why})",
        "base_samples_seconds": time.perf_counter() - started,
        "dropped_unscored": len(train) - len(rewards),
        "probe_samples": len(probe),
    }
    return train, probe, stats


def explore_settings(cfg) -> dict:
    """Spec's settings from a config with Quark's option names (Quark, DT-style)."""
    return dict(
        probe_prompts=cfg.probe_prompts,
        probe_samples_per_prompt=cfg.probe_samples_per_prompt,
        max_prompt_tokens=cfg.max_prompt_tokens,
        top_p=cfg.explore_top_p,
        batch_size=cfg.sample_batch_size,
        bf16=cfg.bf16,
    )


def scored(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["reward"] is not None]
