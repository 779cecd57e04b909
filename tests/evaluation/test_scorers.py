import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from core.errors import SuiteError
from evaluation.repetition import rep_n, repeat_w, simctg_counts, uniq
from evaluation.scorers import get_scorer


def test_vader_maps_polarity_to_a_probability_of_positive():
    score = get_scorer("vader")
    pos, neg, neutral = score(["what a wonderful, lovely day", "this is terrible and awful", "the table is brown"])
    assert pos > 0.8 and neg < 0.2 and neutral == pytest.approx(0.5)


@pytest.fixture
def tiny_classifier(tmp_path, tiny):
    _, tokenizer, _ = tiny
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    tokenizer.save_pretrained(tmp_path / "clf")
    return str(tmp_path / "clf")


def test_hf_classifier_scores_the_named_label_and_its_flip(tiny_classifier):
    texts = ["the cat sat", "a quick brown fox jumps over"]
    pos = get_scorer("hf_classifier", model=tiny_classifier, label="positive")(texts)
    neg = get_scorer("hf_classifier", model=tiny_classifier, label="NEGATIVE")(texts)
    flipped = get_scorer("hf_classifier", model=tiny_classifier, label="POSITIVE", flip=True)(texts)
    assert all(0 < p < 1 for p in pos)
    assert pos[0] + neg[0] == pytest.approx(1, abs=1e-5)
    assert flipped == pytest.approx(neg, abs=1e-5)


def test_hf_classifier_without_the_label_is_a_one_line_error(tiny_classifier):
    with pytest.raises(SuiteError, match="has no label 'joy' \\(its labels: negative, positive\\)"):
        get_scorer("hf_classifier", model=tiny_classifier, label="joy")


def test_repetition_metrics_on_hand_made_sequences():
    assert rep_n([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)  # (1,2),(2,1) unique of 5 bigrams
    assert rep_n([1, 2, 3, 4], 2) == 0.0 and rep_n([1], 4) == 0.0
    assert repeat_w([1, 2, 1, 3], w=16) == pytest.approx(1 / 4)
    assert repeat_w([1, 2, 1, 3], w=1) == 0.0  # the repeat is two back
    assert repeat_w([5, 6], w=16, context=[5]) == pytest.approx(1 / 2)
    assert uniq([[1, 2], [2, 3]]) == 3
    assert simctg_counts("a b a b c".split(), 2) == (2, 3)  # ab ba ab; SimCTG leaves out the last, bc
    assert simctg_counts(["a", "b"], 2) == (0, 0)
