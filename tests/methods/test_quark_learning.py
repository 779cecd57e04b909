"""Quark on the tiny model with a synthetic reward: best-token samples must beat round 0, and the worst token's
samples, by a wide margin."""

import json

import numpy as np
import pytest

from core.data import Prompt
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, sample
from methods.common.kl import KLController
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.quark import quark, state
from methods.quark.pool import Pool
from tests.conftest import CORPUS


def test_quark_raises_the_reward_of_best_token_samples(tiny, tmp_path):
    path, tokenizer, _ = tiny
    wanted = list(range(40, 70))  # 30 of ~300 tokens: a random model emits about 10% of them
    reward = get_reward("token_set", token_ids=wanted)
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    task = Task("synthetic", prompts, reward, Sampling(max_new_tokens=8))
    hparams = dict(
        num_rounds=8,
        steps_per_round=40,
        prompts_per_round=20,
        samples_per_prompt=8,
        batch_size=32,
        lr=1e-2,
        warmup_steps=5,
        sample_batch_size=160,
    )
    model_dir = quark.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")

    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    round0 = stats["rounds"][0]["explore_reward"]
    model, tok = load_model(model_dir)
    meta = json.loads((model_dir / state.META_FILE).read_text())
    ids = encode_prompts(tok, [p.text for p in prompts], 32)

    def scored(k: int) -> tuple[np.ndarray, list[list[int]]]:
        prefixes = [[meta["reward_token_ids"][k]] + p for p in ids for _ in range(5)]
        completions = sample(model, tok, prefixes, Sampling(max_new_tokens=8), meta["reward_token_ids"])
        return np.array(reward([], [], completion_ids=completions)), completions

    (best, completions), (worst, _) = scored(0), scored(-1)
    stderr = best.std(ddof=1) / np.sqrt(len(best))
    # round 0 sits near 0.1 (30 of ~300 tokens); the best-token samples must beat it by 0.08 and by six standard
    # errors of their own mean, which sampling noise cannot produce
    assert round0 < 0.2
    assert best.mean() - round0 > max(0.08, 6 * stderr), (round0, best.mean(), stderr)
    # and the tokens are a dial: the worst token's samples score well below the best token's (not only training on
    # its own samples, which would raise both)
    gap_stderr = np.sqrt(best.var(ddof=1) / len(best) + worst.var(ddof=1) / len(worst))
    assert best.mean() - worst.mean() > max(0.08, 6 * gap_stderr), (best.mean(), worst.mean(), gap_stderr)
    assert not any(t in meta["reward_token_ids"] for c in completions for t in c)


def test_unscored_samples_are_dropped_and_counted_never_scored_zero(tiny, tmp_path):
    path, _, _ = tiny

    def every_other(prompts, completions, **kwargs):
        return [None if i % 2 else 0.5 for i in range(len(completions))]

    prompts = [Prompt(f"p{i}", t, {}) for i, t in enumerate(CORPUS[:4])]
    task = Task("synthetic", prompts, every_other, Sampling(max_new_tokens=4))
    hparams = dict(num_rounds=2, steps_per_round=1, prompts_per_round=4, samples_per_prompt=3, batch_size=2)
    quark.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["dropped_unscored"] == 12  # 2 rounds x 12 samples, half unscored
    assert [r["pool_size"] for r in stats["rounds"]] == [6, 12]
    pool = Pool(tmp_path / "run" / "pool.sqlite")
    assert {s.reward for s in pool.samples()} == {0.5}


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    high, low, fixed = KLController(0.05, 3.0, 100), KLController(0.05, 3.0, 100), KLController(0.05)
    high.update(kl=10.0, n_samples=10)
    low.update(kl=1.0, n_samples=10)
    fixed.update(kl=10.0, n_samples=10)
    assert high.value == pytest.approx(0.05 * (1 + 0.2 * 10 / 100))  # error clipped at +0.2
    assert low.value < 0.05 and fixed.value == 0.05


def test_an_all_unscored_round_is_a_clear_error(tiny, tmp_path):
    path, _, _ = tiny
    task = Task(
        "synthetic", [Prompt("p", "the cat", {})], lambda p, c, **k: [None] * len(c), Sampling(max_new_tokens=3)
    )
    with pytest.raises(SuiteError, match="round 0: the pool is empty"):
        quark.train(task, path, tmp_path / "run", dict(num_rounds=1, steps_per_round=1), seed=0, device="cpu")
