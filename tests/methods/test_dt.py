"""DT-style return conditioning: return binning against brute force, and learning on the tiny model."""

import json

import numpy as np
import pytest

from core.data import Prompt, read_jsonl
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, sample
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.dt import dt
from tests.conftest import CORPUS


def test_distinct_rewards_fall_into_equal_bins_by_rank():
    rewards = np.random.default_rng(0).permutation(100) / 100.0
    bins, edges = dt.return_bins(rewards, 5)
    # brute force: with 100 distinct rewards, bin k holds the ranks 20k .. 20k + 19 counted from the highest
    rank = np.argsort(np.argsort(-rewards))
    np.testing.assert_array_equal(bins, rank // 20)
    assert len(edges) == 4 and np.all(np.diff(edges) > 0)
    assert bins[rewards.argmax()] == 0 and bins[rewards.argmin()] == 4


def test_return_bins_cut_at_the_quantile_edges():
    rewards = np.arange(10.0)  # quantile edges 1.8, 3.6, 5.4, 7.2 (linear interpolation)
    bins, edges = dt.return_bins(rewards, 5)
    np.testing.assert_allclose(edges, [1.8, 3.6, 5.4, 7.2])
    assert bins.tolist() == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    # brute force: a reward's bin counts, from the top, the edges strictly below it
    assert bins.tolist() == [4 - sum(e < r for e in edges) for r in rewards]
    # bins are closed on the right (as pandas.qcut): a reward equal to an edge goes to the bin below it
    bins, _ = dt.return_bins(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), 2)  # edge 2.0
    assert bins.tolist() == [1, 1, 1, 0, 0]


def test_tied_rewards_share_a_bin_and_the_best_bin_holds_the_highest_return():
    rewards = np.array([0.0] * 6 + [1.0] * 4)  # edges 0, 0, 0.4, 1
    bins, edges = dt.return_bins(rewards, 5)
    np.testing.assert_allclose(edges, [0.0, 0.0, 0.4, 1.0])
    assert set(bins[:6]) == {4} and set(bins[6:]) == {1}  # ties never split; bins 0, 2 and 3 stay empty
    assert bins[rewards.argmax()] == 1 and bins[rewards.argmin()] == 4  # what train() stores as best and worst
    # a sparse top: only the two rewards above the 0.8-quantile get the top token
    bins, _ = dt.return_bins(np.array([0.0] * 8 + [0.5, 1.0]), 5)  # edges 0, 0, 0, 0.1
    assert bins.tolist() == [4] * 8 + [0, 0]
    assert set(dt.return_bins(np.full(7, 0.3), 5)[0]) == {4}  # all equal: one bin


def test_dt_raises_a_synthetic_reward_and_works_as_a_dial(tiny, tmp_path):
    path, _, _ = tiny
    wanted = list(range(40, 70))  # 30 of ~300 tokens: a random model emits about 10% of them
    reward = get_reward("token_set", token_ids=wanted)
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    task = Task("synthetic", prompts, reward, Sampling(max_new_tokens=8))
    hparams = dict(
        num_samples=640,
        steps=120,
        batch_size=32,
        lr=1e-2,
        warmup_steps=5,
        sample_batch_size=160,
        probe_prompts=6,
        probe_samples_per_prompt=100,
    )
    model_dir = dt.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")

    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    meta = json.loads((model_dir / dt.META_FILE).read_text())
    assert stats["sampled"] == 640 and sum(b["count"] for b in meta["bins"]) == 640
    assert meta["best_bin"] == 0 and meta["bins"][0]["mean_reward"] > meta["bins"][meta["worst_bin"]]["mean_reward"]
    # the probe on 6 held-out prompts x 100 base samples: chance is 0.5 with a spread near 0.03 at this size
    assert stats["probe_auc"] > 0.7 and stats["probe_auc_within"] > 0.7, stats
    base_reward = stats["sample_reward"]
    model, tok = load_model(model_dir)
    ids = meta["return_token_ids"]
    prefixes = encode_prompts(tok, [p.text for p in prompts], 32)
    scores = {}
    for name, k in (("best", meta["best_bin"]), ("worst", meta["worst_bin"])):
        completions = sample(
            model,
            tok,
            [[ids[k]] + p for p in prefixes for _ in range(8)],
            Sampling(max_new_tokens=8, batch_size=160),
            ids,
        )
        assert not any(t in ids for c in completions for t in c)
        scores[name] = np.array(reward([], [], completion_ids=completions))
    best, stderr = scores["best"].mean(), scores["best"].std(ddof=1) / np.sqrt(len(scores["best"]))
    # the base samples sit near 0.1; best-return samples must beat them by 0.08 and by six standard errors
    assert base_reward < 0.2
    assert best - base_reward > max(0.08, 6 * stderr), (base_reward, best, stderr)
    worst = scores["worst"]
    gap_stderr = np.sqrt(scores["best"].var(ddof=1) / len(scores["best"]) + worst.var(ddof=1) / len(worst))
    assert best - worst.mean() > max(0.08, 6 * gap_stderr), (best, worst.mean(), gap_stderr)

    # generate() conditions on the asked-for token and never emits a return token
    out = tmp_path / "gen.jsonl"
    dt.generate(model_dir, prompts[:2], 3, Sampling(max_new_tokens=6), out, seed=0, device="cpu", returns="worst")
    records = read_jsonl(out)
    assert len(records) == 6 and not any(t in ids for r in records for t in r["token_ids"])
    with pytest.raises(SuiteError, match="returns must be 'best', 'worst' or 0..4"):
        dt.generate(model_dir, prompts[:1], 1, Sampling(max_new_tokens=2), out, seed=0, device="cpu", returns=7)


def test_all_unscored_samples_is_a_clear_error(tiny, tmp_path):
    path, _, _ = tiny
    task = Task(
        "synthetic", [Prompt("p", "the cat", {})], lambda p, c, **k: [None] * len(c), Sampling(max_new_tokens=3)
    )
    with pytest.raises(SuiteError, match="the reward returned None for every sample"):
        dt.train(task, path, tmp_path / "run", dict(num_samples=4, steps=1), seed=0, device="cpu")
