"""Calibrating the fusion at conversion: each head's gamma set to the scale of the original head's output.

The scale fusion RMS-normalises every head's output and multiplies it by a learned gamma (1 at
initialisation), so a freshly converted head speaks at RMS 1 where the original head spoke at its own
scale, and the converted model starts far from the original even where its FA heads are exact copies.
Setting gamma_h to the original head h's output RMS over some text gives the hybrid's heads the original
magnitudes from the first step.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def head_output_rms(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[layers, heads]: the RMS of each query head's output (its slice of the o_proj input) of an HF Qwen3 /
    Llama model over the tokens of `input_ids` [B, T]."""
    config = model.config
    heads = config.num_attention_heads
    sums: dict[int, torch.Tensor] = {}

    def grab(i):
        def hook(module, args):
            x = args[0].float()  # [B, T, H * D]
            sums[i] = x.view(*x.shape[:-1], heads, -1).pow(2).mean(dim=(0, 1, 3))  # [H]

        return hook

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(grab(i)) for i, layer in enumerate(model.model.layers)]
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([sums[i] for i in range(len(model.model.layers))]).sqrt()


@torch.no_grad()
def set_gamma(hybrid, rms: torch.Tensor) -> None:
    """Copy [layers, heads] scales into every layer's gamma (the scale fusion's per-head weight)."""
    for i, layer in enumerate(hybrid.model.layers):
        gamma = getattr(layer.self_attn, "gamma", None)
        if gamma is not None:
            gamma.copy_(rms[i].to(gamma.dtype))
