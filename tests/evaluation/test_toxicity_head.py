"""The MiniLM toxicity head: it learns a planted signal, round-trips through safetensors, fails in one line on a bad
file, and the shipped head separates clearly toxic from clearly clean text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from core.errors import SuiteError
from evaluation.scorers import get_scorer
from evaluation.toxicity_head import (
    HEAD_DIR,
    HeadConfig,
    TokenStates,
    ToxicityHead,
    fit_head,
    load_head,
    predict,
    save_head,
)
from methods.common.rewards import get_reward
from tests.conftest import snakemake

WIDTH = 16
TOXIC = [
    "You are a fucking idiot and everyone hates you.",
    "Shut up, you stupid worthless bitch.",
    "Go to hell, you piece of shit.",
    "I will kill you, you disgusting pig.",
]
CLEAN = [
    "The weather was lovely and we walked to the park.",
    "Thank you so much for your help with the project.",
    "The committee will meet again on Tuesday morning.",
    "She planted tomatoes and basil in the garden.",
]


def planted(n: int, seed: int) -> tuple[TokenStates, np.ndarray, np.ndarray]:
    """Texts of 6-16 random token vectors; in a toxic text one token carries +5 along a fixed direction."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.ones(WIDTH), dim=0)
    labels = np.arange(n) % 2 == 1
    texts = []
    for toxic in labels:
        tokens = torch.randn(int(torch.randint(6, 17, (1,), generator=gen)), WIDTH, generator=gen)
        if toxic:
            tokens[int(torch.randint(len(tokens), (1,), generator=gen))] += 5 * direction
        texts.append(tokens)
    targets = np.where(labels, 0.9, 0.1)  # soft targets, as Perspective scores are
    return TokenStates.pack(texts), targets, labels


@pytest.mark.parametrize("hidden", [0, 8])
def test_fit_head_finds_a_planted_token_that_mean_pooling_dilutes(hidden):
    train, targets, _ = planted(600, seed=0)
    held, _, labels = planted(400, seed=1)
    token = fit_head(train, targets, HeadConfig(layers=[6], pooling="token", hidden=hidden, epochs=10, lr=1e-2))
    mean = fit_head(train, targets, HeadConfig(layers=[6], pooling="mean", epochs=10, lr=1e-2))
    token_auc, mean_auc = roc_auc_score(labels, predict(token, held)), roc_auc_score(labels, predict(mean, held))
    assert token_auc > 0.98, token_auc
    assert token_auc > mean_auc + 0.08, (token_auc, mean_auc)


def test_head_outputs_probabilities_and_round_trips_through_safetensors(tmp_path):
    data, _, _ = planted(50, seed=2)
    head = ToxicityHead(HeadConfig(layers=[6], hidden=8), WIDTH)
    with torch.no_grad():
        head.mean.bias.fill_(5.0)  # push some outputs towards 1: they must still be probabilities
    probs = predict(head, data)
    assert probs.shape == (50,) and np.all((probs >= 0) & (probs <= 1)) and probs.std() > 0
    save_head(head, tmp_path, {"note": "test"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.json", "head.safetensors"]
    assert set(load_file(tmp_path / "head.safetensors")) == set(head.state_dict())
    assert json.loads((tmp_path / "head.json").read_text())["config"]["hidden"] == 8
    np.testing.assert_array_equal(predict(load_head(tmp_path), data), probs)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / "head.safetensors").write_bytes(b"not a safetensors file"), "head.safetensors"),
        (lambda d: (d / "head.json").write_text("{not json"), "head.json"),
        (lambda d: (d / "head.json").unlink(), "head.json"),
        (
            lambda d: (d / "head.json").write_text(json.dumps({"config": {"layers": [6], "hidden": 8}, "width": 32})),
            "head.safetensors",
        ),
        (lambda d: (d / "head.json").write_text(json.dumps({"config": {"layers": [9]}, "width": 16})), "head.json"),
    ],
    ids=["garbage-weights", "bad-json", "missing-json", "wrong-width", "bad-layer"],
)
def test_a_bad_head_file_is_a_one_line_error_naming_it(tmp_path, damage, named):
    save_head(ToxicityHead(HeadConfig(layers=[6], hidden=8), WIDTH), tmp_path)
    damage(tmp_path)
    with pytest.raises(SuiteError) as error:
        load_head(tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / named) in message, message


def test_shipped_scorer_ranks_toxic_above_clean_and_drives_the_reward():
    score = get_scorer("minilm_toxicity")
    toxic, clean = score(TOXIC), score(CLEAN)
    assert min(toxic) > max(clean), (toxic, clean)
    assert min(toxic) > 0.5 and max(clean) < 0.2, (toxic, clean)
    assert score([]) == []
    reward = get_reward("toxicity", scorer="minilm_toxicity")
    assert reward(["", ""], [TOXIC[0], CLEAN[0]]) == pytest.approx([1 - toxic[0], 1 - clean[0]], abs=1e-6)
    assert json.loads((HEAD_DIR / "head.json").read_text())["fitted_on"]["train_file"].endswith("train.jsonl")


def test_head_rule_is_scheduled_by_name(repo_copy):
    """`all` never asks for it (its inputs are the task tables); by name it rebuilds the head and the report."""
    result = snakemake(repo_copy, "-n", "toxicity_head", "--configfile", "workflow/config/test.yaml")
    assert result.returncode == 0, result.stderr
    for path in [
        "scorers/minilm_toxicity/head.safetensors",
        "scorers/toxicity.md",
        "scorers/toxicity_head_variants.csv",
    ]:
        assert f"results/test/{path}" in result.stdout + result.stderr, path
