"""The configs of hydrahead's own model types: a Qwen3 or Llama config plus the head plan and the hybrid
options under `hydrahead`.

A hybrid is its own model type (`hydrahead_qwen3`, `hydrahead_llama`), so plain transformers never mistakes a
converted directory for the original architecture (it would load random q/k/v without a word). Each config
subclasses its base architecture's, so every base field (norms, RoPE, vocabulary) means what it meant.
"""

from __future__ import annotations

from transformers import LlamaConfig, Qwen3Config

from .attention.options import HybridOptions
from .errors import HydraheadError
from .plan import HeadPlan


class HybridConfigError(HydraheadError):
    pass


class HydraQwen3Config(Qwen3Config):
    model_type = "hydrahead_qwen3"
    base_model_type = "qwen3"


class HydraLlamaConfig(LlamaConfig):
    model_type = "hydrahead_llama"
    base_model_type = "llama"


CONFIG_CLASSES = {"qwen3": HydraQwen3Config, "llama": HydraLlamaConfig}
HYBRID_MODEL_TYPES = {cls.model_type: cls for cls in CONFIG_CLASSES.values()}


def hybrid_config(base_config, plan: HeadPlan, options: HybridOptions):
    """The hybrid's config: every field of `base_config` (a Qwen3 / Llama config), plus plan and options."""
    base_type = base_config.model_type
    if base_type not in CONFIG_CLASSES:
        raise HybridConfigError(f"unsupported architecture {base_type!r}; hydrahead converts "
                                f"{', '.join(sorted(CONFIG_CLASSES))} causal LMs")
    return from_base_dict(base_type, base_config.to_dict(), {"plan": plan.to_dict(), "options": options.to_dict()})


def from_base_dict(base_type: str, fields: dict, spec: dict):
    """A hybrid config from a base config's dict (model_type, architectures and auto_map are the hybrid's own)."""
    fields = {k: v for k, v in fields.items() if k not in ("model_type", "architectures", "auto_map", "hydrahead")}
    cls = CONFIG_CLASSES[base_type]
    config = cls(**fields)
    config.hydrahead = {"base_model_type": base_type, **spec}
    hybrid_spec(config)  # check plan and options now, not at the first forward
    return config


def hybrid_spec(config) -> tuple[HeadPlan, HybridOptions]:
    """(plan, options) of a hybrid's config; an error naming the problem for any other config."""
    spec = getattr(config, "hydrahead", None)
    if not spec:
        raise HybridConfigError("this model is not a hydrahead hybrid (its config has no 'hydrahead' entry)")
    return HeadPlan.from_dict(spec["plan"], "config.hydrahead"), HybridOptions.from_dict(spec["options"])


def is_hybrid(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "hydrahead", None))
