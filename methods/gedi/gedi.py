"""GeDi: generative discriminator guided sequence generation (Krause et al., Findings of EMNLP 2021).

train     a copy of the base model with two control codes becomes a class-conditional LM (CC-LM): each labelled text
          x of the corpus is read after both codes, c_w (wanted) and c_u (unwanted), and the loss mixes
              generative      L_g = -1/|x| log P(x | c_y)                            (the text's own class y)
              discriminative  L_d = -log softmax_c(s * 1/|x| log P(x | c))[y]        (Bayes' rule, uniform prior)
              L = lambda * L_g + (1 - lambda) * L_d,   s a learned logit scale
generate  at step t, for every candidate token v at once (one CC-LM pass per code):
              log P(w | x_<t, v) = log softmax_c(s * (log P(x_<t | c) + log P(v | c, x_<t)) / t + b_c)[w]
              weighted(v)        = log P_base(v | x_<t) + omega * log P(w | x_<t, v)
          filter: drop the least-wanted tokens whose weighted mass adds up to less than filter_p (1 - rho), unless
          P(w | x_<t, v) > tau; then the evaluation's temperature and nucleus; sample
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessor, PreTrainedModel, TopPLogitsWarper, set_seed

from core.config import from_dict
from core.data import Prompt, write_json
from core.models import load_model, read_meta
from core.sampling import Packed, Sampling, completion_logits, pack
from methods.common.generate import generate_jsonl
from methods.common.heldout import heldout_split, model_perplexity, perplexity, text_pairs
from methods.common.lm import LMSchedule, encode_texts, train_lm
from methods.common.lockstep import LockstepLM
from methods.common.task import Task
from methods.common.tokens import add_control_tokens
from methods.dexperts.dexperts import attribute_texts, check_no_pad

SOURCE = "methods/gedi/method.yaml"
META_FILE = "gedi.json"
CODES = ["<|gedi_wanted|>", "<|gedi_unwanted|>"]  # class 0 is the wanted one throughout


@dataclass
class GeDiConfig:
    omega: float = field(
        default=30.0, metadata={"help": "omega, the posterior weighting exponent (reference code: 30)"}
    )
    filter_p: float = field(
        default=0.8,
        metadata={"help": "drop least-wanted tokens whose weighted mass is under this (1 - rho; ref.: 0.8)"},
    )
    target_p: float = field(
        default=0.8,
        metadata={"help": "tau: a token whose P(wanted) given the prefix and itself exceeds this is never dropped"},
    )
    class_bias: float = field(
        default=0.0, metadata={"help": "log prior ratio added to the wanted class (reference detoxifier: 2.0)"}
    )
    gen_weight: float = field(
        default=0.6, metadata={"help": "lambda, weight of the generative loss; 1 - lambda weighs the discriminative"}
    )
    wanted_min_score: float = field(default=0.9, metadata={"help": "wanted-class texts: corpus score above this"})
    unwanted_max_score: float = field(default=0.5, metadata={"help": "unwanted-class texts: corpus score at most this"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the labelled texts, when `steps` is None"})
    steps: int | None = field(default=None, metadata={"help": "gradient steps (overrides `epochs`)"})
    batch_size: int = field(default=4, metadata={"help": "texts per gradient step (each read under both codes)"})
    lr: float = field(default=2e-5, metadata={"help": "AdamW peak learning rate"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient-norm clip (None: no clipping)"})
    max_text_tokens: int = field(default=192, metadata={"help": "texts are cut to their first N tokens"})
    eval_texts: int = field(
        default=200, metadata={"help": "labelled texts kept out of training to report class_accuracy"}
    )
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast while training"})


class ClassConditionalLM(nn.Module):
    """The CC-LM and the learned logit scale s of its Bayes-rule classifier, trained together."""

    def __init__(self, lm: PreTrainedModel, codes: list[int], vocab_size: int):
        super().__init__()
        self.lm, self.codes, self.vocab_size = lm, codes, vocab_size
        self.logit_scale = nn.Parameter(torch.ones(()))

    def code_logprobs(self, packed: Packed) -> torch.Tensor:
        """log P(v | c, prefix) at every target position under each code, [2, B, C, V]; the prefix's last column
        (a one-token prefix: the code itself) is set to each code in turn."""
        B = len(packed.input_ids)
        both = packed.input_ids.repeat(2, 1)
        both[:, packed.prefix_len - 1] = torch.tensor(self.codes, device=both.device).repeat_interleave(B)
        doubled = Packed(
            both,
            packed.attention_mask.repeat(2, 1),
            packed.completion_ids.repeat(2, 1),
            packed.completion_mask.repeat(2, 1),
            packed.prefix_len,
        )
        logits = completion_logits(self.lm, doubled)[..., : self.vocab_size]
        return F.log_softmax(logits.float(), dim=-1).view(2, B, *logits.shape[1:])

    def class_loglik(self, packed: Packed) -> torch.Tensor:
        """Length-normalised log-likelihood of each target under each code, [B, 2]."""
        logprobs = self.code_logprobs(packed)
        token = logprobs.gather(-1, packed.completion_ids.expand(2, -1, -1).unsqueeze(-1)).squeeze(-1)
        return ((token * packed.completion_mask).sum(-1) / packed.completion_mask.sum(-1).clamp(min=1)).T

    def labels(self, packed: Packed) -> torch.Tensor:
        """0 for a text read after the wanted code, 1 after the unwanted one."""
        return (packed.input_ids[:, packed.prefix_len - 1] == self.codes[1]).long()


def gedi_loss(model: ClassConditionalLM, packed: Packed, gen_weight: float) -> torch.Tensor:
    """lambda * L_g + (1 - lambda) * L_d on a batch of (class code, text) pairs (the module docstring's formulas)."""
    loglik = model.class_loglik(packed)  # [B, 2]
    labels = model.labels(packed)
    generative = -loglik.gather(1, labels.unsqueeze(1)).mean()
    discriminative = F.cross_entropy(model.logit_scale * loglik, labels)
    return gen_weight * generative + (1 - gen_weight) * discriminative


def guided_nll(base: PreTrainedModel, model: ClassConditionalLM, omega: float, class_bias: float = 0.0):
    """Per-token NLL [B, C] of held-out text under softmax(log P_base(v) + omega * log P(w | x_<t, v)), teacher-forced.

    Takes (first token, rest) pairs (`heldout.text_pairs`); the CC-LM reads the whole text after each code. The
    filter is left out: a held-out token it drops would have probability 0.
    """

    def nll(packed: Packed) -> torch.Tensor:
        assert packed.prefix_len == 1, "guided_nll takes (first token, rest) pairs"
        B, C = packed.completion_ids.shape
        base_logprobs = F.log_softmax(completion_logits(base, packed).float(), dim=-1)  # [B, C, V]
        ones = torch.ones_like(packed.attention_mask[:, :1])
        ids, mask = torch.cat([ones, packed.input_ids], 1), torch.cat([ones, packed.attention_mask], 1)
        whole = Packed(ids, mask, ids[:, 1:], mask[:, 1:], 1)  # [code] + text; code_logprobs puts the codes in
        logprobs = model.code_logprobs(whole)  # [2, B, 1 + C, V]
        token = logprobs.gather(-1, whole.completion_ids.expand(2, -1, -1).unsqueeze(-1)).squeeze(-1)
        loglik = (token * whole.completion_mask).cumsum(-1)[..., :C]  # log P(x_1..x_j | c) before target j
        length = torch.arange(1, C + 1, device=ids.device).repeat(B).float()
        log_posterior = class_posterior(
            loglik.reshape(2, B * C),
            logprobs[:, :, 1:].reshape(2, B * C, -1),
            length,
            model.logit_scale.item(),
            class_bias,
        )
        weighted = F.log_softmax(base_logprobs.reshape(B * C, -1) + omega * log_posterior, dim=-1)
        return -weighted.gather(-1, packed.completion_ids.reshape(-1, 1)).view(B, C)

    return nll


@torch.no_grad()
def accuracy(model: ClassConditionalLM, pairs: list, pad_id: int, batch_size: int = 32) -> float | None:
    """Share of texts the CC-LM's Bayes rule puts in their own class."""
    if not pairs:
        return None
    device = next(model.parameters()).device
    hits = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        packed = pack([list(p) for p, _ in batch], [list(t) for _, t in batch], pad_id)
        packed = Packed(*(v.to(device) if isinstance(v, torch.Tensor) else v for v in vars(packed).values()))
        hits += (model.class_loglik(packed).argmax(-1) == model.labels(packed)).tolist()
    return float(np.mean(hits))


def train(task: Task, base_model: Path, out_dir: Path, hparams: dict, *, seed: int, device: str) -> Path:
    """Train the CC-LM on the corpus's wanted and unwanted texts (as DExperts' experts), minus the held-out slice."""
    set_seed(seed)
    cfg = from_dict(GeDiConfig, hparams, SOURCE)
    texts = attribute_texts(heldout_split(task.name, task.corpus)[0], cfg.wanted_min_score, cfg.unwanted_max_score)
    lm, tokenizer = load_model(base_model, device)
    vocab_size = lm.get_output_embeddings().weight.shape[0]
    codes = add_control_tokens(lm, tokenizer, CODES)
    pairs = [
        ([code], ids)
        for code, side in zip(codes, ("wanted", "unwanted"))
        for ids in encode_texts(tokenizer, texts[side], cfg.max_text_tokens)
    ]
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_eval = min(cfg.eval_texts, len(pairs) // 10)
    held, pairs = [pairs[i] for i in order[:n_eval]], [pairs[i] for i in order[n_eval:]]
    model = ClassConditionalLM(lm, codes, vocab_size).to(device)
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(pairs) / cfg.batch_size))
    schedule = LMSchedule(
        steps, cfg.batch_size, cfg.lr, cfg.warmup_steps, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16
    )
    stats = train_lm(
        model,
        pairs,
        schedule,
        tokenizer.pad_token_id,
        seed=seed,
        desc="GeDi CC-LM",
        loss_fn=lambda m, packed: gedi_loss(m, packed, cfg.gen_weight),
    )
    base, _ = load_model(base_model, device)
    _, heldout = heldout_split(task.name, task.corpus)
    heldout_pairs = text_pairs(tokenizer, [t.text for t in heldout])
    model.eval()
    heldout_stats = {
        "heldout_texts": len(heldout),
        "base_heldout_perplexity": model_perplexity(base, tokenizer, heldout),
        "heldout_perplexity": perplexity(
            guided_nll(base, model, cfg.omega, cfg.class_bias),
            heldout_pairs,
            tokenizer.pad_token_id,
            device,
            batch_size=8,
        ),
    }
    model_dir = Path(out_dir) / "model"
    lm.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    meta = {
        "base_model": os.path.relpath(Path(base_model).resolve(), model_dir.resolve()),
        "codes": CODES,
        "code_ids": codes,
        "base_vocab_size": vocab_size,
        "logit_scale": model.logit_scale.item(),
        "config": asdict(cfg),
    }
    write_json(model_dir / META_FILE, meta)
    write_json(
        Path(out_dir) / "train_stats.json",
        {
            "texts": {k: len(v) for k, v in texts.items()},
            "steps": steps,
            "class_accuracy": accuracy(model, held, tokenizer.pad_token_id),
            "class_eval_texts": n_eval,
            "logit_scale": model.logit_scale.item(),
            **heldout_stats,
            **stats,
        },
    )
    return model_dir


def class_posterior(
    loglik: torch.Tensor, next_logprobs: torch.Tensor, length: torch.Tensor, logit_scale: float, class_bias: float = 0.0
) -> torch.Tensor:
    """log P(wanted | x_<t, v) for every candidate v, by Bayes' rule over the two codes' next-token distributions.

    loglik [2, B]: log P(x_<t | c); next_logprobs [2, B, V]: log P(v | c, x_<t); length [B]: tokens in x_<t.
    Each class's log-likelihood of x_<t v is divided by its length (t), scaled by s, and the wanted class gets
    `class_bias`, a log prior ratio.
    """
    scores = logit_scale * (loglik.unsqueeze(-1) + next_logprobs) / (length + 1).view(1, -1, 1)
    scores[0] += class_bias
    return scores[0] - torch.logsumexp(scores, dim=0)


def gedi_filter(weighted: torch.Tensor, log_posterior: torch.Tensor, filter_p: float, target_p: float) -> torch.Tensor:
    """GeDi's filtering heuristic on [B, V] scores: with tokens taken from least to most wanted, drop those whose
    cumulative weighted probability is still under `filter_p` (= 1 - rho: the kept, most wanted tokens hold at least
    rho of the mass), unless P(wanted) > tau (`target_p`). Dropped tokens get -inf."""
    order = log_posterior.argsort(dim=-1)  # least wanted first
    cumulative = weighted.softmax(-1).gather(-1, order).cumsum(-1)
    drop_sorted = (cumulative < filter_p) & (log_posterior.gather(-1, order) < math.log(target_p))
    drop_sorted[..., -1] = False  # the most wanted token stays, whatever rounding does to the cumulative sum
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return weighted.masked_fill(drop, float("-inf"))


class GeDiProcessor(LogitsProcessor):
    """Reweights the base model's next-token distribution by the CC-LM's posterior inside generate().

    The CC-LM reads the batch twice (once after each code) with its own KV cache (`LockstepLM`), which also keeps
    log P(x_<t | c). Pass generate() a Sampling with top_p=1.0 and temperature 1.0: weighting, filtering,
    temperature and the nucleus run here, in the reference code's order.
    """

    def __init__(
        self,
        cclm: PreTrainedModel,
        pad_id: int,
        code_ids: list[int],
        vocab_size: int,
        logit_scale: float,
        cfg: GeDiConfig,
        top_p: float = 1.0,
        temperature: float = 1.0,
    ):
        self.cclm = LockstepLM(cclm, pad_id, code_ids, vocab_size, track_loglik=True)
        self.logit_scale, self.cfg, self.top_p, self.temperature = logit_scale, cfg, top_p, temperature

    def posterior(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """log P(wanted | input_ids, v) for every v: [B, V]."""
        self.cclm(input_ids)
        return class_posterior(
            self.cclm.loglik, self.cclm.logprobs, self.cclm.length, self.logit_scale, self.cfg.class_bias
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        log_posterior = self.posterior(input_ids)
        weighted = F.log_softmax(scores, dim=-1) + self.cfg.omega * log_posterior
        weighted = gedi_filter(weighted, log_posterior, self.cfg.filter_p, self.cfg.target_p) / self.temperature
        return TopPLogitsWarper(self.top_p)(input_ids, weighted) if self.top_p < 1.0 else weighted


def generate(
    model_dir: Path,
    prompts: list[Prompt],
    num_samples: int,
    sampling: Sampling,
    out_path: Path,
    *,
    seed: int,
    device: str,
    **decoding,
) -> None:
    """Sample from the base model guided by the CC-LM; `decoding` (a variant's generate settings) overrides omega,
    filter_p, target_p or class_bias."""
    meta = read_meta(model_dir, META_FILE, "GeDi")
    cfg = from_dict(GeDiConfig, {**meta["config"], **decoding}, f"{SOURCE} (variant)")
    base, tokenizer = load_model(Path(model_dir) / meta["base_model"], device)
    cclm, _ = load_model(model_dir, device)
    check_no_pad(tokenizer, prompts)
    processor = GeDiProcessor(
        cclm,
        tokenizer.pad_token_id,
        meta["code_ids"],
        meta["base_vocab_size"],
        meta["logit_scale"],
        cfg,
        sampling.top_p if sampling.do_sample else 1.0,
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
