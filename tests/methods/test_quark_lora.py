"""LoRA through PEFT: one copy of the base weights, the reference is that copy with its adapters disabled, only
adapters and the reward tokens' rows train, and the saved model is a plain transformers model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from core.data import Prompt
from core.errors import SuiteError
from core.models import load_model
from core.sampling import Sampling, sample
from methods.common.lora import add_lora
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.quark import quark, state
from tests.conftest import CORPUS

LORA = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}


def test_disabled_adapters_give_the_base_models_logits(tiny):
    _, tokenizer, base = tiny
    tokenizer, model = copy.deepcopy(tokenizer), copy.deepcopy(base)
    ids = state.add_reward_tokens(model, tokenizer, 3)
    policy = add_lora(model, LORA, ids, "methods/quark/method.yaml")
    with torch.no_grad():  # trained-looking adapters and reward-token rows
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    policy.eval()
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        adapted = policy(input_ids=prompt).logits[..., : base.config.vocab_size]
        with policy.disable_adapter():
            reference = policy(input_ids=prompt).logits[..., : base.config.vocab_size]
        expected = base(input_ids=prompt).logits
    assert torch.equal(reference, expected)
    assert (adapted - expected).abs().max() > 1e-2  # the adapters do act when enabled


def test_unknown_lora_options_name_the_file(tiny):
    _, tokenizer, base = tiny
    with pytest.raises(SuiteError, match="method.yaml: unknown lora option.s. rank"):
        add_lora(copy.deepcopy(base), {"rank": 4}, [1], "methods/quark/method.yaml")


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    path = tiny[0]
    reward = get_reward("token_set", token_ids=list(range(40, 70)))
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    task = Task("synthetic", prompts, reward, Sampling(max_new_tokens=6))
    hparams = dict(
        num_rounds=2,
        steps_per_round=4,
        prompts_per_round=8,
        sample_batch_size=8,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        lora=LORA,
    )
    out = tmp_path_factory.mktemp("lora") / "run"
    seen = {}
    original = quark.Trainer.checkpoint

    def spy(self):  # record what a checkpoint holds, and that no second copy of the weights exists
        seen["ref"] = self.ref
        seen["tensors"] = [n for n, p in self.acc.unwrap_model(self.policy).named_parameters() if p.requires_grad]
        original(self)

    quark.Trainer.checkpoint = spy
    try:
        model_dir = quark.train(task, path, out, hparams, seed=0, device="cpu")
    finally:
        quark.Trainer.checkpoint = original
    return path, model_dir, seen


def test_only_adapters_and_reward_token_rows_train(lora_run):
    path, model_dir, seen = lora_run
    assert seen["ref"] is None  # the reference is the policy with its adapters off: one copy of the base
    assert seen["tensors"] and all(
        ".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n for n in seen["tensors"]
    )
    base, merged = load_file(path / "model.safetensors"), load_file(model_dir / "model.safetensors")
    meta = json.loads((model_dir / state.META_FILE).read_text())
    v0, new = meta["base_vocab_size"], meta["reward_token_ids"]
    changed = {k for k in base if k in merged and not torch.equal(base[k], merged[k][: base[k].shape[0]])}
    assert changed == {k for k in base if ".q_proj." in k or ".v_proj." in k}  # LoRA merged into its targets only
    emb = merged["model.embed_tokens.weight"]
    assert emb.shape[0] == v0 + len(new) and torch.equal(emb[:v0], base["model.embed_tokens.weight"])
    set_seed(0)  # as train() does before adding the reward tokens: their rows as training found them
    start, tokenizer = load_model(path)
    state.add_reward_tokens(start, tokenizer, len(new))
    initial = start.get_input_embeddings().weight.detach()[new]
    assert all(not torch.equal(emb[i], initial[j]) for j, i in enumerate(new))  # every reward-token row trained


def test_the_saved_lora_model_loads_without_peft_and_generates(lora_run):
    _, model_dir, _ = lora_run
    assert not (model_dir / "adapter_config.json").exists()
    model, tokenizer = load_model(model_dir)
    assert type(model).__module__.startswith("transformers.")
    assert not any("lora" in n or "token_adapter" in n for n, _ in model.named_parameters())
    meta = json.loads((model_dir / state.META_FILE).read_text())
    prefix = [meta["reward_token_ids"][0]] + tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    out = sample(model, tokenizer, [prefix] * 3, Sampling(max_new_tokens=5), meta["reward_token_ids"])
    assert len(out) == 3 and all(0 < len(c) <= 5 for c in out)
    assert not any(t in meta["reward_token_ids"] for c in out for t in c)
