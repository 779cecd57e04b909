"""The shared base samples: one draw that every method reading them takes a prefix of, and the fallback draw."""

import json
from dataclasses import replace

import pytest
import torch

from core.data import Prompt, Text, read_jsonl
from core.errors import SuiteError
from core.sampling import Sampling
from methods.common.base_samples import BaseSamples, Spec, base_samples, draw, split_prompts
from methods.common.rewards import get_reward
from methods.common.task import Task
from methods.common.trainer import run_identity
from methods.dt import dt
from methods.nado import nado
from tests.conftest import CORPUS

SPEC = Spec(prompts=10, samples_per_prompt=3, probe_prompts=4, probe_samples_per_prompt=2, batch_size=32)


def task_of(reward=None) -> Task:
    prompts = [Prompt(f"p{i}", " ".join(t.split()[: 3 + i % 4]), {}) for i, t in enumerate(CORPUS)]
    reward = reward or get_reward("token_set", token_ids=list(range(40, 70)))
    return Task("synthetic", prompts, reward, Sampling(max_new_tokens=6), [Text(t, None) for t in CORPUS])


def test_the_probe_split_is_fixed_by_the_seed_and_disjoint_from_training():
    probe, rest = split_prompts(20, 4, seed=3)
    assert probe == sorted(probe) and len(probe) == 4 and sorted(probe + rest) == list(range(20))
    assert split_prompts(20, 4, seed=3) == (probe, rest) and split_prompts(20, 4, seed=4) != (probe, rest)
    assert sorted(split_prompts(20, 0, seed=3)[1]) == list(range(20))
    with pytest.raises(SuiteError, match="leaves none of the 20 training prompts"):
        split_prompts(20, 20, seed=0)


def test_every_ask_is_a_prefix_of_one_draw(tiny):
    _, tokenizer, model = tiny
    task = task_of()
    before = torch.get_rng_state()
    shared = draw(model, tokenizer, task, SPEC, seed=0, desc="test")
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is left as it was
    assert len(shared.rows) == 4 * 2 + 10 * 3 and len(shared.order) == 10
    task.base_samples = shared
    settings = dict(probe_prompts=4, probe_samples_per_prompt=2, batch_size=32)
    # Quark's round 0 (one per prompt), NADO's (three per prompt): the first is the first draw of the second's prompts
    once, probe, stats = base_samples(task, model, tokenizer, 6, 1, 0, "quark", **settings)
    thrice, probe3, _ = base_samples(task, model, tokenizer, 18, 3, 0, "nado", **settings)
    assert stats["base_samples"].startswith("shared") and len(once) == 6 and len(thrice) == 18
    assert [r["prompt_index"] for r in once] == shared.order[:6] and all(r["draw"] == 0 for r in once)
    assert once == [r for r in thrice if r["draw"] == 0] and probe == probe3 and len(probe) == 8
    assert all(r["probe"] for r in probe) and not {r["prompt_index"] for r in probe} & set(shared.order)
    # a prompt's draws differ from one another: they are samples, not copies
    first = [r["completion_ids"] for r in thrice if r["prompt_index"] == shared.order[0]]
    assert len({tuple(c) for c in first}) > 1
    # asks the set does not hold are drawn afresh, and say why
    for ask, why in [
        (dict(n=8, per_prompt=4), "4 samples per prompt asked, 3 held"),
        (dict(n=33, per_prompt=3), "11 training prompts asked, 10 held"),
        (dict(n=6, per_prompt=1, max_prompt_tokens=32), "max_prompt_tokens 32 asked, 64 held"),
    ]:
        rows, _, stats = base_samples(task, model, tokenizer, seed=0, desc="other", **{**settings, **ask})
        assert stats["base_samples"] == f"drawn by this job ({why})" and len(rows) == ask["n"]
    _, _, stats = base_samples(task, model, tokenizer, 6, 1, 1, "seed 1", **settings)
    assert stats["base_samples"] == "drawn by this job (seed 0 held)"


def test_the_shared_set_reads_back_as_written(tiny, tmp_path):
    _, tokenizer, model = tiny
    half = get_reward("token_set", token_ids=list(range(40, 70)))
    calls = iter(range(10_000))

    def sometimes(prompts, completions, **kwargs):  # every other sample unscored: kept in the set, and counted
        return [None if next(calls) % 2 else r for r in half(prompts, completions, **kwargs)]

    shared = draw(model, tokenizer, task_of(sometimes), SPEC, seed=0, desc="test")
    shared.write(tmp_path)
    back = BaseSamples.read(tmp_path / "samples.jsonl")
    assert back.rows == shared.rows and back.spec == SPEC and back.seed == 0
    assert back.stats["dropped_unscored"] == sum(r["reward"] is None for r in shared.rows) == len(shared.rows) // 2
    assert back.source == str(tmp_path / "samples.jsonl")


def test_dt_and_nado_learn_from_the_same_shared_samples(tiny, tmp_path):
    path, tokenizer, model = tiny
    task = task_of()
    task.base_samples = draw(
        model, tokenizer, task, Spec(prompts=12, samples_per_prompt=4, probe_prompts=4, max_prompt_tokens=32), 0, "t"
    )
    common = dict(samples_per_prompt=4, max_prompt_tokens=32)
    dt.train(
        task, path, tmp_path / "dt", dict(num_samples=40, steps=1, probe_prompts=4, **common), seed=0, device="cpu"
    )
    nado_hparams = dict(num_samples=40, r_probe_prompts=4, r_layers=1, r_steps=1, r_batch_size=4, **common)
    nado.train(task, path, tmp_path / "nado", nado_hparams, seed=0, device="cpu")
    dt_stats = json.loads((tmp_path / "dt" / "train_stats.json").read_text())
    nado_stats = json.loads((tmp_path / "nado" / "train_stats.json").read_text())
    assert dt_stats["base_samples"] == nado_stats["base_samples"] == "shared: in memory", (
        dt_stats,
        nado_stats,
    )
    nado_samples = read_jsonl(tmp_path / "nado" / "samples.jsonl")
    shared_train, shared_probe = task.base_samples.select(Spec(prompts=10, samples_per_prompt=4, probe_prompts=4))
    expected = [r for r in shared_probe + shared_train if r["reward"] is not None]
    assert [s["completion_ids"] for s in nado_samples] == [r["completion_ids"] for r in expected]
    assert dt_stats["sampled"] == 40 and dt_stats["probe_samples"] == 16


def test_a_runs_identity_holds_its_shared_set(tiny):
    """A resumed run must not mix a redrawn shared set with the pool of the old one: the set is in its identity."""
    _, tokenizer, model = tiny
    task, cfg = task_of(), dt.DTConfig()
    assert "base_samples_sha256" not in run_identity(cfg, task, 0)
    task.base_samples = draw(model, tokenizer, task, SPEC, seed=0, desc="test")
    first = run_identity(cfg, task, 0)
    task.base_samples = draw(model, tokenizer, task, replace(SPEC, samples_per_prompt=2), seed=0, desc="test")
    assert run_identity(cfg, task, 0)["base_samples_sha256"] != first["base_samples_sha256"]
