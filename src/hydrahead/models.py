"""Loading local HF causal LMs with errors that name the problem."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HydraheadError


class ModelError(HydraheadError):
    pass


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local HF model directory (checked to be one), with a pad token."""
    from transformers import AutoTokenizer

    path = _model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: no usable tokenizer ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}/config.json cannot be read: {e}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{path} is not a causal LM (its config is {type(config).__name__})")
    return path


def load_causal_lm(path: str | os.PathLike, dtype=None, device: str | None = None):
    """(model, tokenizer) from a local HF directory. Nothing is fetched from a hub."""
    return load_model(path, dtype, device), load_tokenizer(path)


def load_model(path: str | os.PathLike, dtype=None, device: str | None = None):
    """The causal LM of a local HF directory, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = _model_dir(path)
    if _is_hybrid_dir(path):
        from .convert import load

        return load(path, dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
    except ValueError as e:
        raise ModelError(f"{path}: the model cannot be loaded: {e}") from None
    except OSError as e:
        raise ModelError(f"{path}: the weights cannot be loaded: {e}") from None
    if device:
        model = model.to(device)
    return model.eval()


def _is_hybrid_dir(path: Path) -> bool:
    """A directory written by `hydrahead convert` (its config carries the head plan)."""
    import json

    return bool(json.loads((path / "config.json").read_text()).get("hydrahead"))
