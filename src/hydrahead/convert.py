"""Convert a pretrained HF Qwen3 / Llama model into a head-wise hybrid, and save / load the result.

A converted model stays an HF model: its class is a thin subclass of the original one
(`HydraQwen3ForCausalLM`, `HydraLlamaForCausalLM`) that builds its attention layers from the plan and
options stored in `config.hydrahead`, so `save_pretrained` / `from_pretrained` round-trip it exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoConfig, LlamaForCausalLM, Qwen3ForCausalLM

from .attention import HybridAttention, HybridOptions
from .errors import HydraheadError
from .plan import HeadPlan


class ConversionError(HydraheadError):
    pass


class HydraMixin:
    """Builds every decoder layer's attention as a `HybridAttention` from `config.hydrahead`."""

    qk_norm = False

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        plan, options = hybrid_spec(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = HybridAttention(config, i, plan, options, self.qk_norm)

    @property
    def head_plan(self) -> HeadPlan:
        return hybrid_spec(self.config)[0]

    @property
    def hybrid_options(self) -> HybridOptions:
        return hybrid_spec(self.config)[1]


class HydraQwen3ForCausalLM(HydraMixin, Qwen3ForCausalLM):
    qk_norm = True


class HydraLlamaForCausalLM(HydraMixin, LlamaForCausalLM):
    pass


HYBRID_CLASSES = {"qwen3": HydraQwen3ForCausalLM, "llama": HydraLlamaForCausalLM}
BASE_CLASSES = {"qwen3": Qwen3ForCausalLM, "llama": LlamaForCausalLM}


def hybrid_spec(config) -> tuple[HeadPlan, HybridOptions]:
    spec = getattr(config, "hydrahead", None)
    if not spec:
        raise ConversionError("this model is not a hydrahead hybrid (its config has no 'hydrahead' entry)")
    return HeadPlan.from_dict(spec["plan"], "config.hydrahead"), HybridOptions.from_dict(spec["options"])


def is_hybrid(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "hydrahead", None))


def convert(model, plan: HeadPlan, options: HybridOptions | None = None):
    """Turn `model` (an HF Qwen3 or Llama causal LM) into a hybrid following `plan`, in place.

    FA heads keep their q/k/v rows; GDN heads reuse them (k/v repeated per query head when MHA-like);
    o_proj and the q/k norms are kept. `options` defaults to the paper's choices with the log-length
    scale starting at the model's `max_position_embeddings`.
    """
    config = model.config
    model_type = getattr(config, "model_type", type(config).__name__)
    if is_hybrid(config):
        raise ConversionError("the model is already a hybrid; convert the original model instead")
    if model_type not in HYBRID_CLASSES:
        raise ConversionError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); hydrahead converts "
            f"{', '.join(sorted(HYBRID_CLASSES))} causal LMs"
        )
    if not isinstance(model, BASE_CLASSES[model_type]):
        raise ConversionError(f"{type(model).__name__} is not a causal LM of a supported architecture")
    sliding = [i for i, kind in enumerate(getattr(config, "layer_types", None) or []) if kind != "full_attention"]
    if sliding:
        raise ConversionError(f"layers {sliding} are not full attention (sliding window?): not supported yet")
    plan.check_model(config)
    if options is None:
        options = HybridOptions(logscale_length=max(2, int(getattr(config, "max_position_embeddings", 4096))))
    for i, layer in enumerate(model.model.layers):
        layer.self_attn = HybridAttention.from_attention(layer.self_attn, config, i, plan, options)
    config.hydrahead = {"plan": plan.to_dict(), "options": options.to_dict()}
    model.__class__ = HYBRID_CLASSES[model_type]
    config.architectures = [model.__class__.__name__]
    return model


def save(model, path: str | os.PathLike, tokenizer=None) -> Path:
    """`save_pretrained` plus the plan as a readable plan.json beside it."""
    path = Path(path)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    model.head_plan.save(path / "plan.json")
    return path


def load(path: str | os.PathLike, dtype=None, device: str | None = None):
    """Load a hybrid saved by `save` / `save_pretrained`, plan and options included, in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConversionError(f"{path} is not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    hybrid_spec(config)
    cls = HYBRID_CLASSES.get(config.model_type)
    if cls is None:
        raise ConversionError(f"{path}: a hybrid of unsupported architecture {config.model_type!r}")
    try:
        model = cls.from_pretrained(path, local_files_only=True, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: the hybrid cannot be loaded: {e}") from None
    if device:
        model = model.to(device)
    return model.eval()
