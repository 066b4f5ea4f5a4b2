"""Loading local HF causal LMs, checked before use: every problem one line that names it.

A directory is refused (before any model runs) when it has no tokenizer files or a tokenizer that encodes
text to nothing (transformers 5 builds an empty one silently), when its config is not a decoder-only causal
LM (an encoder such as BERT would otherwise load as `BertLMHeadModel`), or when its weights do not match its
config (missing layers would otherwise be initialised at random).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import HydraheadError


class ModelError(HydraheadError):
    pass


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
PROBE_TEXT = "The special magic number is 1234567."


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local HF model directory (checked to be one, and to encode text), with a pad token."""
    from transformers import AutoTokenizer

    path = check_model_dir(path)
    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    if not present:
        raise ModelError(f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: no usable tokenizer ({e})") from None
    if not tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise ModelError(f"{path}: the tokenizer encodes text to no tokens (its files {present} are empty or broken)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_dir(path: str | os.PathLike) -> Path:
    """`path` as a Path, if it is a local directory with a decoder-only causal LM config; else a ModelError."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}/config.json cannot be read: {e}") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelError(f"{path}/config.json has no model_type")
    from .configuration import HYBRID_MODEL_TYPES

    if raw["model_type"] in HYBRID_MODEL_TYPES or raw.get("hydrahead"):
        from .modeling import register

        register()  # so that AutoConfig and the Auto model classes know the hybrid's type
        return path
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = raw["model_type"]
    architectures = raw.get("architectures") or []
    causal = [a for a in architectures if a.endswith(CAUSAL_SUFFIXES)]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or raw.get("is_encoder_decoder"):
        raise ModelError(f"{path} is not a causal LM (model_type {model_type!r}); hydrahead takes decoder-only "
                         "causal LMs such as Qwen3 and Llama")
    if architectures and not causal:
        raise ModelError(f"{path} is not a causal LM: its architectures are {architectures}")
    if not architectures and model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ModelError(f"{path} is not a causal LM: model_type {model_type!r} is an encoder and the config names "
                         "no causal-LM architecture")
    return path


def load_causal_lm(path: str | os.PathLike, dtype=None, device: str | None = None):
    """(model, tokenizer) from a local HF directory. Nothing is fetched from a hub."""
    tokenizer = load_tokenizer(path)
    return load_model(path, dtype, device), tokenizer


def load_model(path: str | os.PathLike, dtype=None, device: str | None = None):
    """The causal LM of a local HF directory, in eval mode; a hydrahead hybrid as its own model type."""
    import torch
    from transformers import AutoModelForCausalLM

    from .modeling import register

    path = check_model_dir(path)
    register()
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{path} has no weights (none of {', '.join(WEIGHT_FILES)})")
    if _is_hybrid_dir(path):
        from .convert import load

        return load(path, dtype, device)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32,
                                                           output_loading_info=True)
    except ValueError as e:
        raise ModelError(f"{path}: the model cannot be loaded: {e}") from None
    except OSError as e:
        raise ModelError(f"{path}: the weights cannot be loaded: {e}") from None
    check_loading_info(path, model, info)
    if device:
        model = model.to(device)
    return model.eval()


def check_loading_info(path: Path, model, info: dict) -> None:
    """Weights that do not match the config are an error, not a model with random layers."""
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = sorted(k for k in info.get("missing_keys", []) if k not in tied)
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        parts = [f"{what} {len(keys)} ({', '.join(map(str, keys[:3]))}{', ...' if len(keys) > 3 else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys]
        raise ModelError(f"{path}: the weights do not match the config: {'; '.join(parts)}")


def _is_hybrid_dir(path: Path) -> bool:
    """A directory written by `hydrahead convert` (its own model type, or the plan in a base config)."""
    from .configuration import HYBRID_MODEL_TYPES

    raw = json.loads((path / "config.json").read_text())
    return raw.get("model_type") in HYBRID_MODEL_TYPES or bool(raw.get("hydrahead"))
