"""The shared fine-tuning loop: loss only on targets, and it learns what it is shown."""

import copy

import numpy as np
import torch

from core.sampling import pack
from methods.common.lm import LMSchedule, encode_texts, shuffled_batches, target_nll, train_lm


def test_target_nll_ignores_prefix_and_padding(tiny):
    _, tokenizer, model = tiny
    packed = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], tokenizer.pad_token_id)
    nll = target_nll(model, packed)
    assert nll.shape == (2, 3)
    assert nll[0, 2] == 0 and (nll[1] > 0).all()
    # brute force: the second row's NLL from a plain forward pass over its own unpadded tokens
    ids = torch.tensor([[8, 11, 12, 13]])
    logprobs = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
    expected = -logprobs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(nll[1], expected, rtol=1e-4, atol=1e-4)


def test_train_lm_fits_its_targets(tiny):
    _, tokenizer, base = tiny
    model = copy.deepcopy(base)
    eos = tokenizer.eos_token_id
    targets = encode_texts(tokenizer, ["the cat sat on the mat"], 16)
    pairs = [([eos], targets[0])]
    before = target_nll(model, pack([[eos]], targets, eos)).sum().item()
    stats = train_lm(model, pairs, LMSchedule(steps=30, batch_size=4, lr=1e-2), eos, seed=0)
    after = target_nll(model, pack([[eos]], targets, eos)).sum().item()
    assert after < 0.2 * before, (before, after)
    assert stats["loss_last"] < stats["loss_first"]


def test_shuffled_batches_take_every_index_once_per_epoch():
    batches = shuffled_batches(7, 3, np.random.default_rng(0))
    drawn = [i for _ in range(7) for i in next(batches)]  # 21 indices: three epochs, batches spanning their edges
    assert all(sorted(drawn[e * 7 : (e + 1) * 7]) == list(range(7)) for e in range(3))
    assert drawn[:7] != list(range(7))  # shuffled, not in order
