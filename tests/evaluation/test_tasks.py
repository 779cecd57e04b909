"""The sentiment and repetition columns: prompt building, typing, rewards and evaluators on hand-made inputs."""

import math

import pandas as pd
import pytest

from core.data import Prompt
from core.errors import SuiteError
from core.sampling import eval_sampling
from evaluation import repetition, sentiment
from evaluation.report import make_table
from evaluation.tasks import detokenize, split_articles, wikitext_articles, wikitext_corpus, wikitext_prefixes
from methods.common.rewards import get_reward

WIKI = "\n".join(
    [
        " = First article = ",
        " The lobster is a species of crustacean from the eastern Atlantic Ocean , and it may grow to 60 cm ( 24 in ) . ",
        " = = Section = = ",
        " Short paragraph . ",
        " = Second article = ",
        " ",
        " One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen . ",
    ]
)


def test_detokenize_undoes_wikitext_layout():
    assert detokenize("the M @-@ 82 , a road ( 24 in ) . It is 0 @.@ 7 km") == "the M-82, a road (24 in). It is 0.7 km"
    assert detokenize('he said " hello " to them .') == 'he said "hello" to them.'


def test_wikitext_prefixes_come_from_long_enough_paragraphs_and_split_by_article(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(WIKI)
    articles = wikitext_articles(path)
    assert [len(a) for a in articles] == [2, 1]  # headings are not paragraphs
    train, evals = split_articles(articles, 0.5)
    assert train == articles[:1] and evals == articles[1:]
    prompts = wikitext_prefixes(articles, prefix_words=5, min_continuation_words=8, source=path)
    assert [p.text for p in prompts] == ["The lobster is a species", "One two three four five"]
    assert prompts[1].meta["continuation"].startswith("six seven")
    with pytest.raises(SuiteError, match="no usable prefix"):
        wikitext_prefixes(articles, prefix_words=30, min_continuation_words=30, source=path)


def test_wikitext_corpus_scores_paragraphs_by_their_diversity(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(" = A = \n a a a a a a a a \n b c d e f g h i \n = B = \n held out text here \n")
    corpus = wikitext_corpus(path, eval_fraction=0.5)
    assert [t.text for t in corpus] == ["a a a a a a a a", "b c d e f g h i"]
    assert (
        corpus[0].score == pytest.approx(1 / 7 * 1 / 6 * 1 / 5) and corpus[1].score == 1.0
    )  # 1 unique n-gram of 7, 6, 5


def test_prompt_types_follow_the_sentiment_of_continuations():
    share = [0.0, 1.0, 0.5, 0.25, 0.75, 0.0, 1.0, 0.5, 0.4, 0.6]
    mean = [0.10, 0.90, 0.50, 0.30, 0.70, 0.05, 0.95, 0.55, 0.45, 0.65]
    types = sentiment.assign_prompt_types(share, mean, fraction=0.2)
    assert [i for i, t in enumerate(types) if t == "negative"] == [0, 5]
    assert [i for i, t in enumerate(types) if t == "positive"] == [1, 6]
    assert sorted(i for i, t in enumerate(types) if t == "neutral") == [2, 7]


def record(pid, sample, text, ids=(1, 2, 3), prompt="p "):
    return {"prompt_id": pid, "prompt": prompt, "sample": sample, "text": text, "token_ids": list(ids)}


def test_sentiment_positive_rate_per_prompt_type_scores_prompt_plus_completion():
    prompts = {
        "n1": Prompt("n1", "bad", {"sentiment_type": "negative"}),
        "n2": Prompt("n2", "bad", {"sentiment_type": "negative"}),
        "u1": Prompt("u1", "meh", {"sentiment_type": "neutral"}),
    }
    records = [
        record("n1", 0, "good"),
        record("n1", 1, "awful"),
        record("n2", 0, "awful"),
        record("n2", 1, "awful"),
        record("u1", 0, "good"),
        record("u1", 1, "good"),
    ]
    seen = []

    def judge(texts):
        seen.extend(texts)
        return [0.9 if t.endswith("good") else 0.1 for t in texts]

    metrics, table = sentiment.evaluate(
        records, judge, [10.0, 20.0, 30.0, 40.0, 50.0, 60.0], prompts, "sentiment-positive"
    )
    assert seen[0] == "p good"  # the judge reads prompt + completion
    assert metrics["positive_rate_negative"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2 prompts
    assert metrics["positive_rate_neutral"] == pytest.approx(1.0)
    assert metrics["perplexity"] == pytest.approx(35.0)
    assert metrics["num_prompts_negative"] == 2 and metrics["num_samples"] == 6
    assert sentiment.metrics("sentiment-negative")[:2] == ["positive_rate_positive", "positive_rate_neutral"]


def test_repetition_metrics_per_decoding_word_and_token_level():
    records = [
        {**record("a", 0, "x y x y x y", ids=[5, 6, 5, 6, 5, 6]), "decoding": "greedy"},
        {**record("a", 0, "x y z w", ids=[5, 6, 7, 8]), "decoding": "sampling"},
        {**record("a", 1, "x x x x", ids=[9, 9, 9, 9]), "decoding": "sampling"},
    ]
    metrics, _ = repetition.evaluate(records, None, [2.0, 3.0, 5.0], {}, "repetition")
    # SimCTG pools n-grams over completions and stops one short of each text's end. Greedy "x y x y x y":
    # bigrams xy yx xy yx (2 unique of 4), trigrams xyx yxy xyx (2 of 3), 4-grams xyxy yxyx (2 of 2)
    assert metrics["rep_2_greedy"] == pytest.approx(1 - 2 / 4)
    assert metrics["rep_3_greedy"] == pytest.approx(1 - 2 / 3)
    assert metrics["rep_4_greedy"] == pytest.approx(0.0)
    assert metrics["diversity_greedy"] == pytest.approx(2 / 4 * 2 / 3 * 2 / 2)
    # the training reward counts every n-gram of the one completion: 2 of 5 bigrams, 2 of 4 trigrams, 2 of 3
    assert metrics["reward_greedy"] == pytest.approx(2 / 5 * 2 / 4 * 2 / 3)
    assert metrics["seq_rep_4_greedy"] == pytest.approx(1 - 2 / 3)
    assert metrics["repeat_16_greedy"] == pytest.approx(4 / 6)
    assert metrics["uniq_greedy"] == 2 and metrics["uniq_sampling"] == 5
    # sampled "x y z w" (xy yz: 2 unique of 2) and "x x x x" (xx xx: 1 of 2), pooled: 1 - 3 / 4, not the mean 1/4
    assert metrics["rep_2_sampling"] == pytest.approx(1 - (2 + 1) / (2 + 2))
    assert metrics["perplexity_sampling"] == pytest.approx(4.0)
    assert metrics["ci95"]["uniq_greedy"] is None


def test_rewards_of_the_new_tasks():
    positive = get_reward("sentiment", wanted="positive")
    negative = get_reward("sentiment", wanted="negative")
    texts = ["What a wonderful, lovely day.", "This is horrible and sad."]
    p, n = positive([""] * 2, texts), negative([""] * 2, texts)
    assert p[0] > 0.75 and p[1] < 0.25 and n == pytest.approx([1 - x for x in p])
    with pytest.raises(SuiteError, match="wanted"):
        get_reward("sentiment", wanted="neutral")
    diversity = get_reward("diversity")
    assert diversity([""] * 2, ["a b c d e", "a a a a a"]) == pytest.approx([1.0, 1 / 4 * 1 / 3 * 1 / 2])


def test_eval_sampling_gives_one_fixed_length_greedy_continuation():
    settings = {"max_new_tokens": 64, "batch_size": 8, "top_p": 0.9, "num_samples": 4, "fixed_length": True}
    greedy, n = eval_sampling(settings, "greedy")
    assert n == 1 and not greedy.do_sample and greedy.min_new_tokens == 64
    sampled, n = eval_sampling({**settings, "fixed_length": False}, "sampling")
    assert n == 4 and sampled.do_sample and sampled.top_p == 0.9 and sampled.min_new_tokens == 0


def test_table_prints_percentages_missing_intervals_and_labelled_paper_rows(tmp_path):
    row = {
        "positive_rate_negative": 0.125,
        "positive_rate_neutral": 0.5,
        "perplexity": 12.0,
        "dist_1": 0.5,
        "dist_2": 0.8,
        "dist_3": 0.9,
        "num_seeds": 1,
        "seed_std": {},
        "num_prompts": 4,
        "ci95": {
            "positive_rate_negative": [0.0, 0.25],
            "positive_rate_neutral": None,
            "perplexity": [10.0, 14.0],
            "dist_1": [0.4, 0.6],
            "dist_2": [0.7, 0.9],
            "dist_3": [0.8, 1.0],
        },
        "cost": {"train_seconds": 60.0, "generate_seconds": 120.0, "peak_rss_mb": 1024.0},
    }
    task = "sentiment-positive"
    frame = make_table(
        [("Quark", row)],
        sentiment.metrics(task),
        tmp_path / "t",
        sentiment.LABELS,
        sentiment.PERCENT,
        (sentiment.PAPER_SOURCE, sentiment.paper_rows(task)),
    )
    assert frame.iloc[0]["% positive, negative prompts"] == "12.50 [0.00, 25.00]"
    assert frame.iloc[0]["% positive, neutral prompts"] == "50.00"
    md = (tmp_path / "t.md").read_text()
    assert "Published numbers, for reference only" in md and "46.55" in md and "95.00" in md
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv["method"]) == ["Quark"]  # paper rows never enter the CSV
    assert math.isnan(csv.loc[0, "positive_rate_neutral_ci_low"])
