"""ACF, NADO decoding and plain fine-tuning: R's target and loss terms against brute force, R's zero start, one R
step, the schedule of ACF's jobs, and a learning test per method on the tiny model with the synthetic reward."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from core.data import Prompt, Text, read_jsonl, write_json
from core.errors import SuiteError
from core.sampling import Sampling, pack
from methods.acf import acf
from methods.acf.schedule import Schedule
from methods.base import generate as base_generate
from methods.common.benchmarks import combine_benchmarks
from methods.common.probe import concordance
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.finetune import finetune
from methods.nado import nado
from methods.nado.aux_model import (
    AuxConfig,
    AuxModel,
    NadoLogitsProcessor,
    completion_r_logits,
    completion_r_taken,
    fit_aux,
    kl_to_target,
    r_scores,
    split_probe,
    target_logprobs,
)
from tests.conftest import CORPUS, snakemake

WANTED = list(range(40, 70))  # 30 of ~300 tokens: the random tiny model emits about 10% of them


def synthetic_task(corpus: list[str] | None = None) -> Task:
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    texts = [Text(t, None) for t in (CORPUS if corpus is None else corpus)]
    return Task("synthetic", prompts, get_reward("token_set", token_ids=WANTED), Sampling(max_new_tokens=8), texts)


def rewards_of(records: list[dict]) -> np.ndarray:
    return np.array(get_reward("token_set", token_ids=WANTED)([], [], completion_ids=[r["token_ids"] for r in records]))


def beats(better: np.ndarray, worse: np.ndarray, gap: float) -> tuple[bool, tuple]:
    """Mean difference above `gap` and above six standard errors of the difference: sampling noise cannot do that."""
    diff = better.mean() - worse.mean()
    stderr = np.sqrt(better.var(ddof=1) / len(better) + worse.var(ddof=1) / len(worse))
    return diff > max(gap, 6 * stderr), (better.mean(), worse.mean(), stderr)


def sample_records(generate, model_dir, task, out, **kwargs) -> list[dict]:
    generate(
        model_dir,
        task.train_prompts,
        10,
        Sampling(max_new_tokens=8, top_p=1.0, batch_size=200),
        out,
        seed=1,
        device="cpu",
        **kwargs,
    )
    return read_jsonl(out)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from threads, and on a shared CPU their spinning costs minutes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def aux(tiny) -> AuxModel:
    """An R with a random head (a trained one is not zero), on the tiny model's first layer."""
    path, _, _ = tiny
    r = AuxModel.from_base(path, 1)
    torch.manual_seed(1)
    torch.nn.init.normal_(r.head.weight, std=0.5)
    torch.nn.init.normal_(r.head.bias, std=0.5)
    return r.eval()


def test_target_is_p_times_r_normalised_over_the_vocabulary():
    torch.manual_seed(0)
    logits, r_logits = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    unnormalised = logits.softmax(-1) * torch.sigmoid(r_logits)
    torch.testing.assert_close(target_logprobs(logits, r_logits).exp(), unnormalised / unnormalised.sum(-1, True))
    sharper = logits.softmax(-1) * torch.sigmoid(r_logits) ** 2
    torch.testing.assert_close(target_logprobs(logits, r_logits, 2.0).exp(), sharper / sharper.sum(-1, True))


def test_kl_term_and_its_gradient_match_brute_force():
    torch.manual_seed(0)
    logits, r_logits = torch.randn(2, 3, 11, requires_grad=True), torch.randn(2, 3, 11)
    kl = kl_to_target(logits, r_logits)
    p = logits.detach().softmax(-1)
    q = p * torch.sigmoid(r_logits) / (p * torch.sigmoid(r_logits)).sum(-1, True)
    torch.testing.assert_close(kl, (q * (q.log() - p.log())).sum(-1))
    kl.sum().backward()
    # q* is held fixed: d/dz sum_v q_v (log q_v - log p_v) = p - q
    torch.testing.assert_close(logits.grad, p - q)


@pytest.mark.parametrize("anchored", [True, False])
def test_q_star_under_either_anchor_matches_a_hand_computation(anchored):
    """Vocabulary of 3: p_theta = (.5, .3, .2), the base model (.2, .2, .6), R = (.9, .5, .1). q* ∝ anchor * R."""
    logits = torch.tensor([[[0.5, 0.3, 0.2]]]).log().requires_grad_(True)
    base = torch.tensor([[[0.2, 0.2, 0.6]]]).log()
    r = torch.tensor([0.9, 0.5, 0.1])
    kl = kl_to_target(logits, torch.logit(r)[None, None], base if anchored else None)
    if anchored:  # .18, .10, .06 over .34
        q = torch.tensor([0.18, 0.10, 0.06]) / 0.34
    else:  # .45, .15, .02 over .62
        q = torch.tensor([0.45, 0.15, 0.02]) / 0.62
    p = torch.tensor([0.5, 0.3, 0.2])
    assert kl.item() == pytest.approx((q * (q / p).log()).sum().item(), abs=1e-6)
    kl.sum().backward()
    torch.testing.assert_close(logits.grad[0, 0], p - q)  # q* held fixed under either anchor


def test_r_scores_match_a_per_sequence_brute_force(tiny, aux):
    """R's last-token logit and the tilt log q* - log p, packed with left padding, against one sequence at a time."""
    _, tokenizer, model = tiny
    samples = [
        {"prompt_ids": p, "completion_ids": c} for p, c in [([5, 6, 7], [9, 10]), ([8], [11, 12, 13]), ([4, 4], [30])]
    ]
    seq, tilt = r_scores(aux, model, samples, tokenizer.pad_token_id, batch_size=2)
    with torch.no_grad():
        for k, s in enumerate(samples):
            ids = torch.tensor([s["prompt_ids"] + s["completion_ids"]])
            at = slice(len(s["prompt_ids"]) - 1, ids.shape[1] - 1)
            logp = model(input_ids=ids).logits[0, at].log_softmax(-1)
            r_logits = aux(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])[0][0, at]
            logq = (logp + F.logsigmoid(r_logits)).log_softmax(-1)
            y = torch.tensor(s["completion_ids"])[:, None]
            assert seq[k] == pytest.approx(r_logits[-1, y[-1, 0]].item(), rel=1e-4, abs=1e-5)
            assert tilt[k] == pytest.approx((logq.gather(-1, y) - logp.gather(-1, y)).sum().item(), rel=1e-4, abs=1e-5)


def test_r_of_the_taken_tokens_alone_equals_the_full_heads(tiny, aux):
    _, tokenizer, _ = tiny
    packed = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], tokenizer.pad_token_id)
    full = completion_r_logits(aux, packed).gather(-1, packed.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(completion_r_taken(aux, packed), full, rtol=1e-5, atol=1e-5)


def test_acf_loss_matches_a_per_sequence_brute_force(tiny, aux):
    """Left padding, position ids and the logits kept for completions change nothing: one sequence at a time agrees."""
    _, tokenizer, model = tiny
    pad = tokenizer.pad_token_id
    prompts, completions = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13]]
    corpus_prefix, corpus_target = [[20], [21]], [[22, 23, 24], [25]]
    loss, stats = acf.acf_loss(
        model, aux, pack(corpus_prefix, corpus_target, pad), pack(prompts, completions, pad), 0.7
    )
    kls, nlls = [], []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits[0]
            r_logits, _ = aux(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
            at = slice(len(prompt) - 1, ids.shape[1] - 1)  # the positions that predict the completion
            p = logits[at].softmax(-1)
            q = p * torch.sigmoid(r_logits[0, at]) / (p * torch.sigmoid(r_logits[0, at])).sum(-1, True)
            kls += (q * (q.log() - p.log())).sum(-1).tolist()
        for prefix, target in zip(corpus_prefix, corpus_target):
            ids = torch.tensor([prefix + target])
            logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            nlls += (-logprobs[len(prefix) - 1 :].gather(-1, ids[0, len(prefix) :, None])).squeeze(-1).tolist()
    assert stats["kl"] == pytest.approx(np.mean(kls), rel=1e-4)
    assert stats["nll"] == pytest.approx(np.mean(nlls), rel=1e-4)
    assert loss.item() == pytest.approx(np.mean(nlls) + 0.7 * np.mean(kls), rel=1e-4)


def test_a_zero_head_leaves_q_equal_to_p_and_nado_decoding_equal_to_the_base_model(tiny, tmp_path):
    path, tokenizer, model = tiny
    fresh = AuxModel.from_base(path, 1)
    packed = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], tokenizer.pad_token_id)
    r_logits = completion_r_logits(fresh, packed)
    assert torch.count_nonzero(r_logits) == 0  # R = sigmoid(0) = 0.5 everywhere
    logits = torch.randn(2, 3, r_logits.shape[-1])
    torch.testing.assert_close(target_logprobs(logits, r_logits), logits.log_softmax(-1))
    # a fresh R started at the labels' base rate is constant over the vocabulary too: q* is still p
    at_rate = completion_r_logits(AuxModel.from_base(path, 1, base_rate=0.9), packed)
    torch.testing.assert_close(target_logprobs(logits, at_rate), logits.log_softmax(-1))

    fresh.save(tmp_path / "nado")
    write_json(tmp_path / "nado" / nado.META_FILE, {"base_model": str(path), "alpha": 1.0})
    prompts = synthetic_task().train_prompts[:4]
    decodings = {
        "nucleus": Sampling(max_new_tokens=6, top_p=0.9),
        "greedy": Sampling(max_new_tokens=6, top_p=1.0, do_sample=False),
    }
    for name, sampling in decodings.items():
        base_generate(path, prompts, 3, sampling, tmp_path / f"base_{name}.jsonl", seed=0, device="cpu")
        nado.generate(tmp_path / "nado", prompts, 3, sampling, tmp_path / f"nado_{name}.jsonl", seed=0, device="cpu")
        expected = [r["token_ids"] for r in read_jsonl(tmp_path / f"base_{name}.jsonl")]
        assert [r["token_ids"] for r in read_jsonl(tmp_path / f"nado_{name}.jsonl")] == expected, name


def test_the_decoding_processor_caches_r_exactly(tiny, aux):
    """R's incremental key-value cache inside generate() gives what a full forward pass over the sequence gives."""
    _, tokenizer, _ = tiny
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad, pad, 5, 6, 7, 30, 31, 32], [8, 9, 10, 11, 12, 33, 34, 35]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    processor = NadoLogitsProcessor(aux, pad)
    for length in range(5, 9):  # the prompt, then one generated token at a time
        cached = processor.r_logits(ids[:, :length])
        full, _ = aux(ids[:, :length], mask[:, :length], (mask[:, :length].cumsum(-1) - 1).clamp(min=0))
        torch.testing.assert_close(cached, full[:, -1], rtol=1e-4, atol=1e-5)


def test_one_r_step_moves_r_towards_the_labels(tiny):
    path, tokenizer, _ = tiny
    r = AuxModel.from_base(path, 1)
    good, bad = [10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]
    samples = [
        {
            "prompt_ids": [5 + k, 6],
            "completion_ids": (good if k % 2 == 0 else bad)[k % 3 :][:3],
            "reward": float(k % 2 == 0),
        }
        for k in range(8)
    ]
    packed = pack([s["prompt_ids"] for s in samples], [s["completion_ids"] for s in samples], tokenizer.pad_token_id)
    labels = torch.tensor([s["reward"] for s in samples])

    def taken() -> torch.Tensor:  # R(x<t, x_t) at every completion token, [B, C]
        with torch.no_grad():
            return torch.sigmoid(completion_r_logits(r, packed).gather(-1, packed.completion_ids[..., None])[..., 0])

    def bce(values: torch.Tensor) -> float:
        return F.binary_cross_entropy(values, labels[:, None].expand_as(values)).item()

    before = taken()
    cfg = AuxConfig(r_layers=1, r_steps=1, r_batch_size=8, r_lr=0.05, r_warmup_steps=0)
    fit_aux(r, samples, cfg, tokenizer.pad_token_id)
    after = taken()
    assert torch.allclose(before, torch.full_like(before, 0.5))
    assert bce(after) < bce(before) - 0.01
    assert (after[labels == 1] > 0.5).all() and (after[labels == 0] < 0.5).all()


@pytest.mark.parametrize("parallel", [True, False])
def test_every_acf_job_reads_only_what_earlier_jobs_wrote(parallel):
    for n in range(1, 6):
        sched = Schedule(n, parallel)
        done, round_of = {("lm", 0)}, {("lm", 0): -1}
        for kind, i in sched.jobs():
            if kind == "sample":
                needs = [("lm", sched.sample_from(i))]
            elif kind == "r":
                needs = [("samples", sched.r_data(i))] + ([] if sched.r_init(i) is None else [("r", sched.r_init(i))])
            else:
                needs = [("lm", i - 1), ("r", sched.lm_r(i)), ("samples", sched.lm_samples(i))]
            assert all(need in done for need in needs), (n, kind, i, needs)
            if parallel and i >= 1:  # a round's jobs never read each other's outputs: they can run side by side
                assert all(round_of[need] < i for need in needs), (n, kind, i)
            made = ("samples", i) if kind == "sample" else (kind, i)
            done.add(made)
            round_of[made] = i
        assert len(sched.sample_rounds()) == n and ("lm", n) in done


def test_round_benchmarks_combine_into_one_row(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    rows = [
        "10.0\t0:00:10\t500.0\t900\t400\t450\t1.0\t2.0\t100.0\t9.0\n",
        "30.0\t0:00:30\t700.0\t800\t600\t650\t0.5\t1.0\t50.0\t20.0\n",
    ]
    paths = []
    for k, row in enumerate(rows):
        paths.append(tmp_path / f"job{k}.tsv")
        paths[-1].write_text(header + row)
    combine_benchmarks(paths, tmp_path / "all.tsv")
    out = pd.read_csv(tmp_path / "all.tsv", sep="\t").iloc[0]
    assert out["s"] == 40.0 and out["max_rss"] == 700.0 and out["cpu_time"] == 29.0 and out["h:m:s"] == "0:00:40"
    assert out["mean_load"] == pytest.approx((10 * 100 + 30 * 50) / 40)


def test_nado_decoding_raises_the_reward(tiny, tmp_path):
    path, _, _ = tiny
    task = synthetic_task()
    hparams = dict(
        num_samples=400,
        samples_per_prompt=20,
        r_probe_prompts=8,
        r_layers=1,
        r_steps=60,
        r_batch_size=32,
        r_lr=3e-2,
        r_warmup_steps=2,
        r_freeze_embeddings=False,
        sample_batch_size=200,
        alpha_grid=[1.0, 4.0],
        max_perplexity_ratio=1e6,
    )
    model_dir = nado.train(task, path, tmp_path / "nado", hparams, seed=0, device="cpu")
    stats = json.loads((tmp_path / "nado" / "train_stats.json").read_text())
    # alpha chosen on the probe prompts: each strength's q* samples outscore the base model's there, the stronger more
    tried = {t["alpha"]: t for t in stats["alpha_search"]}
    assert sorted(tried) == [0.0, 1.0, 4.0] and all(t["samples"] == 160 for t in tried.values())
    assert tried[0.0]["reward"] < tried[1.0]["reward"] < tried[4.0]["reward"], tried
    assert stats["alpha"] == 4.0 == json.loads((model_dir / nado.META_FILE).read_text())["alpha"]
    base = rewards_of(sample_records(base_generate, path, task, tmp_path / "base.jsonl"))
    steered = rewards_of(sample_records(nado.generate, model_dir, task, tmp_path / "nado.jsonl"))
    ok, detail = beats(steered, base, 0.08)
    assert base.mean() < 0.2 and ok, detail
    assert stats["bce_last"] < stats["bce_first"] and stats["heldout_perplexity"] > 1

    # R's token-level AUC on the probe prompts' samples, which it never trained on, beats every one of 1,000 shuffles
    # of the rewards: a chance of 1 in 1,000 at most that an R which learned nothing passes. 160 probe samples, so that
    # the test does not hang on the rounding of one optimizer step (60 left the AUC within 0.05 of the shuffles' max)
    train, probe = split_probe(read_jsonl(tmp_path / "nado" / "samples.jsonl"))
    assert len(probe) == 160 and not {s["prompt_id"] for s in train} & {s["prompt_id"] for s in probe}
    seq, tilt = r_scores(AuxModel.load(model_dir), tiny[2], probe, tiny[1].pad_token_id)
    rewards, groups = np.array([s["reward"] for s in probe]), [s["prompt_id"] for s in probe]
    assert stats["r_auc"] == pytest.approx(concordance(seq, rewards))
    assert stats["r_auc_token"] == pytest.approx(concordance(tilt, rewards, groups))
    shuffled = [concordance(tilt, np.random.default_rng(k).permutation(rewards), groups) for k in range(1000)]
    assert stats["r_auc_token"] > max(shuffled), (stats["r_auc_token"], max(shuffled))


def test_pick_alpha_keeps_to_the_perplexity_bound():
    tried = [
        {"alpha": 0.0, "reward": 0.5, "perplexity": 20.0},
        {"alpha": 1.0, "reward": 0.6, "perplexity": 22.0},
        {"alpha": 4.0, "reward": 0.9, "perplexity": 40.0},
    ]
    assert nado.pick_alpha(tried, 1.15) == 1.0  # 4.0 scores best but its perplexity is 2x the base model's
    assert nado.pick_alpha(tried, 2.0) == 4.0
    assert nado.pick_alpha(tried, 1.05) == 0.0  # none within the bound: the base model


def test_alpha_grid_without_probe_prompts_fails_in_one_line(tiny, tmp_path):
    with pytest.raises(SuiteError, match="alpha_grid needs r_probe_prompts"):
        nado.train(synthetic_task(), tiny[0], tmp_path, {"alpha_grid": [1.0, 2.0]}, seed=0, device="cpu")


@pytest.mark.parametrize("anchor", ["base", "policy"])
def test_acf_raises_the_reward_that_plain_fine_tuning_on_the_same_corpus_does_not(tiny, tmp_path, anchor):
    path, _, _ = tiny
    task = synthetic_task()
    rounds, steps, lr = 3, 20, 1e-2
    hparams = dict(
        q_star_anchor=anchor,
        r_probe_prompts=4,
        samples_per_prompt=5,
        num_rounds=rounds,
        samples_per_round=200,
        lm_steps_per_round=steps,
        lm_batch_size=8,
        kl_batch_size=16,
        lm_lr=lr,
        lm_warmup_steps=1,
        kl_coef=1.0,
        r_layers=1,
        r_steps=30,
        r_batch_size=32,
        r_lr=1e-2,
        r_warmup_steps=2,
        label_threshold=0.25,
        r_freeze_embeddings=False,
        sample_batch_size=200,
    )
    acf_dir = acf.train(task, path, tmp_path / "acf", hparams, seed=0, device="cpu")
    ft_dir = finetune.train(
        task,
        path,
        tmp_path / "ft",
        dict(steps=rounds * steps, batch_size=8, lr=lr, warmup_steps=1),
        seed=0,
        device="cpu",
    )
    regularised = rewards_of(sample_records(base_generate, acf_dir, task, tmp_path / "acf.jsonl"))
    plain = rewards_of(sample_records(base_generate, ft_dir, task, tmp_path / "ft.jsonl"))
    ok, detail = beats(regularised, plain, 0.08)
    assert ok, detail
    stats = json.loads((tmp_path / "acf" / "train_stats.json").read_text())
    assert [j["job"] for j in stats["jobs"]] == ["sample0", "r0", "sample1", "lm1", "sample2", "r2", "lm2", "lm3"]
    assert stats["jobs"][-1]["kl_first"] > 0 and stats["heldout_perplexity"] > 1
    assert stats["r_auc_token"] == next(j for j in stats["jobs"] if j["job"] == "r2")["r_auc_token"]
    assert any((tmp_path / "acf" / "tensorboard").iterdir())


def test_fine_tuning_learns_its_corpus(tiny, tmp_path):
    """Plain fine-tuning on one text makes the model emit that text's tokens: it learns what it is shown."""
    path, tokenizer, _ = tiny
    text = CORPUS[3]
    task = synthetic_task([text] * 40)
    shown = get_reward("token_set", token_ids=sorted(set(tokenizer(text)["input_ids"])))
    model_dir = finetune.train(
        task, path, tmp_path / "ft", dict(steps=30, batch_size=8, lr=3e-2, warmup_steps=1), seed=0, device="cpu"
    )
    tuned, base = (
        np.array(shown([], [], completion_ids=[r["token_ids"] for r in records]))
        for records in (
            sample_records(base_generate, d, task, tmp_path / f"{k}.jsonl") for k, d in enumerate([model_dir, path])
        )
    )
    ok, detail = beats(tuned, base, 0.3)
    assert ok, detail
    stats = json.loads((tmp_path / "ft" / "train_stats.json").read_text())
    assert stats["heldout_texts"] == 20 and stats["heldout_perplexity"] < stats["base_heldout_perplexity"]


def test_dry_run_schedules_acf_rounds_as_jobs(repo_copy):
    override = repo_copy / "override.yaml"
    override.write_text(yaml.safe_dump({"methods": ["base", "acf", "nado", "finetune"], "tasks": ["toxicity"]}))
    result = snakemake(repo_copy, "-n", "all", "--configfile", "workflow/config/test.yaml", str(override))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    run = "results/test/toxicity/acf/seed0"
    for path in [
        f"{run}/rounds/samples0.jsonl",
        f"{run}/rounds/r0",
        f"{run}/rounds/lm1",
        f"{run}/rounds/r2",
        f"{run}/rounds/lm3",
        f"{run}/model.json",
        f"{run}/train.benchmark.tsv",
        "results/test/toxicity/nado/seed0/model.json",
        "results/test/toxicity/finetune/seed0/model.json",
    ]:
        assert path in out, path
    counts = {rule: out.count(f"rule {rule}:") for rule in ("acf_sample", "acf_train_r", "acf_train_lm", "acf_finish")}
    assert counts == {"acf_sample": 3, "acf_train_r": 2, "acf_train_lm": 3, "acf_finish": 1}, counts
    assert f"{run}/rounds/r1" not in out  # R_1 is R_0 in the parallel scheme
