"""Base-model specs, model loading and prompt encoding shared by every method.

A base-model spec (the config's `base_model`) is one of
  gguf:PACKAGE/FILE.gguf   a GGUF file shipped inside an installed Python package (offline default)
  hub:NAME                 a Hugging Face Hub id (paper profile)
  path:DIRECTORY           a local transformers directory
  tiny                     a randomly initialised Llama with a byte-level BPE trained on the prompts (tests)
Every spec is materialised once, by the `base_model` rule, as a plain transformers directory.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from core.errors import SuiteError

EOS = "<|endoftext|>"


def gguf_path(package: str, file: str) -> Path:
    """Locate a GGUF file inside an installed package without importing the package's code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SuiteError(f"base model package '{package}' is not installed (see the README's set-up command)")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise SuiteError(f"base model file not found: {path}")
    return path


def tiny_tokenizer(corpus: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus`: real tokenisation, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def tiny_model(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden: int = 64, layers: int = 2
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def load_pretrained(where: str | Path, **kwargs) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and fp32 model of a transformers directory or Hub name; a corrupt or unreachable one is a
    SuiteError naming it, not a chain of tracebacks."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SuiteError(f"{where}: cannot load the model ({reason[:300]})") from None
    return tokenizer, model


def build_base_model(spec: str, out_dir: str | Path, corpus: list[str] | None = None, tiny: dict | None = None) -> None:
    """Materialise a base-model spec as a transformers directory (safetensors + tokenizer)."""
    kind, _, where = spec.partition(":")
    if kind == "gguf":
        package, _, file = where.partition("/")
        path = gguf_path(package, file)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # The weights are dequantised to fp32, but transformers still marks the model as GGUF-quantised and
        # refuses to save it: copy them into a plain model of the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
    elif kind in ("hub", "path"):
        if kind == "path" and not Path(where, "config.json").is_file():
            raise SuiteError(f"base model directory not found (no config.json): {where}")
        tokenizer, model = load_pretrained(where)
    elif kind == "tiny":
        if not corpus:
            raise SuiteError("a tiny base model needs a prompt corpus to train its tokenizer on")
        tiny = tiny or {}
        tokenizer = tiny_tokenizer(corpus, tiny.get("vocab_size", 384))
        model = tiny_model(tokenizer, tiny.get("seed", 0), tiny.get("hidden", 64), tiny.get("layers", 2))
    else:
        raise SuiteError(f"base_model must be gguf:PACKAGE/FILE, hub:NAME, path:DIR or tiny, got {spec!r}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or the `model.json` a train job writes, which points at one."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise SuiteError(f"model manifest not found: {path}")
        path = Path(json.loads(path.read_text())["model_dir"])
    if not (path / "config.json").is_file():
        raise SuiteError(f"model directory not found or incomplete (no config.json): {path}")
    return path


def load_model(path: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A transformers directory (or a train job's model.json) for inference or training; safetensors weights only."""
    path = resolve_model_dir(path)
    if not any(path.glob("*.safetensors")):  # nothing the suite wrote is pickled; it never unpickles weights either
        raise SuiteError(f"model directory {path} has no safetensors weights (pickled weights are not loaded)")
    tokenizer, model = load_pretrained(path, use_safetensors=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device)
    model.eval()
    return model, tokenizer


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> list[list[int]]:
    """Tokenise prompts, cutting those longer than `max_length` from the left, with one warning that counts them."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    too_long = sum(len(x) > max_length for x in ids)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(ids)} prompts exceed {max_length} tokens and were truncated from the left",
            stacklevel=2,
        )
    return [x[-max_length:] if len(x) > max_length else x for x in ids]


def context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024))


def read_meta(model_dir: str | Path, name: str, method: str) -> dict:
    """The JSON a method writes beside its weights (reward tokens, return bins, ...); a clear error if absent."""
    path = Path(model_dir) / name
    if not path.is_file():
        raise SuiteError(f"{model_dir} is not a {method} model (no {name})")
    return json.loads(path.read_text())
