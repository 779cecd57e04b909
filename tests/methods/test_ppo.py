"""PPO: its loss terms against brute-force computations, a learning test on the synthetic reward, the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.config import for_task, from_dict
from core.data import Prompt, read_jsonl
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, sample
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.ppo import generate, losses, ppo
from methods.quark.quark import QuarkConfig
from tests.conftest import CORPUS, ROOT


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from threads, and on a shared CPU spinning threads slow it several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ragged_mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def test_gae_matches_a_brute_force_sum_over_each_sequence():
    torch.manual_seed(0)
    lengths, width, gamma, lam = [5, 3, 1, 0, 5], 5, 0.9, 0.8
    mask = ragged_mask(lengths, width)
    rewards, values = torch.randn(len(lengths), width), torch.randn(len(lengths), width)
    advantages, returns = losses.gae(rewards * mask, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        r, v = rewards[i, :n].tolist(), values[i, :n].tolist() + [0.0]  # the value after the last token is 0
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert advantages[i, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[i, t].item() == pytest.approx(expected + v[t], abs=1e-5)
        assert not advantages[i, n:].any() and not returns[i, n:].any()


def test_gae_with_lambda_one_and_no_discount_gives_reward_to_go():
    mask = ragged_mask([4, 2], 4)
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.5, 2.0, 0.0, 0.0]])
    advantages, returns = losses.gae(rewards, torch.zeros(2, 4), mask, 1.0, 1.0)
    assert torch.allclose(returns, torch.tensor([[0.9, 0.8, 1.0, 1.0], [2.5, 2.0, 0.0, 0.0]]))
    assert torch.allclose(advantages, returns)


def test_kl_penalty_is_per_token_and_the_score_lands_on_each_sequences_last_token():
    mask = ragged_mask([3, 1, 4], 4)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -9.0], [-0.3, -9.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-0.1, 0.0, 0.0, 0.0], [-2.0, -2.0, -2.0, -3.0]])
    scores = torch.tensor([0.7, -0.4, 0.2])
    rewards, kl = losses.kl_penalised_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    expected_kl = torch.tensor([[0.5, -1.0, 0.0, 0.0], [-0.2, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 2.0]])
    expected = -0.1 * expected_kl
    expected[0, 2] += 0.7
    expected[1, 0] += -0.4
    expected[2, 3] += 0.2
    assert torch.allclose(kl, expected_kl) and torch.allclose(rewards, expected)


def test_whiten_standardises_the_masked_entries_and_can_keep_the_mean():
    mask = ragged_mask([3, 2], 3)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    white = losses.whiten(x, mask)
    kept = losses.whiten(x, mask, shift_mean=False)
    expected = (valid - valid.mean()) / valid.std(unbiased=False)
    assert torch.allclose(white[mask.bool()], expected, atol=1e-5) and white[1, 2] == 0
    assert torch.allclose(kept[mask.bool()], expected + 3.0, atol=1e-5)


def test_clipped_surrogate_and_value_loss_on_hand_made_numbers():
    # four tokens of one sequence: (advantage, ratio) = (+1, 1.5), (+1, 0.5), (-1, 0.5), (-1, 1.5), cliprange 0.2
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old_logprobs = torch.full((1, 4), -2.0)
    logprobs = (old_logprobs + torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))).requires_grad_()
    # values: (old, new, return) = (0, 0.5, 1) clip active; (0, 0.5, 0) inactive; (0, -0.1, 1) inside the range
    old_values = torch.zeros(1, 4)
    values = torch.tensor([[0.5, 0.5, -0.1, 0.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    mask = torch.ones(1, 4)
    loss, stats = losses.ppo_loss(
        logprobs,
        values,
        old_logprobs,
        old_values,
        advantages,
        returns,
        mask,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
    )
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 0.8 (clipped), 1.5
    assert stats["policy_loss"] == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert stats["clipfrac"] == pytest.approx(0.5)
    # per token max((V - R)^2, (V_clip - R)^2): 0.64 (V_clip = 0.2), 0.25, 1.21, 0
    assert stats["value_loss"] == pytest.approx(0.5 * (0.64 + 0.25 + 1.21 + 0.0) / 4)
    assert stats["value_clipfrac"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx(stats["policy_loss"] + 0.1 * stats["value_loss"])
    loss.backward()
    # a clipped token passes no gradient to the policy; an unclipped one passes -A r / n
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, 1.5 / 4]]))
    # the clipped value passes none either; the others pass vf_coef * (V - R) / n
    assert torch.allclose(values.grad, torch.tensor([[0.0, 0.1 * 0.5 / 4, 0.1 * -1.1 / 4, 0.0]]))


def test_padding_tokens_do_not_count_in_the_loss():
    mask = ragged_mask([2], 3)
    # (logprobs, values, old logprobs, old values, advantages, returns): only the padded third token is extreme
    args = [
        torch.tensor([[-1.0, -1.0, 50.0]]),
        torch.tensor([[0.2, 0.2, 50.0]]),
        torch.full((1, 3), -1.0),
        torch.zeros(1, 3),
        torch.tensor([[1.0, -1.0, 50.0]]),
        torch.tensor([[0.2, 0.2, -50.0]]),
    ]
    loss, stats = losses.ppo_loss(*args, mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    assert loss.item() == pytest.approx(0.0) and stats["clipfrac"] == 0


def synthetic_task(reward, max_new_tokens: int = 8) -> Task:
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    return Task("synthetic", prompts, reward, Sampling(max_new_tokens=max_new_tokens))


def test_ppo_raises_the_reward_well_above_the_base_model(tiny, tmp_path, one_thread):
    path, _, _ = tiny
    wanted = list(range(40, 70))  # 30 of ~300 tokens: the random base model emits about 10% of them
    reward = get_reward("token_set", token_ids=wanted)
    task = synthetic_task(reward)
    hparams = dict(
        num_rounds=10,
        prompts_per_round=20,
        samples_per_prompt=8,
        rollout_batch_size=None,
        minibatch_size=32,
        micro_batch_size=32,
        ppo_epochs=4,
        lr=3e-3,
        kl_coef=0.02,
        adaptive_kl=False,
        sample_batch_size=160,
        forward_batch_size=160,
    )
    model_dir = ppo.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")

    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["scored_samples"] == 10 * 20 * 8 and stats["dropped_unscored"] == 0
    base, base_std = stats["iterations"][0]["reward"], stats["iterations"][0]["reward_std"]  # the untrained policy
    model, tok = load_model(model_dir)
    ids = encode_prompts(tok, [p.text for p in task.train_prompts], 32)
    completions = sample(model, tok, [p for p in ids for _ in range(8)], Sampling(max_new_tokens=8))
    scores = np.array(reward([], [], completion_ids=completions))
    stderr = np.sqrt(scores.var(ddof=1) / len(scores) + base_std**2 / 160)
    # the base sits near 0.1; the trained policy must beat it by 0.25 and by six standard errors of the difference
    assert base < 0.2
    assert scores.mean() - base > max(0.25, 6 * stderr), (base, scores.mean(), stderr)
    assert (tmp_path / "run" / ppo.VALUE_HEAD_FILE).is_file()
    assert stats["iterations"][-1]["kl"] > 0 and {"clipfrac", "value_loss", "kl_coef"} <= set(stats["iterations"][-1])


def test_unscored_samples_are_dropped_and_counted_never_scored_zero(tiny, tmp_path, one_thread):
    path, _, _ = tiny

    def every_other(prompts, completions, **kwargs):
        return [None if i % 2 else 0.5 for i in range(len(completions))]

    hparams = dict(
        num_rounds=2,
        prompts_per_round=4,
        samples_per_prompt=3,
        rollout_batch_size=None,
        minibatch_size=4,
        micro_batch_size=2,
        ppo_epochs=1,
    )
    ppo.train(synthetic_task(every_other, 4), path, tmp_path / "run", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["dropped_unscored"] == 12 and stats["scored_samples"] == 12  # 2 rounds x 12 samples, half unscored
    assert [r["scored"] for r in stats["iterations"]] == [6, 6]
    assert all(r["reward"] == 0.5 for r in stats["iterations"])


def test_an_all_unscored_batch_is_a_clear_error(tiny, tmp_path, one_thread):
    path, _, _ = tiny
    task = synthetic_task(lambda p, c, **k: [None] * len(c), 3)
    with pytest.raises(SuiteError, match="iteration 0: the reward returned None for every sample"):
        ppo.train(task, path, tmp_path / "run", dict(num_rounds=1, prompts_per_round=2), seed=0, device="cpu")


def test_an_unknown_hyperparameter_names_the_method_file(tiny, tmp_path):
    with pytest.raises(SuiteError, match="methods/ppo/method.yaml: unknown hyperparameter"):
        ppo.train(
            synthetic_task(lambda p, c, **k: [0.0] * len(c)), tiny[0], tmp_path, {"clip": 0.1}, seed=0, device="cpu"
        )


def test_rounds_are_cut_into_rollout_batches_and_each_rounds_draw_depends_on_seed_and_round_only():
    cfg = ppo.PPOConfig(num_rounds=2, prompts_per_round=5, samples_per_prompt=2, rollout_batch_size=4)
    batches = ppo.plan_batches(cfg, 7, seed=0)
    assert [(rnd, len(b)) for rnd, b in batches] == [(0, 4), (0, 4), (0, 2), (1, 4), (1, 4), (1, 2)]
    first_round = [i for rnd, b in batches if rnd == 0 for i in b]
    assert len(set(first_round)) == 5 and all(first_round.count(i) == 2 for i in set(first_round))
    # a longer run draws the same prompts in its first rounds, whatever came before: a resumed job draws them too
    longer = ppo.plan_batches(ppo.PPOConfig(**{**vars(cfg), "num_rounds": 3}), 7, seed=0)
    assert longer[:6] == batches
    assert ppo.plan_batches(cfg, 7, seed=1) != batches


def budget(method: str, profile: str, task: str, config: type) -> tuple:
    """(rounds, prompts per round, samples per prompt): the scored-sample budget of a method on a task."""
    hparams = dict(yaml.safe_load((ROOT / f"methods/{method}/method.yaml").read_text())["hparams"][profile] or {})
    cfg = from_dict(config, for_task([hparams], task, method), method)
    return cfg.num_rounds, cfg.prompts_per_round, cfg.samples_per_prompt


@pytest.mark.parametrize("profile", ["mini", "paper", "test"])
def test_each_profile_scores_as_many_samples_as_quark_on_every_task(profile):
    tasks = yaml.safe_load((ROOT / "methods/ppo/method.yaml").read_text())["tasks"]
    for task in tasks:
        assert budget("ppo", profile, task, ppo.PPOConfig) == budget("quark", profile, task, QuarkConfig), task


def test_generate_samples_the_saved_policy_greedily_when_asked(tiny, tmp_path):
    path, _, _ = tiny
    prompts = [Prompt("a", "the cat sat", {}), Prompt("b", "a quick brown", {})]
    greedy = Sampling(max_new_tokens=6, do_sample=False)
    for seed in (0, 1):
        generate(Path(path), prompts, 2, greedy, tmp_path / f"g{seed}.jsonl", seed=seed, device="cpu")
    first, second = read_jsonl(tmp_path / "g0.jsonl"), read_jsonl(tmp_path / "g1.jsonl")
    assert [r["token_ids"] for r in first] == [r["token_ids"] for r in second]
    assert first[0]["token_ids"] == first[1]["token_ids"] and {r["prompt_id"] for r in first} == {"a", "b"}
