"""DExperts: the ensemble formula on hand-made logits, the experts' cached decoding against full forward passes, and
learning on a synthetic attribute."""

import copy

import numpy as np
import pytest
import torch

from core.data import Prompt, Text, read_jsonl
from core.errors import SuiteError
from core.sampling import Sampling, pack
from methods.base import generate as base_generate
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.dexperts import dexperts
from tests.conftest import CORPUS

WANTED = list(range(40, 70))  # the synthetic attribute: share of completion tokens in this set


def test_ensemble_is_the_base_nucleus_plus_alpha_times_expert_difference():
    base = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0, float("-inf")], [0.0, 0.0, 0.0, 0.0, 5.0, 1.0]])
    expert = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    antiexpert = torch.tensor([[1.0, 1.0, -1.0, 2.0, 0.0, 0.0], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]])
    out = dexperts.dexperts_logits(base, expert, antiexpert, alpha=2.0, filter_top_p=0.9)
    for b in range(2):
        probs = base[b].softmax(-1)
        order = probs.argsort(descending=True).tolist()
        kept, mass = [], 0.0
        for v in order:  # the smallest set of most likely tokens holding at least 0.9 of the mass
            if mass >= 0.9:
                break
            kept.append(v)
            mass += probs[v].item()
        for v in range(6):
            expected = base[b, v] + 2.0 * (expert[b, v] - antiexpert[b, v]) if v in kept else float("-inf")
            assert out[b, v].item() == pytest.approx(expected), (b, v)
    assert 0 < (out[0] == float("-inf")).sum() < 6  # the filter removed something, and the suppressed token
    assert out[0, 5] == float("-inf")  # a token suppressed in the base logits stays suppressed
    unfiltered = dexperts.dexperts_logits(base, expert, antiexpert, alpha=2.0, filter_top_p=1.0)
    torch.testing.assert_close(unfiltered, base + 2.0 * (expert - antiexpert))


def perturbed(model, seed):
    """A copy of the tiny model with noise on every weight: a stand-in for a fine-tuned expert."""
    torch.manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return out


def test_processor_follows_generate_with_cached_experts(tiny):
    """Over several steps and two batches, the processor equals the formula on full forward passes of each row."""
    _, tokenizer, base = tiny
    expert, antiexpert = perturbed(base, 1), perturbed(base, 2)
    pad = tokenizer.pad_token_id
    processor = dexperts.DExpertsProcessor(expert, antiexpert, pad, len(tokenizer), alpha=1.5, filter_top_p=0.8)
    for prompts in ([[5, 6, 7, 8], [9, 10], [11, 12, 13]], [[20, 21], [22, 23, 24, 25, 26]]):
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        for _ in range(4):
            scores = torch.randn(len(prompts), len(tokenizer))
            out = processor(ids, scores.clone())
            for i, p in enumerate(prompts):
                row = torch.tensor([p + ids[i, width:].tolist()])
                with torch.no_grad():
                    z_plus, z_minus = expert(row).logits[:, -1], antiexpert(row).logits[:, -1]
                expected = dexperts.dexperts_logits(scores[i : i + 1], z_plus, z_minus, 1.5, 0.8)
                torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-4, atol=1e-4)
            ids = torch.cat([ids, torch.randint(1, len(tokenizer), (len(prompts), 1))], dim=1)


def test_heldout_nll_is_the_unfiltered_decoding_distribution(tiny):
    """The held-out perplexity scores text under the distribution the processor samples from (filter off)."""
    _, tokenizer, base = tiny
    expert, antiexpert = perturbed(base, 1), perturbed(base, 2)
    text = [5, 6, 7, 8, 9]
    nll = dexperts.ensemble_nll(base, expert, antiexpert, alpha=1.5)(
        pack([text[:1]], [text[1:]], tokenizer.pad_token_id)
    )
    processor = dexperts.DExpertsProcessor(expert, antiexpert, tokenizer.pad_token_id, len(tokenizer), 1.5, 1.0)
    assert_nll_matches_processor(nll, processor, base, text)


def assert_nll_matches_processor(nll, processor, base, text):
    """nll[0, t - 1] is -log softmax of the processor's scores for text[t], given text[:t]: one fresh call per t."""
    for t in range(1, len(text)):
        ids = torch.tensor([text[:t]])
        with torch.no_grad():
            scores = processor(ids, base(ids).logits[:, -1])
        torch.testing.assert_close(nll[0, t - 1], -scores.log_softmax(-1)[0, text[t]], rtol=1e-4, atol=1e-4)


def synthetic_corpus(tokenizer, n: int = 600, length: int = 10, seed: int = 0) -> list[Text]:
    """Texts rich in WANTED tokens and texts without any, each scored by the share of its tokens in WANTED."""
    rng = np.random.default_rng(seed)
    clean = [i for i in range(1, len(tokenizer)) if tokenizer.encode(tokenizer.decode([i])) == [i]]
    wanted = [i for i in clean if i in WANTED]
    other = [i for i in clean if i not in WANTED]
    texts = []
    for k in range(n):
        rich = k % 2 == 0
        ids = [int(rng.choice(wanted if rich and rng.random() < 0.7 else other)) for _ in range(length)]
        text = tokenizer.decode(ids)
        encoded = tokenizer.encode(text)
        texts.append(Text(text, sum(t in WANTED for t in encoded) / max(len(encoded), 1)))
    return texts


def synthetic_task(tokenizer) -> Task:
    prompts = [Prompt(f"p{i}", " ".join(t.split()[:3]), {}) for i, t in enumerate(CORPUS)]
    return Task(
        "synthetic",
        prompts,
        get_reward("token_set", token_ids=WANTED),
        Sampling(max_new_tokens=8),
        synthetic_corpus(tokenizer),
    )


def mean_reward(path) -> tuple[float, float]:
    """Mean token_set reward of a generations file and its standard error."""
    rows = read_jsonl(path)
    scores = np.array([sum(t in WANTED for t in r["token_ids"]) / max(len(r["token_ids"]), 1) for r in rows])
    return scores.mean(), scores.std(ddof=1) / np.sqrt(len(scores))


def assert_beats_the_base_model(generate, model_dir, base_dir, prompts, tmp_path) -> None:
    """Sampling with the method must raise the mean reward over the base model's by 0.1 and six standard errors."""
    sampling = Sampling(max_new_tokens=8, top_p=0.9, batch_size=64)
    base_generate(base_dir, prompts, 5, sampling, tmp_path / "base.jsonl", seed=0, device="cpu")
    generate(model_dir, prompts, 5, sampling, tmp_path / "method.jsonl", seed=0, device="cpu")
    base, _ = mean_reward(tmp_path / "base.jsonl")
    steered, stderr = mean_reward(tmp_path / "method.jsonl")
    # the random base model emits about 10% WANTED tokens: sampling noise cannot produce such a gap
    assert base < 0.2
    assert steered - base > max(0.1, 6 * stderr), (base, steered, stderr)


def test_dexperts_raises_the_synthetic_reward_over_the_base_model(tiny, tmp_path):
    path, tokenizer, _ = tiny
    task = synthetic_task(tokenizer)
    hparams = dict(steps=12, batch_size=16, lr=1e-2, warmup_steps=5, wanted_min_score=0.4, unwanted_max_score=0.1)
    model_dir = dexperts.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    assert_beats_the_base_model(dexperts.generate, model_dir, path, task.train_prompts, tmp_path)
    greedy = Sampling(max_new_tokens=8, do_sample=False, top_p=1.0)
    for name in ("greedy_a", "greedy_b"):
        dexperts.generate(
            model_dir, task.train_prompts[:4], 1, greedy, tmp_path / f"{name}.jsonl", seed=0, device="cpu"
        )
    assert read_jsonl(tmp_path / "greedy_a.jsonl") == read_jsonl(tmp_path / "greedy_b.jsonl")


def test_a_corpus_without_one_side_is_a_clear_error(tiny, tmp_path):
    path, tokenizer, _ = tiny
    task = Task("synthetic", [], None, Sampling(), [Text("the cat", 1.0)] * 10)
    with pytest.raises(SuiteError, match="no unwanted texts"):
        dexperts.train(task, path, tmp_path / "run", dict(steps=1), seed=0, device="cpu")
