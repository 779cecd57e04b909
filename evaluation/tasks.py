"""The task columns: each task's evaluator, and how its prompts and labelled corpus are built from shipped data.

toxicity            RealToxicityPrompts prompts; corpus: its prompts and continuations, scored 1 - Perspective toxicity
sentiment-positive  OpenWebText prompts (RTP's prompt sentences); unlearn negativity; eval on negative + neutral prompts
sentiment-negative  the same prompts; unlearn positivity; eval on positive + neutral prompts
repetition          WikiText prefixes; unlearn degenerate repetition; corpus: WikiText paragraphs
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.data import Prompt, Text, iter_jsonl
from core.errors import SuiteError
from evaluation.repetition import diversity


@dataclass(frozen=True)
class TaskSpec:
    evaluator: str  # module under evaluation/ with METRICS, PLOTTED and evaluate()
    prompts: str  # how prepare_prompts reads the task's files: "rtp", "sentiment" or "wikitext"
    corpus: Callable[..., list[Text]]
    needs_scorer: bool = True  # repetition is measured on the text itself


EVAL_FRACTION = 0.25  # repetition: the share of WikiText articles held out for evaluation when one file holds both


def rtp_corpus(path: str | Path, **_) -> list[Text]:
    """Prompts and continuations of a RealToxicityPrompts file, scored 1 - their Perspective toxicity."""
    texts = []
    for lineno, row in iter_jsonl(path):
        for part in ("prompt", "continuation"):
            item = row.get(part) if isinstance(row, dict) else None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise SuiteError(f"{path}:{lineno}: no '{part}.text' (the corpus needs RealToxicityPrompts rows)")
            tox = item.get("toxicity")
            texts.append(Text(item["text"].strip(), None if tox is None else 1.0 - float(tox)))
    return [t for t in texts if t.text]


def sentiment_corpus(path: str | Path, judge: Callable[[list[str]], list[float | None]], wanted: str) -> list[Text]:
    """RTP's OpenWebText sentences, scored P(wanted sentiment) by the task's judge."""
    texts = [t.text for t in rtp_corpus(path)]
    scores = judge(texts)
    flip = wanted == "negative"
    return [Text(t, None if s is None else (1.0 - s if flip else s)) for t, s in zip(texts, scores)]


# --- WikiText -----------------------------------------------------------------------------------------------------

_DETOKENIZE = [
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" , ", ", "),
    (" . ", ". "),
    (" ; ", "; "),
    (" : ", ": "),
    (" 's ", "'s "),
    (" n't ", "n't "),
    ("( ", "("),
    (" )", ")"),
]


def detokenize(text: str) -> str:
    """Undo WikiText's tokenised layout (spaced punctuation, @-@ joins) so the base model sees ordinary text."""
    text = f" {text.strip()} "
    for old, new in _DETOKENIZE:
        text = text.replace(old, new)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    return re.sub(r" ([?!.,])(\s|$)", r"\1\2", text).strip()


def wikitext_articles(path: str | Path) -> list[list[str]]:
    """Articles as lists of paragraphs (WikiText layout: ' = Title = ' headings, one paragraph per line)."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"WikiText file not found: {path}")
    articles: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^ = [^=].* = $", line):
            articles.append([])
        elif line.strip() and not line.strip().startswith("=") and articles:
            articles[-1].append(line.strip())
    if not articles:
        raise SuiteError(f"{path}: no WikiText articles (expected ' = Title = ' headings)")
    return articles


def split_articles(articles: list[list[str]], eval_fraction: float) -> tuple[list[list[str]], list[list[str]]]:
    """The last `eval_fraction` of the articles are for evaluation; training never sees them."""
    n_eval = max(1, round(len(articles) * eval_fraction))
    return articles[:-n_eval], articles[-n_eval:]


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file, however they are spelled: a task whose eval prompts come from its training
    file holds part of that file out of training."""
    return Path(a).resolve() == Path(b).resolve()


def wikitext_train_articles(
    train_path: str | Path, holds_out: bool, eval_fraction: float = EVAL_FRACTION
) -> list[list[str]]:
    """The articles training may see: the whole file, or all but its last `eval_fraction` where those evaluate."""
    articles = wikitext_articles(train_path)
    return split_articles(articles, eval_fraction)[0] if holds_out else articles


def wikitext_splits(
    train_path: str | Path, eval_path: str | Path, eval_fraction: float = EVAL_FRACTION
) -> tuple[list[list[str]], list[list[str]]]:
    """Training and evaluation articles. Two files (WikiText-103's train and test splits) are each used whole; one
    file (the shipped validation split) is split, its last `eval_fraction` of articles held out for evaluation."""
    if not same_file(train_path, eval_path):
        return wikitext_articles(train_path), wikitext_articles(eval_path)
    return split_articles(wikitext_articles(train_path), eval_fraction)


def wikitext_prefixes(
    articles: list[list[str]], prefix_words: int, min_continuation_words: int, source: str | Path
) -> list[Prompt]:
    """A prefix of `prefix_words` words from each paragraph long enough to hold a human continuation after it."""
    prompts = []
    for a, paragraphs in enumerate(articles):
        for p, paragraph in enumerate(paragraphs):
            words = paragraph.split()
            prefix = " ".join(words[:prefix_words])
            if len(words) < prefix_words + min_continuation_words or "<unk>" in prefix:
                continue
            continuation = " ".join(words[prefix_words : prefix_words + 2 * min_continuation_words])
            prompts.append(Prompt(f"wiki-{a}-{p}", detokenize(prefix), {"continuation": detokenize(continuation)}))
    if not prompts:
        raise SuiteError(f"{source}: no usable prefix (no paragraph has {prefix_words}+{min_continuation_words} words)")
    return prompts


def wikitext_corpus(path: str | Path, eval_fraction: float = EVAL_FRACTION, holds_out: bool = True, **_) -> list[Text]:
    """Paragraphs of the training articles, scored by their own diversity (the repetition reward). The evaluation
    articles are left out where the eval prompts come from the same file (`holds_out`)."""
    train = wikitext_train_articles(path, holds_out, eval_fraction)
    texts = [detokenize(p) for article in train for p in article]
    return [Text(t, diversity(t.split())) for t in texts if t]


TASKS = {
    "toxicity": TaskSpec("evaluation.toxicity", "rtp", rtp_corpus),
    "sentiment-positive": TaskSpec("evaluation.sentiment", "sentiment", sentiment_corpus),
    "sentiment-negative": TaskSpec("evaluation.sentiment", "sentiment", sentiment_corpus),
    "repetition": TaskSpec("evaluation.repetition", "wikitext", wikitext_corpus, needs_scorer=False),
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise SuiteError(f"unknown task '{task}' (known: {', '.join(TASKS)})")
    return TASKS[task]


def wanted_sentiment(task: str) -> str:
    """'sentiment-positive' unlearns negativity: positive is wanted."""
    return task.rsplit("-", 1)[1]
