import copy
import json
from collections import Counter

import torch
from scipy.stats import chisquare
from transformers import DynamicCache, LogitsProcessor, StaticCache, TemperatureLogitsWarper, TopPLogitsWarper

import core.sampling
from core.data import Prompt, read_jsonl
from core.sampling import Sampling, _draw, _trim, kv_cache, sample, sample_generate
from methods.quark import state
from methods.quark.generation import generate


def test_suppressed_tokens_are_never_sampled(tiny):
    path, tokenizer, model = tiny
    prefixes = [[5, 6, 7]] * 40
    torch.manual_seed(0)
    free = sample(model, tokenizer, prefixes, Sampling(max_new_tokens=6, top_p=1.0))
    seen = sorted({t for c in free for t in c if t != tokenizer.eos_token_id})[:25]
    torch.manual_seed(0)
    banned = sample(model, tokenizer, prefixes, Sampling(max_new_tokens=6, top_p=1.0), suppress_ids=seen)
    assert seen and not any(t in seen for c in banned for t in c)


def test_trim_keeps_first_eos_and_drops_padding():
    assert _trim([4, 5, 0, 0, 0], eos_id=0, pad_id=0) == [4, 5, 0]
    assert _trim([4, 5, 9, 9], eos_id=0, pad_id=9) == [4, 5]
    assert _trim([4, 5, 6], eos_id=0, pad_id=0) == [4, 5, 6]


def _quark_model(tiny, tmp_path):
    path, tokenizer, model = tiny
    import copy

    tok, mdl = copy.deepcopy(tokenizer), copy.deepcopy(model)
    ids = state.add_reward_tokens(mdl, tok, 5)
    out = tmp_path / "quark_model"
    mdl.save_pretrained(out)
    tok.save_pretrained(out)
    (out / state.META_FILE).write_text(json.dumps({"reward_token_ids": ids, "best_quantile": 0}))
    return out, ids


def test_generation_conditions_on_the_chosen_quantile(tiny, tmp_path, monkeypatch):
    out, ids = _quark_model(tiny, tmp_path)
    seen = {}

    def spy(model, tokenizer, prefixes, sampling, suppress_ids=None, desc="", logits_processor=None):
        seen["first"] = {p[0] for p in prefixes}
        seen["suppress"] = suppress_ids
        return [[1, 2]] * len(prefixes)

    monkeypatch.setattr("methods.common.generate.sample", spy)
    prompts = [Prompt("a", "the cat", {}), Prompt("b", "a dog", {})]
    for quantile, expected in [("best", ids[0]), ("worst", ids[4]), (2, ids[2])]:
        generate(
            out, prompts, 3, Sampling(max_new_tokens=4), tmp_path / "g.jsonl", seed=0, device="cpu", quantile=quantile
        )
        assert seen["first"] == {expected}
        assert sorted(seen["suppress"]) == sorted(ids)
    records = read_jsonl(tmp_path / "g.jsonl")
    assert [(r["prompt_id"], r["sample"]) for r in records] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
    ]
    assert all(r["token_ids"] == [1, 2] for r in records)


class _Ban(LogitsProcessor):
    """Bans one token and records the ids it is called with."""

    def __init__(self, token: int):
        self.token, self.calls = token, []

    def __call__(self, input_ids, scores):
        self.calls.append(input_ids.clone())
        return scores.index_fill(1, torch.tensor([self.token]), -float("inf"))


class _EosAfterEven(LogitsProcessor):
    """Forces EOS after an even token where EOS is allowed, so that rows end at different steps."""

    def __init__(self, eos: int):
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[(input_ids[:, -1] % 2 == 0) & scores[:, self.eos].isfinite(), self.eos] = 1e4
        return scores


def test_greedy_matches_generate(tiny):
    path, tokenizer, model = tiny
    prefixes = [[5, 6, 7], [9], [11, 12, 13, 14, 15, 16], [20, 21], [30, 31, 32, 33], [40]]
    for extra in ([], [_EosAfterEven(tokenizer.eos_token_id)]):
        sampling = Sampling(max_new_tokens=8, min_new_tokens=3, do_sample=False, top_p=1.0, batch_size=4)
        args = (model, tokenizer, prefixes, sampling, [50, 51, 52])
        fast, reference = sample(*args, logits_processor=extra), sample_generate(*args, logits_processor=extra)
        assert fast == reference
        assert all(len(c) >= 3 for c in fast) and not any(t in (50, 51, 52) for c in fast for t in c)
    assert len({len(c) for c in fast}) > 1  # EOS ended rows at different steps


def test_the_static_kv_cache_draws_what_a_dynamic_one_draws(tiny, monkeypatch):
    path, tokenizer, model = tiny
    prefixes = [[5, 6, 7], [9], [11, 12, 13, 14, 15, 16], [20, 21]] * 6
    sampling = Sampling(max_new_tokens=12, top_p=0.9, batch_size=8)
    torch.manual_seed(3)
    static = sample(model, tokenizer, prefixes, sampling)
    monkeypatch.setattr(core.sampling, "kv_cache", lambda model, length: DynamicCache(config=model.config))
    torch.manual_seed(3)
    dynamic = sample(model, tokenizer, prefixes, sampling)
    assert static == dynamic and len({tuple(c) for c in static}) > 10


def test_under_autocast_the_cache_holds_bf16_and_draws_what_an_fp32_cache_draws(tiny, monkeypatch):
    path, tokenizer, model = tiny
    prefixes = [[5, 6, 7], [9], [11, 12, 13, 14, 15, 16], [20, 21]] * 6
    sampling = Sampling(max_new_tokens=12, top_p=0.9, batch_size=8)
    caches = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(core.sampling, "kv_cache", lambda *a: caches.append(kv_cache(*a)) or caches[-1])
        torch.manual_seed(3)
        held = sample(model, tokenizer, prefixes, sampling)
        assert {layer.keys.dtype for layer in caches[0].layers} == {torch.bfloat16}
        fp32 = lambda model, length: StaticCache(config=model.config, max_cache_len=length)  # noqa: E731
        monkeypatch.setattr(core.sampling, "kv_cache", fp32)
        torch.manual_seed(3)
        cast = sample(model, tokenizer, prefixes, sampling)
    assert held == cast and len({tuple(c) for c in held}) > 10
    assert type(kv_cache(model, 8)) is StaticCache  # outside autocast, the model's own dtype


def _peaked(tiny):
    """The tiny model with its logits scaled up, so that top-p keeps a few dozen tokens of clearly unequal odds."""
    path, tokenizer, model = tiny
    peaked = copy.deepcopy(model)
    peaked.model.norm.weight.data *= 8.0
    return tokenizer, peaked


def test_nucleus_frequencies_match_generates_distribution(tiny):
    tokenizer, model = _peaked(tiny)
    prompt, top_p, temperature, n = [5, 6, 7, 8], 0.8, 0.7, 40_000
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1].float()
    scaled = TemperatureLogitsWarper(temperature)(None, logits)
    probs = TopPLogitsWarper(top_p)(None, scaled).softmax(-1)[0].double()  # what generate() draws from
    nucleus = probs.nonzero().squeeze(1)
    expected = n * probs[nucleus] / probs[nucleus].sum()
    assert 10 < len(nucleus) < 200 and expected.min() > 50

    torch.manual_seed(0)
    tokens = sample(
        model,
        tokenizer,
        [prompt] * n,
        Sampling(max_new_tokens=1, top_p=top_p, temperature=temperature, batch_size=n // 4),
    )
    counts = torch.bincount(torch.tensor([c[0] for c in tokens]), minlength=len(probs)).double()
    assert counts.sum() == n and counts[probs == 0].sum() == 0
    assert chisquare(counts[nucleus], expected).pvalue > 1e-3

    # a nucleus one token short fails the chi-square even at its expected counts; one token long draws outside
    full = scaled[0].softmax(-1).double()
    order = full.argsort(descending=True)
    assert set(order[: len(nucleus)].tolist()) == set(nucleus.tolist())
    short = torch.zeros_like(full)
    short[order[: len(nucleus) - 1]] = full[order[: len(nucleus) - 1]]
    assert chisquare(n * short[nucleus] / short.sum(), expected).pvalue < 1e-6
    assert n * full[order[len(nucleus)]] / full[order[: len(nucleus) + 1]].sum() > 20


def test_extra_processor_is_applied_to_every_step(tiny):
    tokenizer, model = _peaked(tiny)
    prompts = [[5, 6, 7, 8], [9, 10]] * 50
    sampling = Sampling(max_new_tokens=6, min_new_tokens=6, top_p=0.9, temperature=0.8, batch_size=100)
    torch.manual_seed(0)
    free = sample(model, tokenizer, prompts, sampling)
    favourite = Counter(t for c in free for t in c).most_common(1)[0][0]
    ban = _Ban(favourite)
    torch.manual_seed(0)
    banned = sample(model, tokenizer, prompts, sampling, logits_processor=[ban])
    assert not any(favourite in c for c in banned) and all(len(c) == 6 for c in banned)
    widths = [ids.shape[1] for ids in ban.calls]
    assert widths == list(range(4, 10))  # all ids so far: left-padded prompts, then one more token a step
    assert all(torch.equal(a, b[:, :-1]) for a, b in zip(ban.calls, ban.calls[1:]))


def test_the_most_likely_token_is_always_in_the_nucleus():
    scores = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    assert torch.equal(_draw(scores, 1e-9), scores.argmax(-1))
