"""The paper profile: fetch_paper_data.py writes the files paper.yaml reads, a dry run schedules every method on every
task it declares without the network, and repetition trains on WikiText-103's train split and evaluates on its test."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import pytest
import yaml

from evaluation.tasks import TASKS, same_file, wikitext_articles, wikitext_corpus, wikitext_splits
from tests.conftest import ROOT, snakemake

PAPER = "workflow/config/paper.yaml"


def paragraph(tag: str, n: int, words: int = 70) -> str:
    """A paragraph whose words name its split, article and place, so a prefix tells where it came from."""
    return " ".join(f"{tag}{n}w{i}" for i in range(words))


def hub_wikitext(tag: str, articles: int) -> list[dict]:
    """Rows as the Hub's wikitext-103-raw-v1 gives them: the raw file's lines, blank lines as ''."""
    rows = []
    for a in range(articles):
        rows += [{"text": ""}, {"text": f" = {tag.title()} article {a} = \n"}, {"text": ""}]
        rows += [{"text": f" {paragraph(tag, 2 * a)} \n"}, {"text": ""}, {"text": f" = = Section {a} = = \n"}]
        rows += [{"text": ""}, {"text": f" {paragraph(tag, 2 * a + 1)} \n"}, {"text": " short line . \n"}]
    return rows


HUB_WIKITEXT = {"train": hub_wikitext("train", 4), "test": hub_wikitext("test", 3)}
# 12 RealToxicityPrompts rows: 7 non-toxic prompts, 4 toxic, 1 unscored
HUB_RTP = [
    {
        "prompt": {"text": f"Prompt number {i} says", "toxicity": tox},
        "continuation": {"text": f" more {i}.", "toxicity": 0.1},
    }
    for i, tox in enumerate([0.1, 0.9, 0.2, 0.3, 0.8, None, 0.05, 0.6, 0.4, 0.7, 0.15, 0.45])
]


def fake_load_dataset(name: str, config: str | None = None, split: str | None = None):
    if name == "allenai/real-toxicity-prompts" and split == "train":
        return [dict(r) for r in HUB_RTP]
    if (name, config) == ("Salesforce/wikitext", "wikitext-103-raw-v1"):
        return HUB_WIKITEXT[split]
    raise AssertionError(f"unexpected dataset {name} {config} {split}")


@pytest.fixture
def paper_repo(repo_copy, monkeypatch):
    """A repository copy whose data/paper/ holds what fetch_paper_data.py writes from (stand-in) Hub datasets."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = importlib.util.spec_from_file_location("fetch_paper_data", ROOT / "workflow/scripts/fetch_paper_data.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    monkeypatch.setattr(
        sys, "argv", ["fetch_paper_data.py", "--out", str(repo_copy / "data/paper"), "--test-size", "4"]
    )
    fetch.main()
    # the dry run must not need the network: any Hub or HTTP(S) request fails
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    return repo_copy


def paper_config() -> dict:
    return yaml.safe_load((ROOT / PAPER).read_text())


def test_fetch_writes_the_files_the_paper_profile_reads(paper_repo):
    data = paper_config()["data"]
    paths = {data[t][k] for t in data for k in ("train_prompts", "eval_prompts")}
    paths.add(paper_config()["sentiment_prompts"]["candidates"])
    assert sorted(p.name for p in (paper_repo / "data/paper").iterdir()) == sorted(p.rsplit("/", 1)[1] for p in paths)

    # WikiText: the raw file's layout back (blank lines as ' '), which wikitext_articles reads as articles
    test = (paper_repo / data["repetition"]["eval_prompts"]).read_text()
    assert test == "".join(r["text"] or " \n" for r in HUB_WIKITEXT["test"])
    articles = wikitext_articles(paper_repo / data["repetition"]["eval_prompts"])
    assert [len(a) for a in articles] == [3, 3, 3]
    assert articles[1][:2] == [paragraph("test", 2), paragraph("test", 3)]

    # RTP: 4 non-toxic test prompts; every other row is a train prompt
    test_rows = [json.loads(x) for x in (paper_repo / data["toxicity"]["eval_prompts"]).read_text().splitlines()]
    train_rows = [json.loads(x) for x in (paper_repo / data["toxicity"]["train_prompts"]).read_text().splitlines()]
    assert len(test_rows) == 4 and all(r["prompt"]["toxicity"] < 0.5 for r in test_rows)
    assert sorted(r["id"] for r in test_rows + train_rows) == sorted(f"rtp-{i}" for i in range(len(HUB_RTP)))


def test_paper_profile_lists_every_method_variant_and_task():
    config = paper_config()
    rows = set()
    for path in (ROOT / "methods").glob("*/method.yaml"):
        spec = yaml.safe_load(path.read_text())
        rows |= {path.parent.name} | {f"{path.parent.name}-{v}" for v in spec.get("variants") or {}}
        assert "paper" in (spec.get("hparams") or {}) or not spec.get("hparams"), path
    assert set(config["methods"]) == rows
    assert config["tasks"] == list(TASKS)


def leaves(tree: dict, prefix: tuple = ()) -> set[tuple]:
    out = set()
    for key, value in tree.items():
        out |= leaves(value, (*prefix, key)) if isinstance(value, dict) and value else {(*prefix, key)}
    return out


def test_paper_profile_inherits_nothing_from_the_mini_profile():
    """paper.yaml is merged over config.yaml: a key only the mini profile sets would leak into paper runs. A mini
    leaf is overridden when paper.yaml sets it, a section above it, or a section in its place."""
    paper = leaves(paper_config())
    for key in leaves(yaml.safe_load((ROOT / "workflow/config/config.yaml").read_text())):
        assert any(key[: len(k)] == k or k[: len(key)] == key for k in paper), ".".join(key)


def test_paper_dry_run_schedules_every_method_on_every_task_it_declares(paper_repo):
    config = paper_config()
    declared = {p.parent.name: yaml.safe_load(p.read_text())["tasks"] for p in (ROOT / "methods").glob("*/method.yaml")}
    result = snakemake(paper_repo, "-n", "all", "--configfile", PAPER)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # (task, row) pairs: each row on each task its method declares, and on no other
    expected = {(t, row) for row in config["methods"] for t in config["tasks"] if t in declared[row.partition("-")[0]]}
    assert set(re.findall(r"results/paper/([a-z-]+)/([a-z_-]+)/metrics\.json", out)) == expected
    trained = set(re.findall(r"results/paper/([a-z-]+)/([a-z_]+)/seed0/model\.json", out))
    assert trained == {(t, row.partition("-")[0]) for t, row in expected}
    assert ("repetition", "dexperts") not in trained and ("toxicity", "dexperts") in trained
    assert "results/paper/data/sentiment_types.jsonl" in out and "results/mini/" not in out


def test_paper_repetition_trains_on_the_train_split_and_evaluates_on_the_test_split(paper_repo):
    targets = [f"results/paper/data/repetition/{name}.jsonl" for name in ("train", "eval", "corpus")]
    result = snakemake(paper_repo, *targets, "--configfile", PAPER)
    assert result.returncode == 0, result.stdout + result.stderr
    train, evals, corpus = ([json.loads(x) for x in (paper_repo / path).read_text().splitlines()] for path in targets)
    # every paragraph of 64+ words gives a prefix: 8 from the 4 train articles, 6 from the 3 test articles
    assert len(train) == 8 and all(r["prompt"].startswith("train") for r in train)
    assert len(evals) == 6 and all(r["prompt"].startswith("test") for r in evals)
    assert sorted(r["prompt"].split()[0] for r in evals) == sorted(f"test{n}w0" for n in range(6))
    # the corpus is the whole train split, nothing held out
    assert len(corpus) == 12 and all(r["text"].startswith(("train", "short")) for r in corpus)


def test_one_wikitext_file_is_split_by_article_and_two_are_used_whole(tmp_path, monkeypatch):
    one = tmp_path / "valid.txt"
    one.write_text("".join(r["text"] or " \n" for r in HUB_WIKITEXT["train"]))
    other = tmp_path / "test.txt"
    other.write_text("".join(r["text"] or " \n" for r in HUB_WIKITEXT["test"]))
    train, evals = wikitext_splits(one, one, 0.25)
    assert len(train) == 3 and evals == wikitext_articles(one)[3:]
    train, evals = wikitext_splits(one, other)
    assert train == wikitext_articles(one) and evals == wikitext_articles(other)
    # the corpus holds out the eval articles only when they come from its own file (however the path is spelled)
    monkeypatch.chdir(tmp_path)
    assert same_file(one, "valid.txt") and not same_file(one, other)
    assert len(wikitext_corpus(one, 0.25)) == 9
    assert len(wikitext_corpus(one, 0.25, holds_out=False)) == 12
