import copy
import json

import pytest
import torch
import torch.nn.functional as F

from core.sampling import completion_logits, pack
from methods.quark import state
from methods.quark.quark import quark_loss
from methods.quark.state import add_reward_tokens


def test_kl_and_entropy_match_brute_force_per_token():
    torch.manual_seed(0)
    B, C, V = 3, 4, 11
    logits, ref_logits = torch.randn(B, C, V), torch.randn(B, C, V)
    labels = torch.randint(V, (B, C))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    beta, alpha = 0.3, 0.1
    loss, stats = quark_loss(logits, ref_logits, labels, mask, beta, alpha)
    terms, kls = [], []
    for b in range(B):
        for t in range(C):
            if not mask[b, t]:
                continue
            p = F.softmax(logits[b, t].double(), -1)
            q = F.softmax(ref_logits[b, t].double(), -1)
            kl = sum(p[v] * (p[v].log() - q[v].log()) for v in range(V))
            ent = -sum(p[v] * p[v].log() for v in range(V))
            nll = -p[labels[b, t]].log()
            terms.append(nll + beta * kl - alpha * ent)
            kls.append(kl)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert stats["kl"] == pytest.approx(torch.stack(kls).mean().item(), rel=1e-5)


def test_masked_positions_contribute_nothing():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    ref_logits = torch.randn(2, 5, 7)
    labels = torch.randint(7, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    loss, _ = quark_loss(logits, ref_logits, labels, mask, 0.05, 0.06)
    loss.backward()
    assert torch.all(logits.grad[mask == 0] == 0)
    assert torch.any(logits.grad[mask == 1] != 0)
    changed = logits.detach().clone()
    changed[mask == 0] += 100 * torch.randn_like(changed[mask == 0])
    labels2 = labels.clone()
    labels2[mask == 0] = 0
    loss2, _ = quark_loss(changed, ref_logits, labels2, mask, 0.05, 0.06)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_prompt_and_padding_do_not_reach_the_completion_logits(tiny):
    """Completion logits depend on the prompt's content but not on how much padding sits left of it."""
    _, tokenizer, model = tiny
    prompt, completion = [5, 6, 7], [8, 9, 10]
    short = pack([prompt], [completion], tokenizer.pad_token_id)
    padded = pack([prompt, [1] * 9], [completion, [2]], tokenizer.pad_token_id)
    with torch.no_grad():
        a = completion_logits(model, short)[0]
        b = completion_logits(model, padded)[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert padded.completion_mask[1].tolist() == [1, 0, 0]


def test_reward_token_rows_follow_existing_embedding_statistics(tiny):
    _, tokenizer, model = tiny
    tokenizer, model = copy.deepcopy(tokenizer), copy.deepcopy(model)
    old = model.get_input_embeddings().weight.detach().clone()
    torch.manual_seed(0)
    ids = add_reward_tokens(model, tokenizer, 5)
    emb = model.get_input_embeddings().weight.detach()
    assert ids == list(range(old.shape[0], old.shape[0] + 5))
    assert torch.equal(emb[: old.shape[0]], old)  # existing rows untouched
    new = emb[ids]
    # per dimension, the new rows sit at the old mean with the old spread: distinct from each other and from the mean
    z = (new - old.mean(0)) / old.std(0)
    assert z.abs().mean().item() == pytest.approx(0.8, abs=0.25)  # E|N(0,1)| = 0.80
    assert torch.cdist(new, new).fill_diagonal_(float("inf")).min() > 0.5 * old.std(0).norm()
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert len(tokenizer) == emb.shape[0]


def test_unlikelihood_term_adds_its_weighted_per_token_mean():
    """Quark + UL: the sequence-level term on repeated 2-grams, weighted and averaged over completion tokens."""
    from methods.unlikelihood.losses import ngram_candidates, sequence_unlikelihood

    torch.manual_seed(2)
    prefixes, completions = [[3, 4], [5]], [[6, 7, 6, 7, 8], [9, 9, 9]]
    packed = pack(prefixes, completions, 0)
    B, C, V = 2, 5, 12
    logits, ref_logits = torch.randn(B, C, V), torch.randn(B, C, V)
    labels, mask = packed.completion_ids, packed.completion_mask
    candidates = ngram_candidates(packed, 2)
    term = lambda lp: sequence_unlikelihood(lp, labels, candidates)  # noqa: E731
    plain, _ = quark_loss(logits, ref_logits, labels, mask, 0.05, 0.06)
    loss, stats = quark_loss(logits, ref_logits, labels, mask, 0.05, 0.06, term, 2.5)
    repeated = {(0, 2), (0, 3), (1, 1), (1, 2)}  # 6 7 | 6 7 repeats "6 7"; 9 9 | 9 repeats "9 9"
    assert {(b, t) for b, t in candidates.nonzero().tolist()} == repeated
    p = F.softmax(logits.double(), -1)
    ul = sum(-torch.log(1 - p[b, t, labels[b, t]]) for b, t in repeated) / mask.sum()
    assert loss.item() == pytest.approx(plain.item() + 2.5 * ul.item(), rel=1e-5)
    assert stats["unlikelihood"] == pytest.approx(ul.item(), rel=1e-5)


def test_reward_token_rows_take_the_scaled_step(tiny, tmp_path):
    from core.data import Prompt
    from core.models import load_model
    from core.sampling import Sampling
    from methods.common.rewards import get_reward
    from methods.common.task import Task
    from methods.quark import quark
    from tests.conftest import CORPUS

    path, _, _ = tiny
    prompts = [Prompt(f"p{i}", t, {}) for i, t in enumerate(CORPUS[:8])]
    task = Task(
        "synthetic", prompts, get_reward("token_set", token_ids=list(range(40, 70))), Sampling(max_new_tokens=4)
    )
    rows = {}
    for lr, scale in ((0.0, 1.0), (1e-3, 1.0), (1e-3, 10.0)):  # lr 0: the rows as they were drawn, same seed
        hparams = dict(
            num_rounds=1, steps_per_round=1, batch_size=8, lr=lr, warmup_steps=0, reward_token_lr_scale=scale
        )
        model_dir = quark.train(task, path, tmp_path / f"{lr}-{scale}", hparams, seed=0, device="cpu")
        ids = json.loads((model_dir / state.META_FILE).read_text())["reward_token_ids"]
        rows[lr, scale] = load_model(model_dir)[0].get_input_embeddings().weight[ids].detach()
    initial, step = rows[0.0, 1.0], rows[1e-3, 1.0] - rows[0.0, 1.0]
    assert step.abs().max() > 1e-4  # one AdamW step moved the rows
    assert torch.allclose(
        rows[1e-3, 10.0] - initial, 10 * step, atol=1e-6
    )  # the scaled run moved them ten times as far
