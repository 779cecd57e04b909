"""Plain LM fine-tuning on the task's corpus: the row that shows what ACF's regulariser prevents.

The corpus (for toxicity: RealToxicityPrompts prompts and continuations, a third of them toxic) is what a user would
fine-tune on; nothing here looks at the reward. ACF runs the same fine-tuning with its KL term added.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import set_seed

from core.config import from_dict
from core.data import write_json
from core.errors import SuiteError
from core.models import load_model
from methods.common.heldout import MAX_TEXT_TOKENS, heldout_split, model_perplexity, text_pairs
from methods.common.lm import LMSchedule, Pair, train_lm
from methods.common.task import Task


@dataclass
class FinetuneConfig:
    steps: int = field(default=100, metadata={"help": "gradient steps (ACF's num_rounds x lm_steps_per_round)"})
    batch_size: int = field(default=16, metadata={"help": "corpus texts per step"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    warmup_steps: int = field(default=10, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    max_text_tokens: int = field(default=MAX_TEXT_TOKENS, metadata={"help": "corpus texts are cut to this length"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast for forward passes"})


def corpus_pairs(task: Task, tokenizer, max_tokens: int) -> list[Pair]:
    """The corpus minus the held-out slice, as (first token, rest) pairs; a task without a corpus is an error."""
    train_texts, _ = heldout_split(task.name, task.corpus)
    pairs = text_pairs(tokenizer, [t.text for t in train_texts], max_tokens)
    if not pairs:
        raise SuiteError(f"task '{task.name}' has no corpus to fine-tune on (data/{task.name}/corpus.jsonl)")
    return pairs


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    set_seed(seed)
    cfg = from_dict(FinetuneConfig, hparams, "methods/finetune/method.yaml")
    out_dir, model_dir = Path(out_dir), Path(out_dir) / "model"
    started = time.perf_counter()
    model, tokenizer = load_model(base_model, device)
    _, heldout = heldout_split(task.name, task.corpus)
    base_ppl = model_perplexity(model, tokenizer, heldout)
    schedule = LMSchedule(cfg.steps, cfg.batch_size, cfg.lr, cfg.warmup_steps, bf16=cfg.bf16)
    stats = train_lm(
        model,
        corpus_pairs(task, tokenizer, cfg.max_text_tokens),
        schedule,
        tokenizer.pad_token_id,
        seed=seed,
        desc="fine-tuning on the corpus",
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    stats |= {
        "train_seconds": time.perf_counter() - started,
        "heldout_texts": len(heldout),
        "heldout_perplexity": model_perplexity(model, tokenizer, heldout),
        "base_heldout_perplexity": base_ppl,
    }
    write_json(out_dir / "train_stats.json", stats)
    return model_dir
