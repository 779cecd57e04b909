import json

import torch

from methods.common.data import Prompt, read_jsonl
from methods.common.sampling import Sampling, _trim, sample
from methods.quark import quark


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
    ids = quark.add_reward_tokens(mdl, tok, 5)
    out = tmp_path / "quark_model"
    mdl.save_pretrained(out)
    tok.save_pretrained(out)
    (out / quark.META_FILE).write_text(json.dumps({"reward_token_ids": ids, "best_quantile": 0}))
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
        quark.generate(out, prompts, 3, Sampling(max_new_tokens=4), tmp_path / "g.jsonl", seed=0, device="cpu",
                       quantile=quantile)  # fmt: skip
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
