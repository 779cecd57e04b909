"""DExperts: decoding-time controlled generation with experts and anti-experts (Liu et al., ACL 2021).

train     fine-tune two copies of the base model on the task's corpus: the expert on wanted texts (non-toxic, of the
          wanted sentiment), the anti-expert on unwanted ones; each is its own DAG job (rules.smk)
generate  at every step, with z the base model's next-token logits and z+, z- the expert's and anti-expert's:
              z~ = top_p(z) + alpha * (z+ - z-),    sample from softmax(z~)
          top_p keeps the base model's nucleus (the paper's filter_p) and sets the rest to -inf
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, PreTrainedModel, TopPLogitsWarper, set_seed

from core.config import from_dict
from core.data import Prompt, Text, write_json
from core.errors import SuiteError
from core.models import encode_prompts, load_model
from core.sampling import Packed, Sampling, completion_logits
from methods.common.generate import generate_jsonl
from methods.common.heldout import heldout_split, model_perplexity, perplexity, text_pairs
from methods.common.lm import LMSchedule, train_lm
from methods.common.lockstep import LockstepLM
from methods.common.task import Task

SOURCE = "methods/dexperts/method.yaml"
SIDES = ("expert", "antiexpert")
MANIFEST = "dexperts.json"


@dataclass
class DExpertsConfig:
    alpha: float = field(
        default=2.0,
        metadata={"help": "alpha, the weight of expert minus anti-expert logits (paper: 2.0 toxicity, 3.2 sentiment)"},
    )
    filter_top_p: float | None = field(
        default=None,
        metadata={"help": "base-model nucleus kept before ensembling (None: the evaluation's top-p; paper: 0.9)"},
    )
    wanted_min_score: float = field(default=0.9, metadata={"help": "the expert's texts: corpus score above this"})
    unwanted_max_score: float = field(
        default=0.5, metadata={"help": "the anti-expert's texts: corpus score at most this"}
    )
    epochs: float = field(default=1.0, metadata={"help": "passes over each expert's texts, when `steps` is None"})
    steps: int | None = field(default=None, metadata={"help": "gradient steps per expert (overrides `epochs`)"})
    batch_size: int = field(default=64, metadata={"help": "texts per gradient step"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient-norm clip (None: no clipping)"})
    max_text_tokens: int = field(default=128, metadata={"help": "texts are cut to their first N tokens"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast while fine-tuning"})


def attribute_texts(corpus: list[Text], wanted_min_score: float, unwanted_max_score: float) -> dict[str, list[str]]:
    """The corpus split by its scores: wanted texts (score > wanted_min_score) and unwanted (<= unwanted_max_score).

    GeDi trains its class-conditional LM on the same two sets. Unlabelled texts and those in between are left out.
    """
    split = {
        "wanted": [t.text for t in corpus if t.score is not None and t.score > wanted_min_score],
        "unwanted": [t.text for t in corpus if t.score is not None and t.score <= unwanted_max_score],
    }
    for name, rule in (("wanted", f"> {wanted_min_score}"), ("unwanted", f"<= {unwanted_max_score}")):
        if not split[name]:
            raise SuiteError(f"{SOURCE}: the task corpus has no {name} texts (score {rule}); check the thresholds")
    return split


def train_expert(
    side: str, task: str, corpus: list[Text], base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str
) -> Path:
    """Fine-tune one copy of the base model: side 'expert' on the wanted texts, 'antiexpert' on the unwanted ones.

    The suite's held-out slice of the corpus (methods/common/heldout.py) is never trained on.
    """
    if side not in SIDES:
        raise SuiteError(f"{SOURCE}: unknown DExperts side {side!r} (expected one of {', '.join(SIDES)})")
    set_seed(seed)
    cfg = from_dict(DExpertsConfig, hparams, SOURCE)
    texts = attribute_texts(heldout_split(task, corpus)[0], cfg.wanted_min_score, cfg.unwanted_max_score)
    texts = texts["wanted" if side == "expert" else "unwanted"]
    model, tokenizer = load_model(base_model, device)
    pairs = text_pairs(tokenizer, texts, cfg.max_text_tokens)
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    schedule = LMSchedule(
        steps, cfg.batch_size, cfg.lr, cfg.warmup_steps, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16
    )
    stats = train_lm(model, pairs, schedule, tokenizer.pad_token_id, seed=seed, desc=f"DExperts {side}")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "train_stats.json", {"side": side, "texts": len(pairs), "steps": steps, **stats})
    return out_dir


def write_ensemble(out_dir: Path, base_model: Path, expert: Path, antiexpert: Path, hparams: dict) -> Path:
    """The directory model.json points at: a manifest naming the three models (paths relative to it) and alpha.

    The base model's config.json is copied next to it, so the directory resolves like any model directory
    (`core/models.resolve_model_dir`); the weights stay where the three jobs wrote them.
    """
    cfg = from_dict(DExpertsConfig, hparams, SOURCE)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(base_model) / "config.json", out_dir / "config.json")
    paths = {
        name: os.path.relpath(Path(p).resolve(), out_dir.resolve())
        for name, p in (("base", base_model), ("expert", expert), ("antiexpert", antiexpert))
    }
    write_json(out_dir / MANIFEST, {**paths, "alpha": cfg.alpha, "filter_top_p": cfg.filter_top_p})
    return out_dir


def read_ensemble(model_dir: Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise SuiteError(f"{model_dir} is not a DExperts ensemble (no {MANIFEST})")
    spec = json.loads(path.read_text())
    return {**spec, **{name: Path(model_dir) / spec[name] for name in ("base", *SIDES)}}


def ensemble_nll(base: PreTrainedModel, expert: PreTrainedModel, antiexpert: PreTrainedModel, alpha: float):
    """Per-token NLL [B, C] of held-out text under softmax(z + alpha * (z+ - z-)), teacher-forced.

    The nucleus filter is left out: a held-out token outside the base model's nucleus would have probability 0.
    """

    def nll(packed: Packed) -> torch.Tensor:
        z, z_plus, z_minus = (completion_logits(m, packed).float() for m in (base, expert, antiexpert))
        logprobs = F.log_softmax(z + alpha * (z_plus - z_minus), dim=-1)
        return -logprobs.gather(-1, packed.completion_ids.unsqueeze(-1)).squeeze(-1)

    return nll


def write_train_stats(run_dir: Path, task: str, corpus: list[Text], ensemble_dir: Path, device: str) -> dict:
    """Both experts' training statistics and the ensemble's perplexity on the suite's held-out slice of the corpus
    (`methods/common/heldout.py`), next to the base model's, as every method that learns from the corpus reports."""
    spec = read_ensemble(ensemble_dir)
    base, tokenizer = load_model(spec["base"], device)
    expert, _ = load_model(spec["expert"], device)
    antiexpert, _ = load_model(spec["antiexpert"], device)
    _, heldout = heldout_split(task, corpus)
    pairs = text_pairs(tokenizer, [t.text for t in heldout])
    nll = ensemble_nll(base, expert, antiexpert, spec["alpha"])
    stats = {side: json.loads((spec[side] / "train_stats.json").read_text()) for side in SIDES}
    stats |= {
        "heldout_texts": len(heldout),
        "base_heldout_perplexity": model_perplexity(base, tokenizer, heldout),
        "heldout_perplexity": perplexity(nll, pairs, tokenizer.pad_token_id, device),
    }
    write_json(Path(run_dir) / "train_stats.json", stats)
    return stats


def dexperts_logits(
    base: torch.Tensor, expert: torch.Tensor, antiexpert: torch.Tensor, alpha: float, filter_top_p: float
) -> torch.Tensor:
    """z~ = top_p(z) + alpha * (z+ - z-) over [B, V] logits; tokens outside the base model's nucleus stay -inf."""
    if filter_top_p < 1.0:
        base = TopPLogitsWarper(filter_top_p)(None, base)
    return base + alpha * (expert - antiexpert)


class DExpertsProcessor(LogitsProcessor):
    """Turns the base model's next-token logits into DExperts' ensemble logits inside generate().

    The experts follow generate() with their own KV caches (`LockstepLM`), so a token costs three forward passes.
    Pass generate() a Sampling with top_p=1.0 and temperature 1.0: the base nucleus and the temperature are
    applied here, in the reference code's order, whatever order transformers runs its own processors in.
    """

    def __init__(
        self,
        expert: PreTrainedModel,
        antiexpert: PreTrainedModel,
        pad_id: int,
        vocab_size: int,
        alpha: float,
        filter_top_p: float,
        temperature: float = 1.0,
    ):
        self.experts = [LockstepLM(m, pad_id, [], vocab_size) for m in (expert, antiexpert)]
        self.alpha, self.filter_top_p, self.temperature = alpha, filter_top_p, temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        z_plus, z_minus = (lm(input_ids)[0] for lm in self.experts)
        return dexperts_logits(scores, z_plus, z_minus, self.alpha, self.filter_top_p) / self.temperature


def check_no_pad(tokenizer, prompts: list[Prompt]) -> None:
    """The experts recover the prompt mask as input_ids != pad: a prompt holding the pad (EOS) token would break it."""
    pad = tokenizer.pad_token_id
    for prompt, ids in zip(prompts, encode_prompts(tokenizer, [p.text for p in prompts], 10**9)):
        if pad in ids:
            raise SuiteError(
                f"prompt {prompt.id} holds the pad token {tokenizer.pad_token!r}; remove it from the prompts"
            )


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Both experts one after the other, then the ensemble manifest (the DAG runs them as three jobs)."""
    out_dir = Path(out_dir)
    dirs = [
        train_expert(side, task.name, task.corpus, base_model, out_dir / side, hparams, seed=seed, device=device)
        for side in SIDES
    ]
    ensemble_dir = write_ensemble(out_dir / "ensemble", base_model, *dirs, hparams)
    write_train_stats(out_dir, task.name, task.corpus, ensemble_dir, device)
    return ensemble_dir


def generate(
    model_dir: Path,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: Path,
    *,
    seed: int,
    device: str,
    alpha: float | None = None,
) -> None:
    """Sample from the ensemble; `alpha` (a variant's generate setting) overrides the trained manifest's."""
    spec = read_ensemble(model_dir)
    base, tokenizer = load_model(spec["base"], device)
    expert, _ = load_model(spec["expert"], device)
    antiexpert, _ = load_model(spec["antiexpert"], device)
    check_no_pad(tokenizer, prompts)
    filter_top_p = spec["filter_top_p"] if spec["filter_top_p"] is not None else sampling.top_p
    processor = DExpertsProcessor(
        expert,
        antiexpert,
        tokenizer.pad_token_id,
        base.get_output_embeddings().weight.shape[0],
        spec["alpha"] if alpha is None else alpha,
        filter_top_p,
        sampling.temperature,
    )
    generate_jsonl(
        base,
        tokenizer,
        prompts,
        num_samples,
        replace(sampling, top_p=1.0, temperature=1.0),
        out_path,
        seed,
        logits_processor=[processor],
    )
