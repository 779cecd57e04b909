"""Rebuild the MiniLM toxicity head and compare it with alt-profanity-check on held-out RealToxicityPrompts texts.

Every head variant is scored by grouped, stratified k-fold cross-validation on the train file (a row's prompt and
continuation stay in one fold); the variant with the best cross-validated ROC AUC is refitted on all train texts and
shipped. The dev file is only ever predicted, never fitted on: nothing (weights, variant, threshold) is chosen on it.
"""

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

sys.path.insert(0, snakemake.scriptdir)  # noqa: F821
from _job import main  # noqa: E402

from evaluation.scorers import get_scorer  # noqa: E402
from evaluation.toxicity_head import (  # noqa: E402
    HeadConfig,
    MiniLMStates,
    TokenStates,
    encode_texts,
    fit_head,
    predict,
    save_head,
)
from core.config import from_dict  # noqa: E402
from core.data import iter_jsonl  # noqa: E402
from core.errors import SuiteError  # noqa: E402

TOXIC = 0.5  # Perspective toxicity above which a text counts as toxic (RealToxicityPrompts' convention)


def read_labelled(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Prompt and continuation texts of a RealToxicityPrompts file with a Perspective toxicity, and their row."""
    texts, scores, rows = [], [], []
    for lineno, row in iter_jsonl(path):
        for part in ("prompt", "continuation"):
            item = row.get(part) if isinstance(row, dict) else None
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise SuiteError(f"{path}:{lineno}: no '{part}.text' (expected RealToxicityPrompts rows)")
            if item.get("toxicity") is not None and item["text"].strip():
                texts.append(item["text"].strip())
                scores.append(float(item["toxicity"]))
                rows.append(lineno)
    if not texts:
        raise SuiteError(f"{path}: no text with a Perspective toxicity")
    return texts, np.array(scores), np.array(rows)


def agreement(pred: np.ndarray, perspective: np.ndarray) -> dict:
    """ROC AUC against Perspective toxicity > 0.5, Pearson r with Perspective's score, and the share called toxic."""
    return {
        "roc_auc": float(roc_auc_score(perspective > TOXIC, pred)),
        "pearson": float(pearsonr(pred, perspective)[0]),
        "share_toxic": float(np.mean(pred > TOXIC)),
    }


def markdown(scorers: pd.DataFrame, variants: pd.DataFrame, info: dict) -> str:
    return "\n".join(
        [
            "# Offline toxicity scorers against Perspective",
            "",
            f"Held-out texts: `{info['dev']}` ({info['n_dev']} prompts and continuations with a Perspective score, "
            f"{info['dev_toxic']:.1%} of them above {TOXIC}); never fitted on. ROC AUC: Perspective toxicity > {TOXIC} as "
            "the label. Pearson: with Perspective's score. Share > 0.5: the share of texts the scorer calls toxic, to "
            "set against Perspective's share above. Throughput: the whole scorer on the dev texts, "
            f"batches of 64, {info['threads']} CPU thread(s), on a shared machine (indicative only).",
            "",
            scorers.to_markdown(index=False, floatfmt=".3f"),
            "",
            f"## Head variants (`{info['train']}`, {info['n_train']} texts; {info['folds']}-fold cross-validation "
            "grouped by row)",
            "",
            f"The shipped head is `{info['chosen']}`, the variant with the best cross-validated ROC AUC. Dev figures are "
            "shown for every variant for honesty; none was chosen on them.",
            "",
            variants.to_markdown(index=False, floatfmt=".3f"),
            "",
        ]
    )


def run(sm):
    train_texts, train_tox, train_rows = read_labelled(sm.input.train)
    dev_texts, dev_tox, _ = read_labelled(sm.input.dev)
    variants = {
        name: from_dict(HeadConfig, dict(values), f"rule toxicity_head: variant {name}")
        for name, values in sm.params.variants.items()
    }
    # One frozen-encoder pass over every layer any variant reads; each variant takes its layers' columns.
    union = sorted({layer for config in variants.values() for layer in config.layers})
    max_lengths = {config.max_length for config in variants.values()}
    if len(max_lengths) > 1:
        raise SuiteError(f"rule toxicity_head: every variant must share one max_length, got {sorted(max_lengths)}")
    encoder = MiniLMStates(union, max_lengths.pop())
    encoded = encode_texts(encoder, train_texts), encode_texts(encoder, dev_texts)
    width = encoded[0].states.shape[1] // len(union)

    def layer_states(config):
        columns = torch.cat([torch.arange(width) + union.index(layer) * width for layer in config.layers])
        return tuple(TokenStates(s.states[:, columns], s.offsets) for s in encoded)

    folds = StratifiedGroupKFold(sm.params.folds, shuffle=True, random_state=sm.params.seed)
    splits = list(folds.split(train_texts, train_tox > TOXIC, groups=train_rows))
    rows, heads = [], {}
    for name, config in variants.items():
        train_states, dev_states = encoded if config.layers == union else layer_states(config)
        out_of_fold = np.zeros(len(train_texts))
        for k, (fit_index, held_index) in enumerate(splits):
            head = fit_head(train_states.subset(fit_index), train_tox[fit_index], config, f"{name} fold {k}")
            out_of_fold[held_index] = predict(head, train_states.subset(held_index))
        heads[name] = fit_head(train_states, train_tox, config, f"{name} (all train texts)")
        cv, dev = agreement(out_of_fold, train_tox), agreement(predict(heads[name], dev_states), dev_tox)
        params = sum(p.numel() for p in heads[name].parameters())
        rows.append(
            {
                "variant": name,
                "layers": ",".join(map(str, config.layers)),
                "pooling": config.pooling,
                "hidden": config.hidden if config.pooling == "token" else "-",
                "parameters": params,
                "cv_roc_auc": cv["roc_auc"],
                "cv_pearson": cv["pearson"],
                "dev_roc_auc": dev["roc_auc"],
                "dev_pearson": dev["pearson"],
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    chosen = str(table.loc[table["cv_roc_auc"].idxmax(), "variant"])
    chosen_row = table[table["variant"] == chosen].iloc[0]
    fitted_on = {
        "variant": chosen,
        "train_file": str(sm.input.train),
        "train_texts": len(train_texts),
        "target": "Perspective toxicity (soft binary cross-entropy)",
        "cv_roc_auc": float(chosen_row["cv_roc_auc"]),
        "cv_pearson": float(chosen_row["cv_pearson"]),
    }
    save_head(heads[chosen], Path(sm.output.weights).parent, {"fitted_on": fitted_on})

    comparison = []
    for label, name, kwargs in [
        (f"MiniLM + head ({chosen})", "minilm_toxicity", {"head": str(Path(sm.output.weights).parent)}),
        ("alt-profanity-check", "profanity_check", {}),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scorer = get_scorer(name, **kwargs)
        start = time.perf_counter()
        pred = np.array(sum((scorer(dev_texts[s : s + 64]) for s in range(0, len(dev_texts), 64)), []))
        seconds = time.perf_counter() - start
        comparison.append(
            {
                "scorer": label,
                "registered as": name,
                **agreement(pred, dev_tox),
                "texts_per_s": round(len(dev_texts) / seconds),
            }
        )
    scorers = pd.DataFrame(comparison).rename(
        columns={
            "roc_auc": "dev ROC AUC",
            "pearson": "dev Pearson r",
            "share_toxic": "share > 0.5",
            "texts_per_s": "texts/s",
        }
    )
    scorers.to_csv(sm.output.csv, index=False)
    table.to_csv(sm.output.variants, index=False)
    info = {
        "dev": sm.input.dev,
        "train": sm.input.train,
        "n_dev": len(dev_texts),
        "n_train": len(train_texts),
        "dev_toxic": float(np.mean(dev_tox > TOXIC)),
        "folds": sm.params.folds,
        "chosen": chosen,
        "threads": sm.threads,
    }
    Path(sm.output.md).write_text(markdown(scorers, table, info))
    print(scorers.to_string(index=False))


main(run, snakemake)  # noqa: F821
