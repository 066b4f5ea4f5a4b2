"""Convert a pretrained HF Qwen3 / Llama model into a head-wise hybrid, and save / load the result.

The hybrid is hydrahead's own model type (`hydrahead_qwen3` / `hydrahead_llama`, see `modeling.py`): its
config carries the base architecture's fields, the head plan and the hybrid options. A saved directory
also holds two small modeling files and `auto_map` entries, so that `AutoModelForCausalLM.from_pretrained(
dir, trust_remote_code=True)` loads it wherever hydrahead is installed; plain transformers refuses it
(an unknown model type) instead of loading a Qwen3 with random q/k/v.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, Qwen3ForCausalLM

from .attention import HybridAttention, HybridOptions
from .configuration import HYBRID_MODEL_TYPES, from_base_dict, hybrid_config, hybrid_spec, is_hybrid
from .decode_linear import use_decode_linear
from .errors import HydraheadError
from .modeling import MODEL_CLASSES, register
from .models import check_loading_info
from .plan import HeadPlan

__all__ = ["ConversionError", "convert", "save", "load", "hybrid_spec", "is_hybrid"]


class ConversionError(HydraheadError):
    pass


BASE_CLASSES = {"qwen3": Qwen3ForCausalLM, "llama": LlamaForCausalLM}

# the files a saved hybrid carries for trust_remote_code: each only imports hydrahead's classes
REMOTE_CODE = {
    "configuration_hydrahead.py": (
        '"""hydrahead hybrid configs (needs `pip install hydrahead`)."""\n'
        "from hydrahead.configuration import HydraLlamaConfig, HydraQwen3Config\n"
    ),
    "modeling_hydrahead.py": (
        '"""hydrahead hybrid models (needs `pip install hydrahead`)."""\n'
        "from hydrahead.modeling import HydraLlamaForCausalLM, HydraQwen3ForCausalLM\n"
    ),
}


def convert(model, plan: HeadPlan, options: HybridOptions | None = None, inplace: bool = False,
            calibration_ids: torch.Tensor | None = None):
    """A hybrid of `model` (an HF Qwen3 or Llama causal LM) following `plan`.

    FA heads keep their q/k/v rows; GDN heads reuse them (k/v repeated per query head when MHA-like);
    o_proj, the q/k norms, embeddings, MLPs and norms are kept. `options` defaults to the paper's choices with
    the log-length scale starting at the model's `max_position_embeddings`. The caller's `model` is left as it
    was, unless `inplace=True`: then the hybrid takes over its modules (no second copy of the weights in
    memory) and `model` must not be used afterwards. With `calibration_ids` ([B, T] token ids) and the scale
    fusion, each head's gamma starts at the original head's output RMS over those tokens (`calibration.py`)
    instead of 1.
    """
    config = model.config
    model_type = getattr(config, "model_type", type(config).__name__)
    if is_hybrid(config):
        raise ConversionError("the model is already a hybrid; convert the original model instead")
    if model_type not in BASE_CLASSES:
        raise ConversionError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); hydrahead converts "
            f"{', '.join(sorted(BASE_CLASSES))} causal LMs"
        )
    if not isinstance(model, BASE_CLASSES[model_type]):
        raise ConversionError(f"{type(model).__name__} is not a causal LM of a supported architecture")
    sliding = [i for i, kind in enumerate(getattr(config, "layer_types", None) or []) if kind != "full_attention"]
    if sliding:
        raise ConversionError(f"layers {sliding} are not full attention (sliding window?): not supported yet")
    plan.check_model(config)
    if options is None:
        options = HybridOptions(logscale_length=max(2, int(getattr(config, "max_position_embeddings", 4096))))
    rms = None
    if calibration_ids is not None and options.fusion == "scale":
        from .calibration import head_output_rms

        rms = head_output_rms(model, calibration_ids.to(model.get_input_embeddings().weight.device))
    new_config = hybrid_config(config, plan, options)
    new_config._attn_implementation = config._attn_implementation
    weight = model.get_input_embeddings().weight
    # the new model's own parameters are all overwritten below: build it without spending time on its init
    with torch.device("meta"):
        hybrid = MODEL_CLASSES[model_type](new_config)
    hybrid.to_empty(device=weight.device)
    hybrid.to(weight.dtype)
    source, target = model.model, hybrid.model
    share = (lambda m: m) if inplace else _copy_module
    target.embed_tokens = share(source.embed_tokens)
    target.norm = share(source.norm)
    target.rotary_emb = _copy_module(source.rotary_emb)
    for i, (old, new) in enumerate(zip(source.layers, target.layers)):
        new.self_attn = HybridAttention.from_attention(old.self_attn, new_config, i, plan, options, share)
        new.mlp = share(old.mlp)
        new.input_layernorm = share(old.input_layernorm)
        new.post_attention_layernorm = share(old.post_attention_layernorm)
    if new_config.tie_word_embeddings:
        hybrid.lm_head.weight = target.embed_tokens.weight
    else:
        hybrid.lm_head = share(model.lm_head)
    hybrid.generation_config = copy.deepcopy(model.generation_config)
    if rms is not None:
        from .calibration import set_gamma

        set_gamma(hybrid, rms)
    use_decode_linear(hybrid)  # the modules taken from `model` too (the hybrid's own are already)
    return hybrid.train(model.training)


def _copy_module(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module)


def save(model, path: str | os.PathLike, tokenizer=None) -> Path:
    """`save_pretrained` with the remote-code files and `auto_map`, the tokenizer, and the plan as a
    readable plan.json beside them."""
    path = Path(path)
    base_type = model.config.hydrahead["base_model_type"]
    model.config.auto_map = {
        "AutoConfig": f"configuration_hydrahead.{type(model.config).__name__}",
        "AutoModelForCausalLM": f"modeling_hydrahead.{MODEL_CLASSES[base_type].__name__}",
    }
    model.config.architectures = [MODEL_CLASSES[base_type].__name__]
    model.save_pretrained(path)
    for name, text in REMOTE_CODE.items():
        (path / name).write_text(text)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    model.head_plan.save(path / "plan.json")
    return path


def load(path: str | os.PathLike, dtype=None, device: str | None = None):
    """Load a hybrid saved by `save` (or by hydrahead before it had its own model type), in eval mode."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConversionError(f"{path} is not a model directory (no config.json)")
    register()
    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") in HYBRID_MODEL_TYPES:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    elif raw.get("hydrahead") and raw.get("model_type") in BASE_CLASSES:
        # written before hybrids had a model type of their own: a Qwen3 / Llama config with the plan inside
        spec = {k: v for k, v in raw["hydrahead"].items() if k in ("plan", "options")}
        config = from_base_dict(raw["model_type"], raw, spec)
    else:
        raise ConversionError(f"{path}: not a hydrahead hybrid (model_type {raw.get('model_type')!r}, no head plan)")
    hybrid_spec(config)
    cls = MODEL_CLASSES[config.hydrahead["base_model_type"]]
    try:
        model, info = cls.from_pretrained(path, config=config, local_files_only=True, dtype=dtype or torch.float32,
                                          output_loading_info=True)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: the hybrid cannot be loaded: {e}") from None
    check_loading_info(path, model, info)
    if device:
        model = model.to(device)
    return model.eval()
