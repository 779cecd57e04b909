"""GeDi: the Bayes-rule posterior against brute force over two classes, the filter and the training loss against their
definitions, and learning on a synthetic attribute."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from core.data import read_jsonl
from core.sampling import Sampling, pack
from methods.common.tokens import add_control_tokens
from methods.gedi import gedi
from tests.methods.test_dexperts import assert_beats_the_base_model, assert_nll_matches_processor, synthetic_task


@pytest.fixture
def cclm(tiny):
    """A tiny class-conditional LM: the tiny model with the two GeDi codes added."""
    _, tokenizer, model = tiny
    tok, lm = copy.deepcopy(tokenizer), copy.deepcopy(model)
    codes = add_control_tokens(lm, tok, gedi.CODES)
    return lm.eval(), codes, len(tokenizer)


def brute_force_log_posterior(lm, codes, vocab_size, prefix, logit_scale, class_bias):
    """log P(wanted | prefix, v) for every v, each from full forward passes over [code] + prefix + [v]."""
    scores = []
    for c, code in enumerate(codes):
        rows = torch.tensor([[code] + prefix + [v] for v in range(vocab_size)])
        with torch.no_grad():
            logprobs = F.log_softmax(lm(rows).logits[:, :-1, :vocab_size], dim=-1)
        loglik = logprobs.gather(-1, rows[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)  # log P(prefix, v | code)
        scores.append(logit_scale * loglik / (len(prefix) + 1) + (class_bias if c == 0 else 0.0))
    scores = torch.stack(scores)  # [2, V]
    return scores[0] - torch.logsumexp(scores, dim=0)


def test_posterior_equals_bayes_rule_over_both_classes_by_brute_force(tiny, cclm):
    """Through the cached, left-padded processor, over several steps and two batches."""
    _, tokenizer, _ = tiny
    lm, codes, vocab_size = cclm
    pad = tokenizer.pad_token_id
    cfg = gedi.GeDiConfig(class_bias=0.7)
    processor = gedi.GeDiProcessor(lm, pad, codes, vocab_size, logit_scale=1.3, cfg=cfg)
    for prompts in ([[5, 6, 7, 8], [9, 10], [11, 12, 13]], [[20, 21, 22], [23]]):
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        for _ in range(3):
            log_posterior = processor.posterior(ids)
            for i, p in enumerate(prompts):
                expected = brute_force_log_posterior(lm, codes, vocab_size, p + ids[i, width:].tolist(), 1.3, 0.7)
                torch.testing.assert_close(log_posterior[i], expected, rtol=1e-4, atol=1e-4)
            ids = torch.cat([ids, torch.randint(1, vocab_size, (len(prompts), 1))], dim=1)


def test_filter_drops_the_least_wanted_mass_below_filter_p_unless_above_tau():
    weighted = torch.log(torch.tensor([[0.05, 0.10, 0.15, 0.30, 0.40]]))
    log_posterior = torch.log(torch.tensor([[0.10, 0.95, 0.20, 0.30, 0.90]]))
    out = gedi.gedi_filter(weighted, log_posterior, filter_p=0.5, target_p=0.8)
    # least wanted first: token 0 (cum. 0.05), 2 (0.20), 3 (0.50), 4 (0.90), 1 (1.00); cum < 0.5 drops 0 and 2 only
    assert torch.isinf(out[0]).tolist() == [True, False, True, False, False]
    out = gedi.gedi_filter(weighted, log_posterior, filter_p=0.95, target_p=0.8)
    # now 0, 2, 3 and 4 are under the mass bound, but token 4's P(wanted) = 0.9 > tau keeps it
    assert torch.isinf(out[0]).tolist() == [True, False, True, True, False]
    torch.testing.assert_close(out[0, 1], weighted[0, 1])


def test_loss_mixes_generative_and_discriminative_terms_as_defined(tiny, cclm):
    _, tokenizer, _ = tiny
    lm, codes, vocab_size = cclm
    model = gedi.ClassConditionalLM(lm, codes, vocab_size)
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
    texts, labels = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], [0, 1, 0]
    packed = pack([[codes[y]] for y in labels], texts, tokenizer.pad_token_id)
    loss = gedi.gedi_loss(model, packed, gen_weight=0.6)
    generative, discriminative = [], []
    for text, y in zip(texts, labels):
        mean_ll = []
        for code in codes:
            row = torch.tensor([[code] + text])
            logprobs = F.log_softmax(lm(row).logits[0, :-1, :vocab_size], dim=-1)
            mean_ll.append(logprobs.gather(-1, row[0, 1:].unsqueeze(-1)).sum() / len(text))
        mean_ll = torch.stack(mean_ll)
        generative.append(-mean_ll[y])
        discriminative.append(-F.log_softmax(1.7 * mean_ll, dim=0)[y])
    expected = 0.6 * torch.stack(generative).mean() + 0.4 * torch.stack(discriminative).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_heldout_nll_is_the_unfiltered_decoding_distribution(tiny, cclm):
    """The held-out perplexity scores text under the weighted distribution the processor samples from (filter off)."""
    _, tokenizer, base = tiny
    lm, codes, vocab_size = cclm
    model = gedi.ClassConditionalLM(lm, codes, vocab_size)
    text = [5, 6, 7, 8, 9]
    with torch.no_grad():
        nll = gedi.guided_nll(base, model, omega=3.0)(pack([text[:1]], [text[1:]], tokenizer.pad_token_id))
    cfg = gedi.GeDiConfig(omega=3.0, filter_p=0.0)
    processor = gedi.GeDiProcessor(lm, tokenizer.pad_token_id, codes, vocab_size, logit_scale=1.0, cfg=cfg)
    assert_nll_matches_processor(nll, processor, base, text)


def test_gedi_raises_the_synthetic_reward_over_the_base_model(tiny, tmp_path):
    path, tokenizer, _ = tiny
    task = synthetic_task(tokenizer)
    hparams = dict(
        steps=12, batch_size=16, lr=1e-2, warmup_steps=2, wanted_min_score=0.4, unwanted_max_score=0.1, eval_texts=40
    )
    model_dir = gedi.train(task, path, tmp_path / "run", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["class_accuracy"] > 0.9, stats
    assert_beats_the_base_model(gedi.generate, model_dir, path, task.train_prompts, tmp_path)
    assert not any(t >= len(tokenizer) for r in read_jsonl(tmp_path / "method.jsonl") for t in r["token_ids"])
    greedy = Sampling(max_new_tokens=8, do_sample=False, top_p=1.0)
    gedi.generate(model_dir, task.train_prompts[:4], 1, greedy, tmp_path / "greedy.jsonl", seed=0, device="cpu")
    assert len(read_jsonl(tmp_path / "greedy.jsonl")) == 4


def test_filter_always_keeps_the_most_wanted_token():
    weighted = torch.randn(4, 50)
    log_posterior = torch.full((4, 50), math.log(0.01))
    out = gedi.gedi_filter(weighted, log_posterior, filter_p=1.0, target_p=0.99)
    assert (~torch.isinf(out)).sum(-1).min() >= 1
