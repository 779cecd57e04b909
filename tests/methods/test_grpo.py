"""GRPO through TRL on the tiny model: it learns the synthetic reward, drops unscored samples, saves a plain model,
and a job killed mid-checkpoint resumes from TRL's newest complete checkpoint, ending bitwise where an uninterrupted
one does."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.config import for_task, from_dict
from core.data import Prompt, read_jsonl, read_prompts, select_prompts
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, sample
from evaluation.tasks import EVAL_FRACTION, wikitext_prefixes, wikitext_splits
from methods import grpo as grpo_method
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.grpo import grpo
from methods.quark.quark import QuarkConfig
from tests.conftest import CORPUS, ROOT
from tests.methods.test_ppo import budget
from tests.methods.test_quark_resume import scored  # how many samples a counting task's reward scored

WANTED = list(range(40, 70))  # 30 of ~300 tokens: the random model emits about 10% of them
PROMPTS = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]


def token_set_scores(model_dir, prompts, n: int = 6) -> np.ndarray:
    """token_set rewards of n samples per prompt at the exploration settings (top-p 1.0, 8 new tokens)."""
    model, tok = load_model(model_dir)
    ids = encode_prompts(tok, [p.text for p in prompts], 32)
    torch.manual_seed(1)
    completions = sample(model, tok, [p for p in ids for _ in range(n)], Sampling(max_new_tokens=8, top_p=1.0))
    return np.array(get_reward("token_set", token_ids=WANTED)([], [], completion_ids=completions))


def test_grpo_raises_the_token_set_reward_above_the_base_model(tiny, tmp_path):
    path, _, _ = tiny
    task = Task("synthetic", PROMPTS, get_reward("token_set", token_ids=WANTED), Sampling(max_new_tokens=8))
    hparams = dict(scored_samples=64 * 20, batch_size=64, num_generations=8, lr=2e-2, beta=0.04)
    model_dir = grpo.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")

    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["scored_samples"] == 64 * 20 and stats["optimizer_steps"] == 20 and stats["dropped_unscored"] == 0
    assert len(stats["steps"]) == 20 and all("kl" in s for s in stats["steps"])
    base, trained = token_set_scores(path, PROMPTS), token_set_scores(model_dir, PROMPTS)
    stderr = np.sqrt(base.var(ddof=1) / len(base) + trained.var(ddof=1) / len(trained))
    # the base model sits near 0.1; the trained policy must beat it by 0.15 and by six standard errors of the
    # difference, which sampling noise cannot produce (20 steps at lr 2e-2 reached about 0.7)
    assert base.mean() < 0.2
    assert trained.mean() - base.mean() > max(0.15, 6 * stderr), (base.mean(), trained.mean(), stderr)


def every_other_none(prompts, completions, completion_ids, **kwargs):
    """Scores the even samples by their first token id (so a group's scores differ), and cannot score the odd."""
    return [None if i % 2 else float(ids[0] if ids else 0) for i, ids in enumerate(completion_ids)]


def build_trainer(path, tmp_path, reward, **hparams):
    task = Task("synthetic", PROMPTS[:4], reward, Sampling(max_new_tokens=4))
    cfg = grpo.GRPOHparams(**{"scored_samples": 8, "batch_size": 8, "num_generations": 4, **hparams})
    return grpo.build_trainer(task, path, tmp_path / "run", cfg, seed=0, device="cpu")


def test_unscored_samples_leave_the_loss_and_are_counted_never_scored_zero(tiny, tmp_path):
    path, _, _ = tiny
    trainer, reward = build_trainer(path, tmp_path, every_other_none)
    trainer.model.train()  # as in trainer.train(): TRL files its metrics under the model's mode
    out = trainer._generate_and_score_completions([{"prompt": PROMPTS[i // 4].text} for i in range(8)])
    odd = torch.arange(8) % 2 == 1
    assert reward.unscored == 4 and reward.scored == 4
    assert out["completion_mask"][odd].sum() == 0 and out["completion_mask"][~odd].sum() > 0
    assert out["num_items_in_batch"] == out["completion_mask"].sum()
    assert torch.all(out["advantages"][odd] == 0)
    # TRL's logged mean reward is over the scored samples only: a None counted as 0 would halve it
    logged = trainer._metrics["train"]["reward"][-1]
    scored = [r for r in trainer._logs["rewards"]["every_other_none"] if not np.isnan(r)]
    assert len(scored) == 4 and logged == pytest.approx(np.mean(scored))

    task = Task("synthetic", PROMPTS[:4], every_other_none, Sampling(max_new_tokens=4))
    hparams = dict(scored_samples=16, batch_size=8, num_generations=4)
    grpo.train(task, path, tmp_path / "run2", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run2" / "train_stats.json").read_text())
    assert stats["scored_samples"] == 16 and stats["dropped_unscored"] == 8 and stats["optimizer_steps"] == 2


def test_grpo_draws_through_the_suite_sampler_with_trls_settings(tiny, tmp_path):
    """The trainer's completions are what `sample` draws at the same seed with GRPO's temperature, top-p and the
    task's lengths; other settings would draw others. A setting the sampler does not take leaves TRL's generate()."""
    path, _, _ = tiny
    task = Task("synthetic", PROMPTS[:4], every_other_none, Sampling(max_new_tokens=5, min_new_tokens=3))
    cfg = grpo.GRPOHparams(scored_samples=16, batch_size=16, num_generations=4, temperature=0.7, explore_top_p=0.8)
    trainer, _ = grpo.build_trainer(task, path, tmp_path / "run", cfg, seed=0, device="cpu")
    ids = [trainer.prompt_ids[p.text] for p in PROMPTS[:4] for _ in range(4)]
    model, tok = load_model(path)

    def drawn(sampling):
        torch.manual_seed(3)
        return sample(model, tok, ids, sampling)

    torch.manual_seed(3)
    got, logprobs = trainer._generate_single_turn(ids, None, {}, 4)
    assert logprobs is None
    assert got == drawn(Sampling(max_new_tokens=5, min_new_tokens=3, top_p=0.8, temperature=0.7))
    assert got != drawn(Sampling(max_new_tokens=5, min_new_tokens=3, top_p=1.0))
    assert all(len(c) >= 3 for c in got) and max(map(len, got)) == 5

    # in bf16 (accelerate's autocast around the model's forward, which casts bf16 outputs to fp32) the same draws as
    # `sample` under autocast
    cfg16 = grpo.GRPOHparams(scored_samples=16, batch_size=16, num_generations=4, bf16=True)
    trainer16, _ = grpo.build_trainer(task, path, tmp_path / "run16", cfg16, seed=0, device="cpu")
    trainer16.model_wrapped = trainer16.accelerator.prepare(trainer16.model)  # as train() wraps it
    torch.manual_seed(3)
    got16, _ = trainer16._generate_single_turn(ids, None, {}, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert got16 == drawn(Sampling(max_new_tokens=5, min_new_tokens=3, top_p=1.0))

    assert trainer.sampling() is not None
    trainer.generation_config.top_k = 5
    assert trainer.sampling() is None
    trainer.generation_config.top_k, trainer.suite_sampler = 0, False
    assert trainer.sampling() is None


def test_a_run_where_nothing_is_scored_is_a_clear_error(tiny, tmp_path):
    path, _, _ = tiny
    task = Task("synthetic", PROMPTS[:4], lambda p, c, **k: [None] * len(c), Sampling(max_new_tokens=3))
    hparams = dict(scored_samples=8, batch_size=8, num_generations=4)
    with pytest.raises(SuiteError, match="returned None for every one of 8 samples"):
        grpo.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")


def test_a_budget_that_is_not_whole_batches_names_the_method_file():
    with pytest.raises(SuiteError, match="methods/grpo/method.yaml: batch_size 12 must be a multiple"):
        grpo.GRPOHparams(batch_size=12, num_generations=8)
    with pytest.raises(SuiteError, match="scored_samples 100 must be a positive multiple of batch_size 16"):
        grpo.GRPOHparams(scored_samples=100, batch_size=16)


def mini_train_prompts(task: str) -> int:
    """How many train prompts the mini profile's data rule keeps for a task (workflow/scripts/prepare_prompts.py)."""
    d = yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text())["data"][task]
    if task == "repetition":
        train, _ = wikitext_splits(
            ROOT / d["train_prompts"], ROOT / d["eval_prompts"], d.get("eval_fraction", EVAL_FRACTION)
        )
        prompts = wikitext_prefixes(train, d["prefix_words"], d["min_continuation_words"], d["train_prompts"])
    else:
        prompts = read_prompts(ROOT / d["train_prompts"])
    return len(
        select_prompts(
            prompts,
            d.get("train_max_prompts"),
            0,
            d.get("train_min_prompt_toxicity"),
            d.get("train_max_prompt_toxicity"),
        )
    )


def test_the_mini_profile_scores_as_many_samples_as_quark_explores_on_every_task():
    """Quark draws at most every train prompt a round, so a task with fewer prompts than prompts_per_round
    (repetition: 196) scores fewer samples; GRPO's budget follows it, cut to whole batches."""
    spec = yaml.safe_load((ROOT / "methods/grpo/method.yaml").read_text())
    mini = spec["hparams"]["mini"]
    for task in spec["tasks"]:
        rounds, per_round, per_prompt = budget("quark", "mini", task, QuarkConfig)
        n_train = mini_train_prompts(task)
        explored = rounds * min(per_round or n_train, n_train) * per_prompt  # None: every train prompt
        cfg = from_dict(grpo.GRPOHparams, for_task([mini], task, "grpo"), "grpo")
        assert cfg.scored_samples == explored // cfg.batch_size * cfg.batch_size, task
        assert explored - cfg.scored_samples < cfg.batch_size, task


def test_the_saved_model_loads_and_generates_greedily(tiny, tmp_path):
    path, _, _ = tiny
    task = Task("synthetic", PROMPTS[:4], get_reward("token_set", token_ids=WANTED), Sampling(max_new_tokens=4))
    hparams = dict(scored_samples=16, batch_size=8, num_generations=4, lr=1e-2)
    model_dir = grpo.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    assert (model_dir / "model.safetensors").is_file()
    model, _ = load_model(model_dir)
    base, _ = load_model(path)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    greedy = Sampling(max_new_tokens=5, do_sample=False)
    for seed in (0, 1):
        grpo_method.generate(model_dir, PROMPTS[:3], 2, greedy, tmp_path / f"g{seed}.jsonl", seed=seed, device="cpu")
    first, second = read_jsonl(tmp_path / "g0.jsonl"), read_jsonl(tmp_path / "g1.jsonl")
    assert [r["token_ids"] for r in first] == [r["token_ids"] for r in second]
    assert first[0]["token_ids"] == first[1]["token_ids"]  # two greedy samples of one prompt agree


# 5 steps of 2 prompts x 4 completions over 4 prompts: 2 steps an epoch, so the job crosses two epoch boundaries; a
# TRL checkpoint after every step
RESUME_HPARAMS = dict(scored_samples=40, batch_size=8, num_generations=4, lr=1e-2, save_steps=1, keep_checkpoints=2)

DRIVER = """
import os, signal, sys
sys.path.insert(0, os.environ["ROOT"])
import torch
torch.set_num_threads(1)
from methods.grpo import grpo
from tests.methods.test_grpo import RESUME_HPARAMS, counting_task

model_dir, run_dir, kill = sys.argv[1], sys.argv[2], int(sys.argv[3])
save_rng, calls = grpo.SuiteGRPOTrainer._save_rng_state, []

def save_rng_then_die(self, *args, **kwargs):  # inside the Nth checkpoint: weights on disk, trainer_state.json not
    save_rng(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == kill:
        os.kill(os.getpid(), signal.SIGKILL)

grpo.SuiteGRPOTrainer._save_rng_state = save_rng_then_die
grpo.train(counting_task(run_dir), model_dir, run_dir, RESUME_HPARAMS, seed=0, device="cpu")
"""


def counting_task(run_dir) -> Task:
    """A reward that varies within each group (so every step learns); it logs how many samples it scored."""
    log = Path(f"{run_dir}.calls")

    def reward(prompts, completions, completion_ids, **kwargs):
        with log.open("a") as f:
            f.write(f"{len(completions)}\n")
        return [sum(ids) / 300 for ids in completion_ids]

    return Task("synthetic", PROMPTS[:4], reward, Sampling(max_new_tokens=4))


def run_driver(model_dir, run_dir, kill: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "ROOT": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(model_dir), str(run_dir), str(kill)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_job_killed_mid_checkpoint_resumes_from_trls_last_complete_one_and_ends_bitwise_equal(tiny, tmp_path):
    path, ref, run = tiny[0], tmp_path / "ref", tmp_path / "run"
    grpo.train(counting_task(ref), path, ref, RESUME_HPARAMS, seed=0, device="cpu")  # one thread, as the driver

    first = run_driver(path, run, kill=4)  # inside checkpoint-4's write, in the middle of the second epoch
    assert first.returncode == -9, first.stderr[-2000:]
    assert sorted(p.name for p in (run / "trl").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
    ]
    assert not (run / "trl" / "checkpoint-4" / "trainer_state.json").exists()  # cut short, before the rotation
    assert scored(run) == 4 * 8
    with pytest.raises(
        SuiteError,
        match="^" + re.escape(f"{run}: holds an unfinished GRPO run with other settings (lr); rerun with its settings"),
    ):
        grpo.train(counting_task(run), path, run, {**RESUME_HPARAMS, "lr": 1e-3}, seed=0, device="cpu")

    second = run_driver(path, run, kill=0)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from {run / 'trl' / 'checkpoint-3'}" in second.stdout  # the incomplete checkpoint-4 is not used
    assert scored(run) == scored(ref) + 8  # only step 4, whose checkpoint was cut short, was sampled again
    stats, ref_stats = (json.loads((d / "train_stats.json").read_text()) for d in (run, ref))
    assert stats["resumed_from"] == ["checkpoint-3"] and ref_stats["resumed_from"] == []
    assert stats["scored_samples"] == ref_stats["scored_samples"] == 40 and stats["optimizer_steps"] == 5
    assert [s["reward"] for s in stats["steps"]] == [s["reward"] for s in ref_stats["steps"]]
    assert json.loads((run / "run.json").read_text())["finished"] and not list((run / "trl").glob("checkpoint-*"))
    resumed, reference = load_file(run / "model/model.safetensors"), load_file(ref / "model/model.safetensors")
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    base = load_file(path / "model.safetensors")
    assert any(not torch.equal(base[k], reference[k]) for k in base)  # it did train
