"""Unlikelihood training: candidate sets and losses against brute force, and learning on the tiny model."""

import copy
import json

import numpy as np
import pytest
import torch

from core.config import for_task, from_dict
from core.data import Prompt, Text
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Sampling, pack, sample
from methods.common.lm import LMSchedule, encode_texts, train_lm
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.unlikelihood import losses, unlikelihood
from tests.conftest import CORPUS

PREFIXES = [[5, 6], [9]]
COMPLETIONS = [[7, 5, 7, 8, 6], [9, 9, 4]]  # row 1: the target 9 repeats the prefix, so 9 is never its own candidate
PAD = 0


def brute_force_candidates(prefix: list[int], completion: list[int]) -> list[set[int]]:
    """C_t = {x_<t} minus {x_t} for each completion token, from the unpadded sequence."""
    full = prefix + completion
    return [set(full[: len(prefix) + i]) - {x} for i, x in enumerate(completion)]


def test_previous_context_candidates_are_the_earlier_tokens_minus_the_target():
    packed = pack(PREFIXES, COMPLETIONS, PAD)
    cand = losses.previous_context_candidates(packed, vocab_size=50)
    for b, (prefix, completion) in enumerate(zip(PREFIXES, COMPLETIONS)):
        for i, expected in enumerate(brute_force_candidates(prefix, completion)):
            got = packed.input_ids[b][cand[b, i]].tolist()
            assert sorted(got) == sorted(expected), (b, i, got, expected)  # each candidate once
        assert not cand[b, len(completion) :].any()  # padding positions have no candidates
    assert sorted(packed.input_ids[0][cand[0, 3]].tolist()) == [5, 6, 7]  # hand check: before "8" come 5 6 7 5 7
    # a control token in the prefix (id >= vocab_size) is never a candidate
    with_control = pack([[60] + p for p in PREFIXES], COMPLETIONS, PAD)
    cand = losses.previous_context_candidates(with_control, vocab_size=50)
    assert 60 not in with_control.input_ids[cand.any(1)].tolist()


def test_token_unlikelihood_matches_brute_force():
    torch.manual_seed(0)
    packed = pack(PREFIXES, COMPLETIONS, PAD)
    logprobs = torch.randn(2, packed.completion_ids.shape[1], 12).log_softmax(-1)
    got = losses.token_unlikelihood(logprobs, packed)
    expected = torch.zeros_like(got)
    for b, (prefix, completion) in enumerate(zip(PREFIXES, COMPLETIONS)):
        for i, cands in enumerate(brute_force_candidates(prefix, completion)):
            expected[b, i] = sum(-torch.log(1 - logprobs[b, i, c].exp()) for c in cands)
    torch.testing.assert_close(got, expected)


def test_repeated_ngram_mask_marks_every_token_of_a_repeated_ngram():
    a, b, c, d, e = 1, 2, 3, 4, 5
    assert losses.repeated_ngram_mask([a, b, c, d, a, b, c, d, e], 4) == [False] * 4 + [True] * 4 + [False]
    assert losses.repeated_ngram_mask([a, b, c, a, b, d, a, b], 2) == [
        False,
        False,
        False,
        True,
        True,
        False,
        True,
        True,
    ]
    assert losses.repeated_ngram_mask([a] * 5, 2) == [False, True, True, True, True]
    # the last n-gram counts too (the reference code's range(len - n) skips it)
    assert losses.repeated_ngram_mask([a, b, a, b], 2) == [False, False, True, True]
    assert losses.repeated_ngram_mask([a, b, c], 4) == [False] * 3


def test_sequence_unlikelihood_matches_brute_force():
    torch.manual_seed(1)
    completions = [[1, 2, 1, 2, 3], [4, 4, 4]]
    packed = pack([[7], [8, 9]], completions, PAD)
    cand = losses.ngram_candidates(packed, 2)
    assert cand.tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
    logprobs = torch.randn(2, 5, 10).log_softmax(-1)
    got = losses.sequence_unlikelihood(logprobs, packed.completion_ids, cand)
    expected = torch.zeros(2, 5)
    for b, ids in enumerate(completions):
        for t, flag in enumerate(losses.repeated_ngram_mask(ids, 2)):
            if flag:
                expected[b, t] = -torch.log(1 - logprobs[b, t, ids[t]].exp())
    torch.testing.assert_close(got, expected)


def candidate_mass(model, packed) -> float:
    """Mean over completion positions of the probability given to the previous-context candidates."""
    with torch.no_grad():
        logprobs = unlikelihood.completion_logprobs(model, packed)
    cand = losses.previous_context_candidates(packed, logprobs.shape[-1])
    ids = packed.input_ids[:, None, :].expand_as(cand)
    mass = (logprobs.exp().gather(-1, ids) * cand).sum(-1)
    return (mass.sum() / packed.completion_mask.sum()).item()


def test_token_level_ul_lowers_the_probability_of_repeating_a_context_token(tiny):
    _, tokenizer, base = tiny
    pad = tokenizer.pad_token_id
    # a repeat-prone model: trained to loop over eight tokens, it predicts the loop's tokens again after them
    prone = copy.deepcopy(base)
    loop = list(range(100, 108)) * 4
    train_lm(prone, [(loop[:1], loop[1:])], LMSchedule(steps=30, batch_size=1, lr=1e-2), pad, seed=0)
    # the hand-made sequence: the eight loop tokens once, then eight new ones
    seq = list(range(100, 108)) + list(range(200, 208))
    packed = pack([seq[:1]], [seq[1:]], pad)
    before = candidate_mass(prone, packed)
    after = {}
    for alpha in (0.0, 1.0, 4.0):
        model = copy.deepcopy(prone)
        train_lm(
            model,
            [(seq[:1], seq[1:])],
            LMSchedule(steps=20, batch_size=1, lr=3e-3),
            pad,
            seed=0,
            loss_fn=lambda m, p, a=alpha: unlikelihood.mle_token_ul_loss(m, p, a)[0],
        )
        after[alpha] = candidate_mass(model, packed)
    # the same MLE updates with the UL term leave less mass on context tokens, the more so the larger alpha
    assert before > 0.3, before
    assert after[4.0] < after[1.0] < 0.9 * after[0.0], after
    assert after[1.0] < 0.5 * before, (before, after)


def repeated_token_probability(model, packed) -> float:
    """Mean probability the model gives to the completion tokens that lie in a repeated 4-gram."""
    with torch.no_grad():
        logprobs = unlikelihood.completion_logprobs(model, packed)
    cand = losses.ngram_candidates(packed, 4)
    probs = logprobs.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1).exp()
    return ((probs * cand).sum() / cand.sum()).item()


def repeat_prone(tiny, tmp_path, steps: int = 40) -> tuple[Task, list[list[int]], list[list[int]]]:
    """A repeat-prone model saved to tmp_path/prone, its repetition task, and its own greedy continuations.

    Fine-tuned for `steps` updates on texts that loop over three words, it loops when decoding greedily.
    """
    _, tokenizer, base = tiny
    prone = copy.deepcopy(base)
    phrases = [" ".join(t.split()[:3]) for t in CORPUS[:4]]
    loops = encode_texts(tokenizer, [" ".join([p] * 8) for p in phrases], 64)
    train_lm(
        prone,
        [(x[:1], x[1:]) for x in loops],
        LMSchedule(steps=steps, batch_size=4, lr=1e-2),
        tokenizer.pad_token_id,
        seed=0,
    )
    prone.save_pretrained(tmp_path / "prone")
    tokenizer.save_pretrained(tmp_path / "prone")
    prompts = [Prompt(f"p{i}", p, {}) for i, p in enumerate(phrases)]
    task = Task(
        "repetition", prompts, get_reward("diversity"), Sampling(max_new_tokens=24), [Text(t, None) for t in CORPUS[:4]]
    )
    prefixes = encode_prompts(tokenizer, [p.text for p in prompts], 16)
    greedy = sample(prone, tokenizer, prefixes, Sampling(max_new_tokens=24, do_sample=False))
    return task, prefixes, greedy


def test_sequence_level_ul_pushes_down_the_repeats_of_greedy_continuations(tiny, tmp_path):
    _, tokenizer, _ = tiny
    task, prefixes, greedy = repeat_prone(tiny, tmp_path)
    prone, _ = load_model(tmp_path / "prone")
    packed = pack(prefixes, greedy, tokenizer.pad_token_id)
    # the prone model's own greedy continuations: most tokens lie in a repeated 4-gram
    assert losses.ngram_candidates(packed, 4).sum() > 0.5 * packed.completion_mask.sum()
    after = {}
    for rate in (0.0, 0.5):  # MLE on human text alone, then the paper's mix with sequence-level updates
        hparams = dict(
            token_steps=0,
            sequence_steps=30,
            sequence_tune_rate=rate,
            token_ul_coef=0.0,
            text_batch_size=4,
            sequence_batch_size=4,
            lr=3e-3,
            max_text_tokens=32,
            max_prompt_tokens=16,
        )
        run = tmp_path / f"run{rate}"
        model, _ = load_model(unlikelihood.train(task, tmp_path / "prone", run, hparams, seed=0, device="cpu"))
        after[rate] = repeated_token_probability(model, packed)
    stats = json.loads((run / "train_stats.json").read_text())
    assert 5 <= stats["sequence_phase"]["sequence_updates"] <= 25  # a fair coin flipped 30 times (seeded)
    before = repeated_token_probability(prone, packed)
    # with half its updates spent on sequence-level UL instead of MLE, the mix pushes the repeats down much further
    assert before > 0.3 and after[0.5] < 0.5 * before and after[0.5] < 0.7 * after[0.0], (before, after)


def test_quark_with_unlikelihood_pushes_down_repeats_further_than_quark(tiny, tmp_path):
    """Quark + UL (the paper's repetition variant): the same Quark run with the sequence-level term added."""
    from methods.quark import quark

    _, tokenizer, _ = tiny
    # trained longer than above, the model loops when sampling too, so Quark's pool holds repeats to unlearn
    task, prefixes, greedy = repeat_prone(tiny, tmp_path, steps=150)
    before = repeated_token_probability(
        load_model(tmp_path / "prone")[0], pack(prefixes, greedy, tokenizer.pad_token_id)
    )
    after = {}
    for coef in (0.0, 1.0):
        hparams = dict(
            num_rounds=2,
            steps_per_round=15,
            samples_per_prompt=2,
            batch_size=8,
            lr=3e-3,
            warmup_steps=1,
            max_prompt_tokens=16,
            sample_batch_size=16,
            unlikelihood_coef=coef,
        )
        model_dir = quark.train(task, tmp_path / "prone", tmp_path / f"quark{coef}", hparams, seed=0, device="cpu")
        model, _ = load_model(model_dir)
        best = json.loads((model_dir / "quark.json").read_text())["reward_token_ids"][0]
        conditioned = pack([[best] + p for p in prefixes], greedy, tokenizer.pad_token_id)  # as generate() prompts it
        after[coef] = repeated_token_probability(model, conditioned)
    stats = json.loads((tmp_path / "quark1.0" / "train_stats.json").read_text())
    rounds = stats["rounds"]
    assert rounds[0]["unlikelihood"] > 0 and rounds[0]["explore_reward"] < 0.5  # round 0's samples loop
    # the pool is the prone model's own loops: plain Quark learns them back, the UL term pushes them down
    # (measured: 0.99 before, 0.97 after Quark, 0.58 after Quark + UL), and round 1 explores with fewer repeats
    assert before > 0.9 and after[0.0] > 0.8 * before and after[1.0] < 0.7 * after[0.0], (before, after)
    assert rounds[1]["explore_reward"] > rounds[0]["explore_reward"] + 0.3, rounds
    with pytest.raises(SuiteError, match="'unlikelihood_level' must be"):
        quark.train(task, tmp_path / "prone", tmp_path / "bad", {"unlikelihood_level": "word"}, seed=0, device="cpu")


def test_ul_on_unwanted_samples_raises_a_synthetic_reward(tiny, tmp_path):
    path, tokenizer, _ = tiny
    wanted = list(range(40, 70))  # 30 of ~300 tokens: a random model emits about 10% of them
    reward = get_reward("token_set", token_ids=wanted)
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    task = Task("synthetic", prompts, reward, Sampling(max_new_tokens=8))
    # MLE on samples with >= 2 of 8 wanted tokens, UL on every token of samples with none
    hparams = dict(
        num_rounds=4,
        prompts_per_round=20,
        samples_per_prompt=8,
        steps_per_round=30,
        batch_size=16,
        ul_batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        wanted_threshold=0.25,
        unwanted_threshold=0.1,
        sample_batch_size=160,
        max_grad_norm=None,
    )
    model_dir = unlikelihood.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    round0 = stats["rounds"][0]["sample_reward"]
    model, tok = load_model(model_dir)
    ids = encode_prompts(tok, [p.text for p in prompts], 32)
    completions = sample(model, tok, [p for p in ids for _ in range(8)], Sampling(max_new_tokens=8, batch_size=160))
    scores = np.array(reward([], [], completion_ids=completions))
    mean, stderr = scores.mean(), scores.std(ddof=1) / np.sqrt(len(scores))
    # round 0 sits near 0.1; the trained model must beat it by 0.08 and by six standard errors of its own mean
    assert round0 < 0.2
    assert mean - round0 > max(0.08, 6 * stderr), (round0, mean, stderr)


def test_unknown_hyperparameter_and_per_task_overrides(tiny, tmp_path):
    path, _, _ = tiny
    task = Task("synthetic", [Prompt("p", "the cat", {})], lambda p, c, **k: [0.0] * len(c), Sampling(max_new_tokens=3))
    values = {"lr": 1.0, "token_steps": 3, "per_task": {"repetition": {"lr": 2.0}, "toxicity": {"lr": 4.0}}}
    cfg = from_dict(unlikelihood.UnlikelihoodConfig, for_task([values], "repetition", "x"), "x")
    assert (cfg.lr, cfg.token_steps) == (2.0, 3)
    assert from_dict(unlikelihood.UnlikelihoodConfig, for_task([values], "sentiment-positive", "x"), "x").lr == 1.0
    with pytest.raises(SuiteError, match="methods/unlikelihood/method.yaml: unknown hyperparameter.*bogus"):
        unlikelihood.train(task, path, tmp_path / "a", {"bogus": 1}, seed=0, device="cpu")
    # every sample scores 0: nothing is wanted, which must be said in one line
    with pytest.raises(SuiteError, match="round 0: no sample has reward >= wanted_threshold"):
        unlikelihood.train(task, path, tmp_path / "b", {"num_rounds": 1, "steps_per_round": 1}, seed=0, device="cpu")
