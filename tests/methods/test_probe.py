"""The controllability probe: its AUC and log-probabilities against brute force, and a dial that a trained Quark
model shows on held-out prompts."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.data import Prompt
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, sample
from methods.common.probe import concordance, sequence_logprobs
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.quark import quark, state
from methods.quark.generation import generate
from methods.quark.pool import PROBE_ROUND, Pool
from tests.conftest import CORPUS


def test_concordance_counts_pairs_as_brute_force_does():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, 30).astype(float)  # ties in the scores count half
    rewards = rng.integers(0, 3, 30).astype(float)  # tied rewards make no pair
    groups = rng.integers(0, 5, 30)

    def brute(same_group_only):
        agree = total = 0.0
        for i, j in itertools.permutations(range(30), 2):
            if rewards[i] > rewards[j] and (not same_group_only or groups[i] == groups[j]):
                total += 1
                agree += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
        return agree / total

    assert concordance(scores, rewards) == pytest.approx(brute(False))
    assert concordance(scores, rewards, groups) == pytest.approx(brute(True))
    assert concordance(rewards, rewards) == 1.0 and concordance(-rewards, rewards) == 0.0
    assert math.isnan(concordance([1.0, 2.0], [0.5, 0.5]))


def test_sequence_logprobs_match_one_forward_per_sample(tiny):
    _, tokenizer, model = tiny
    vocab = model.config.vocab_size - 3  # the softmax over the first V0 ids only, as the methods train
    prefixes, completions = [[5, 6, 7], [8, 9]], [[10, 11, 12], [13]]
    got = sequence_logprobs(model, prefixes, completions, tokenizer.pad_token_id, vocab, batch_size=2)
    for p, c, value in zip(prefixes, completions, got):
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([p + c])).logits[0, :, :vocab], -1)
        assert value == pytest.approx(sum(logprobs[len(p) - 1 + t, tok].item() for t, tok in enumerate(c)), abs=1e-4)


def test_a_trained_quark_model_shows_its_dial_on_held_out_prompts(tiny, tmp_path):
    path, _, _ = tiny
    wanted = list(range(40, 70))  # the reward depends on the completion only: the share of these tokens in it
    reward = get_reward("token_set", token_ids=wanted)
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    task = Task("synthetic", prompts, reward, Sampling(max_new_tokens=2))  # short: the tiny model learns it fast
    hparams = dict(
        num_rounds=6,
        steps_per_round=40,
        samples_per_prompt=8,
        batch_size=32,
        lr=1e-2,
        warmup_steps=5,
        sample_batch_size=600,
        probe_prompts=6,
        probe_samples_per_prompt=100,
    )
    model_dir = quark.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    pool = Pool(tmp_path / "run" / "pool.sqlite")
    probe_set = pool.samples(PROBE_ROUND)
    assert len(probe_set) == 6 * 100
    assert {s.prompt_id for s in probe_set}.isdisjoint({s.prompt_id for s in pool.samples()})  # never trained on
    # chance: the same rewards against shuffled scores; the trained dial must clear it by four of its spreads
    rng = np.random.default_rng(0)
    rewards, groups = [s.reward for s in probe_set], [s.prompt_id for s in probe_set]
    null = np.array(
        [
            [concordance(x, rewards), concordance(x, rewards, groups)]
            for x in (rng.permutation(len(rewards)) for _ in range(300))
        ]
    )
    margin = 0.5 + 4 * null.std(axis=0)
    assert stats["probe_initial"]["probe_auc"] < margin[0]  # untrained reward tokens: no dial yet
    assert stats["probe_auc"] > margin[0] and stats["probe_auc_within"] > margin[1], (stats, margin)
    assert stats["probe_auc"] == stats["rounds"][-1]["probe_auc"]  # the table's value is the last round's

    # the dial steers sampling too: the best token's samples beat the worst token's on the held-out prompts
    model, tok = load_model(model_dir)
    meta = json.loads((model_dir / state.META_FILE).read_text())
    held_out = encode_prompts(tok, sorted({s.prompt for s in probe_set}), 32)
    scores = {}
    for k in (0, len(meta["reward_token_ids"]) - 1):
        prefixes = [[meta["reward_token_ids"][k], *p] for p in held_out for _ in range(40)]
        completions = sample(model, tok, prefixes, Sampling(max_new_tokens=2), meta["reward_token_ids"])
        scores[k] = np.array(reward([], [], completion_ids=completions))
    best, worst = scores[0], scores[len(meta["reward_token_ids"]) - 1]
    stderr = np.sqrt(best.var(ddof=1) / len(best) + worst.var(ddof=1) / len(worst))
    assert best.mean() - worst.mean() > 5 * stderr, (best.mean(), worst.mean(), stderr)


def test_the_reward_token_goes_before_the_prompt_or_right_after_it(tiny, tmp_path, monkeypatch):
    assert state.place_token([5, 6, 7], 99, "start") == [99, 5, 6, 7]
    assert state.place_token([5, 6, 7], 99, "end") == [5, 6, 7, 99]
    path, _, _ = tiny
    prompts = [Prompt(f"p{i}", t, {}) for i, t in enumerate(CORPUS[:4])]
    task = Task("synthetic", prompts, get_reward("token_set", token_ids=[40]), Sampling(max_new_tokens=2))
    hparams = dict(num_rounds=1, steps_per_round=1, batch_size=2, token_position="end")
    model_dir = quark.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    seen = {}
    monkeypatch.setattr("methods.quark.generation.generate_jsonl", lambda *args, **kwargs: seen.update(kwargs))
    generate(model_dir, prompts, 1, Sampling(), tmp_path / "out.jsonl", seed=0, device="cpu")
    ids = json.loads((model_dir / state.META_FILE).read_text())["reward_token_ids"]
    assert seen["suffix_ids"] == [ids[0]] and "prefix_ids" not in seen
    with pytest.raises(SuiteError, match="'token_position' must be 'start' or 'end', not 'middle'"):
        quark.train(task, path, tmp_path / "bad", {**hparams, "token_position": "middle"}, seed=0, device="cpu")


def test_reward_spread_splits_the_variance_between_prompts_and_within_them():
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
    from reward_spread import spread

    prompts = ["a", "a", "b", "b", "c", "c"]
    by_prompt = pd.DataFrame({"prompt_id": prompts, "reward": [0.1, 0.1, 0.5, 0.5, 0.9, 0.9]})
    assert spread(by_prompt) == {"samples": 6, "within_prompt_share": 0.0, "prompt_range": 0.0}
    by_sample = pd.DataFrame({"prompt_id": prompts, "reward": [0.2, 0.8, 0.8, 0.2, 0.4, 0.6]})
    assert spread(by_sample)["within_prompt_share"] == pytest.approx(1.0)
    assert spread(by_sample)["prompt_range"] == pytest.approx(0.6)  # the ranges 0.6, 0.6, 0.2
    rng = np.random.default_rng(0)
    mixed = pd.DataFrame({"prompt_id": np.repeat(np.arange(50), 4), "reward": rng.random(200)})
    r, g = mixed["reward"].to_numpy(), mixed["prompt_id"].to_numpy()
    within = sum(((r[g == k] - r[g == k].mean()) ** 2).sum() for k in range(50)) / ((r - r.mean()) ** 2).sum()
    assert spread(mixed)["within_prompt_share"] == pytest.approx(within)


def test_the_probes_chance_band_matches_kendalls_null_and_widens_within_prompt():
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
    from reward_spread import chance_band

    n = 120
    probe = pd.DataFrame({"prompt_id": np.repeat(np.arange(n // 4), 4), "reward": np.random.default_rng(1).random(n)})
    band = chance_band(probe, draws=2000)
    # AUC = (1 + Kendall's tau) / 2 over distinct rewards, and tau's null variance over n items is 2(2n+5) / (9n(n-1));
    # within prompt it is the mean of 30 independent taus over 4 samples each
    def sd(items, groups=1):
        return 0.5 * np.sqrt(2 * (2 * items + 5) / (9 * items * (items - 1)) / groups)

    assert band["auc"][0] == pytest.approx(0.5, abs=0.005)
    assert band["auc"][1] == pytest.approx(sd(n), rel=0.1)
    assert band["auc_within"][0] == pytest.approx(0.5, abs=0.01)
    assert band["auc_within"][1] == pytest.approx(sd(4, n // 4), rel=0.1)
