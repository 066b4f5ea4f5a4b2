"""hydrahead's own model family: a decoder whose layers are built from the head plan, with its own cache.

As Qwen3-Next does in transformers, the model owns its decoder layer, its model loop, its masks and its
cache (`HydraCache`, built from the plan whenever a forward or `generate()` asks for one); the base
architecture's norms, MLPs and rotary embedding are reused as they are. Signatures are explicit: a keyword
the model does not know is a TypeError, never a silently ignored argument.

`register()` makes the model types known to `AutoConfig` / `AutoModelForCausalLM` (`import hydrahead`
calls it); a converted directory also carries `auto_map` entries for `trust_remote_code=True`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention.full import FABranch
from .attention.gdn import GDNBranch
from .attention.hybrid import HybridAttention
from .cache import HydraCache
from .compat import CACHE_KWARG, cache_arg
from .configuration import HydraLlamaConfig, HydraQwen3Config, hybrid_spec
from .decode_linear import use_decode_linear
from .errors import HydraheadError


class HydraModelError(HydraheadError):
    pass


@dataclass(frozen=True)
class BaseParts:
    """The modules reused from the base architecture, and whether its attention normalises q and k."""

    norm: type
    mlp: type
    rotary: type
    qk_norm: bool


BASE_PARTS = {
    "qwen3": BaseParts(Qwen3RMSNorm, Qwen3MLP, Qwen3RotaryEmbedding, qk_norm=True),
    "llama": BaseParts(LlamaRMSNorm, LlamaMLP, LlamaRotaryEmbedding, qk_norm=False),
}

class HydraDecoderLayer(nn.Module):
    """Pre-norm residual block: the hybrid attention (FA and GDN heads of this layer), then the base MLP."""

    # set by transformers' `activation_checkpointing_enable()` (the public protocol for custom models: modules with
    # this attribute get it and `_gradient_checkpointing_func`); HydraModel's loop does the checkpointing itself
    gradient_checkpointing = False

    def __init__(self, config, layer_idx: int, parts: BaseParts):
        super().__init__()
        plan, options = hybrid_spec(config)
        self.self_attn = HybridAttention(config, layer_idx, plan, options, parts.qk_norm)
        self.mlp = parts.mlp(config)
        self.input_layernorm = parts.norm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = parts.norm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, token_mask, position_ids, cache):
        attended = self.self_attn(self.input_layernorm(hidden_states), position_embeddings, attention_mask, token_mask,
                                  position_ids, cache)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class HydraPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    _no_split_modules = ["HydraDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # the mask is built here, in the sdpa / eager forms
    _supports_flex_attn = False
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        # transformers' `init` functions skip tensors loaded from a checkpoint
        super()._init_weights(module)
        if isinstance(module, HybridAttention):
            weight = module.in_proj.weight.detach().clone()
            for name in ("fa_gate", "head_gate"):  # the identity at initialisation
                start = _offset(module, name)
                weight[start : start + module.split_sizes[name]] = 0
            init.copy_(module.in_proj.weight, weight)
            if getattr(module, "gamma", None) is not None:
                init.ones_(module.gamma)
        elif isinstance(module, FABranch) and getattr(module, "logscale_slope", None) is not None:
            init.ones_(module.logscale_slope)
        elif isinstance(module, GDNBranch):
            fresh = GDNBranch(module.num_heads, module.num_kv, module.head_dim, module.conv_size)
            for name in ("conv", "A_log", "dt_bias"):
                init.copy_(getattr(module, name), getattr(fresh, name).to(getattr(module, name).dtype))


def _offset(module: HybridAttention, name: str) -> int:
    """The first row of part `name` in the fused projection."""
    names = list(module.split_sizes)
    return sum(module.split_sizes[k] for k in names[: names.index(name)])


class HydraModel(HydraPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        parts = BASE_PARTS[config.base_model_type]
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(HydraDecoderLayer(config, i, parts) for i in range(config.num_hidden_layers))
        self.norm = parts.norm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = parts.rotary(config=config)
        self.post_init()
        use_decode_linear(self)  # decode-step products in the native kernel (decode_linear.py)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: HydraCache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                output_hidden_states: bool | None = None) -> BaseModelOutputWithPast:
        """`output_hidden_states`: the input of every decoder layer and the final normed output (transformers'
        convention: num_hidden_layers + 1 tensors [B, T, hidden])."""
        if (input_ids is None) == (inputs_embeds is None):
            raise HydraModelError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # [B, T, hidden]
        B, T, _ = inputs_embeds.shape
        recompute = [layer.gradient_checkpointing for layer in self.layers] if (
            self.training and torch.is_grad_enabled()) else [False] * len(self.layers)
        if any(recompute):
            # the backward pass runs each checkpointed layer again, which would write its KV and GDN states twice
            if use_cache or cache is not None:
                raise HydraModelError("activation checkpointing recomputes layers in the backward pass and cannot "
                                      "write a cache: train with use_cache=False and no cache")
            use_cache = False
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache:
            cache = HydraCache(self.config)
        if cache is not None and not isinstance(cache, HydraCache):
            raise HydraModelError(
                f"a hydrahead model keeps its KV and GDN states in a HydraCache, not a {type(cache).__name__}: "
                "pass none (the model builds its own) or hydrahead.HydraCache(model.config)")
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=inputs_embeds.device)[None]  # [1, T]
        mask, token_mask = attention_masks(attention_mask, B, past, T, self.config._attn_implementation,
                                           inputs_embeds.dtype, inputs_embeds.device)
        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids)
        states = [] if output_hidden_states else None
        for layer, again in zip(self.layers, recompute):
            if states is not None:
                states.append(hidden)
            if again:  # keep only the layer's input; its activations are recomputed in the backward pass
                hidden = layer._gradient_checkpointing_func(layer.__call__, hidden, position_embeddings, mask,
                                                            token_mask, position_ids, None)
            else:
                hidden = layer(hidden, position_embeddings, mask, token_mask, position_ids, cache)
        if cache is not None:
            cache.advance(T)
        hidden = self.norm(hidden)
        if states is not None:
            states.append(hidden)
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=tuple(states) if states else None,
                                       **cache_arg(cache))


class HydraForCausalLM(HydraPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = HydraModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        use_decode_linear(self)  # decode-step products in the native kernel (decode_linear.py)

    @property
    def head_plan(self):
        return hybrid_spec(self.config)[0]

    @property
    def hybrid_options(self):
        return hybrid_spec(self.config)[1]

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """transformers' activation checkpointing, with `every_n_layers` applied to the decoder layers here (they
        are not transformers' GradientCheckpointingLayer, whose forward wrapper renames cache arguments by
        release). Training then runs without a cache."""
        if every_n_layers < 1:
            raise HydraModelError(f"every_n_layers must be at least 1, got {every_n_layers}")
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, 1, offload)
        for i, layer in enumerate(self.model.layers):
            layer.gradient_checkpointing = i % every_n_layers == 0

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: HydraCache | None = None,
                cache: HydraCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, return_dict: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                ) -> CausalLMOutputWithPast:
        """`past_key_values` and `cache` are the same argument under the names of transformers before and
        from 5.24 (`hydrahead.compat`). `output_hidden_states` as transformers' models give them;
        `return_dict=False` gives the output's tuple. Attention weights are refused: the GDN heads have none, and
        the FA heads' come from attention functions that do not return them."""
        if past_key_values is not None and cache is not None and past_key_values is not cache:
            raise HydraModelError("pass the cache as `cache` or as `past_key_values`, not two different caches")
        if output_attentions:
            raise HydraModelError("output_attentions is not supported: a hybrid layer's GDN heads have no attention "
                                  "weights (hook the FA branch, hydrahead.attention.full.FABranch, for its inputs)")
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache if cache is not None else past_key_values, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, output_hidden_states=output_hidden_states)
        model_cache = out[CACHE_KWARG] if CACHE_KWARG in out else None
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float()
            loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        **cache_arg(model_cache))
        return result if return_dict is not False else result.to_tuple()

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """`GenerationMixin.generate` with the model's own cache: a `HydraCache` unless one is passed (or
        `use_cache=False`). Every other argument goes to transformers' generate, which checks them."""
        given = kwargs.get("cache", kwargs.get("past_key_values"))
        if given is None and kwargs.get("use_cache", True) is not False:
            kwargs.pop("cache", None)
            kwargs.pop("past_key_values", None)
            kwargs[CACHE_KWARG] = HydraCache(self.config)
        return super().generate(inputs, generation_config, **kwargs)


class HydraQwen3ForCausalLM(HydraForCausalLM):
    config_class = HydraQwen3Config


class HydraLlamaForCausalLM(HydraForCausalLM):
    config_class = HydraLlamaConfig


MODEL_CLASSES = {"qwen3": HydraQwen3ForCausalLM, "llama": HydraLlamaForCausalLM}


def attention_masks(attention_mask, batch: int, past: int, length: int, implementation: str, dtype, device):
    """(the FA heads' mask, token_mask) for `length` new tokens after `past` cached ones.

    attention_mask: the usual 2D [B, past + length] padding mask (1 = token), or None. The FA mask is None
    where the attention function's causal default is right (no padding, and a single token or nothing
    cached); otherwise [B, 1, length, past + length], bool (True = attend) for sdpa and the registered
    hydrahead functions, additive float for eager. Padding queries may attend everywhere, so that no row
    is empty (their outputs are never read). token_mask: [B, length] bool, False at padding, or None.
    """
    total = past + length
    padded = False
    if attention_mask is not None:
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, total):
            raise HydraModelError(f"attention_mask must be 2D [batch, cached + new tokens] = [{batch}, {total}], "
                                  f"got {list(attention_mask.shape)}")
        padded = not bool(attention_mask.all())
    token_mask = attention_mask[:, past:].bool() if padded else None
    eager = implementation == "eager"
    if not padded and (length == 1 or (past == 0 and not eager)):
        return None, token_mask
    keys = torch.arange(total, device=device)
    queries = torch.arange(past, total, device=device)
    allowed = (keys[None, :] <= queries[:, None])[None, None].expand(batch, 1, length, total)  # [B, 1, T, S]
    if padded:
        allowed = allowed & attention_mask[:, None, None, :].bool()
        allowed = allowed | ~token_mask[:, None, :, None]
    if eager:
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min), token_mask
    return allowed, token_mask


_registered = False


def register() -> None:
    """Make the hydrahead model types known to transformers' Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    for config_cls, model_cls in ((HydraQwen3Config, HydraQwen3ForCausalLM), (HydraLlamaConfig, HydraLlamaForCausalLM)):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    _registered = True
