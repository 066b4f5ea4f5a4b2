"""The three stages of HydraHead's transfer, each one small class: what trains, and the loss.

1. align: the backbone frozen, only the hybrid attention trains; every hybrid attention layer gets the
   original layer's input (teacher-forced) and matches the original layer's output (MSE, normalised by
   the output's mean square so that every layer weighs the same).
2. distill: everything trains; KL(teacher || student) on the logits plus next-token cross-entropy.
3. long: everything trains; next-token cross-entropy at a longer sequence length (no teacher).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F


def _next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def _attention(model) -> list[torch.nn.Module]:
    inner = getattr(model, "module", model)  # under DDP the HF model is .module
    return [layer.self_attn for layer in inner.model.layers]


class Stage:
    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True

    def trainable(self, student) -> list[torch.nn.Parameter]:
        return list(student.parameters())

    def loss(self, student, teacher, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


@contextlib.contextmanager
def _hooks(modules, pre=None, post=None):
    handles = []
    for i, m in enumerate(modules):
        if pre is not None:
            handles.append(m.register_forward_pre_hook(pre(i), with_kwargs=True))
        if post is not None:
            handles.append(m.register_forward_hook(post(i)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _pre_args(make):
    """A forward pre-hook factory taking (module, args, kwargs), from one that takes (module, args)."""
    def factory(i):
        hook = make(i)
        return lambda module, args, kwargs: hook(module, args if args else (kwargs["input"],))
    return factory


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _head_mse(outputs: dict[int, torch.Tensor], targets: dict[int, torch.Tensor], head_dim: int) -> torch.Tensor:
    """Per layer and head, the MSE between the hybrid's fused head output and the original head's output (the
    inputs of o_proj, [B, T, H * head_dim]), divided by the original head's mean square; the mean over all."""
    per_head = []
    for i in sorted(targets):
        out = outputs[i].float().unflatten(-1, (-1, head_dim))  # [B, T, H, D]
        target = targets[i].float().unflatten(-1, (-1, head_dim))
        mse = (out - target).pow(2).mean(dim=(0, 1, 3))  # [H]
        per_head.append(mse / target.pow(2).mean(dim=(0, 1, 3)).clamp(min=1e-12))
    return torch.cat(per_head).mean()


class Align(Stage):
    """head_weight > 0 adds, with that weight, a per-head MSE: every hybrid head's fused output (what enters
    o_proj) against the original head's output, so each GDN head is pulled toward the head it replaces."""

    name = "align"

    def __init__(self, head_weight: float = 0.0):
        if head_weight < 0:
            raise ValueError(f"head_weight must be at least 0, got {head_weight}")
        self.head_weight = head_weight

    def trainable(self, student):
        return [p for attn in _attention(student) for p in attn.parameters()]

    def loss(self, student, teacher, ids):
        inputs: dict[int, torch.Tensor] = {}
        targets: dict[int, torch.Tensor] = {}

        def grab_input(i):
            def hook(module, args, kwargs):
                inputs[i] = _hidden(args, kwargs).detach()  # [B, T, d]

            return hook

        def grab_output(store):
            # an HF attention module returns (output, weights); hydrahead's hybrid attention the output alone
            return lambda i: (lambda module, args, out: store.__setitem__(i, out[0] if isinstance(out, tuple) else out))

        head_targets: dict[int, torch.Tensor] = {}
        head_outputs: dict[int, torch.Tensor] = {}

        def grab_heads(store):  # the input of o_proj: every head's output, concatenated
            return lambda i: (lambda module, args: store.__setitem__(i, args[0]))

        def o_projs(model):
            return [attn.o_proj for attn in _attention(model)] if self.head_weight else []

        with torch.no_grad(), _hooks(_attention(teacher), grab_input, grab_output(targets)), \
                _hooks(o_projs(teacher), _pre_args(grab_heads(head_targets))):
            teacher(input_ids=ids, use_cache=False, logits_to_keep=1)

        def teacher_forced(i):
            def hook(module, args, kwargs):
                if args:
                    return (inputs[i], *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": inputs[i]}

            return hook

        outputs: dict[int, torch.Tensor] = {}
        with _hooks(_attention(student), teacher_forced, grab_output(outputs)), \
                _hooks(o_projs(student), _pre_args(grab_heads(head_outputs))):
            student(input_ids=ids, use_cache=False, logits_to_keep=1)
        for i in sorted(targets):
            if outputs[i].shape != targets[i].shape:  # a broadcast MSE would train on the wrong target, silently
                raise RuntimeError(f"layer {i}: hybrid attention output {tuple(outputs[i].shape)} against the "
                                   f"original's {tuple(targets[i].shape)}")
        per_layer = [
            F.mse_loss(outputs[i].float(), targets[i].float()) / targets[i].float().pow(2).mean().clamp(min=1e-12)
            for i in sorted(targets)
        ]
        loss = torch.stack(per_layer).mean()
        logs = {f"mse_l{i}": v.item() for i, v in enumerate(per_layer)}
        if self.head_weight:
            head_dim = _attention(teacher)[0].head_dim
            head = _head_mse(head_outputs, head_targets, head_dim)
            logs["layer_mse"], logs["head_mse"] = loss.item(), head.item()
            loss = loss + self.head_weight * head
        return loss, {"loss": loss.item(), **logs}


class Distill(Stage):
    name = "distill"

    def __init__(self, kl_weight: float = 1.0, ce_weight: float = 0.5, temperature: float = 1.0):
        self.kl_weight, self.ce_weight, self.temperature = kl_weight, ce_weight, temperature

    def loss(self, student, teacher, ids):
        with torch.no_grad():
            target = teacher(input_ids=ids, use_cache=False).logits.float()
        logits = student(input_ids=ids, use_cache=False).logits.float()
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(logits / t, -1).flatten(0, 1), F.log_softmax(target / t, -1).flatten(0, 1),
            log_target=True, reduction="batchmean",
        ) * t * t
        ce = _next_token_ce(logits, ids)
        loss = self.kl_weight * kl + self.ce_weight * ce
        return loss, {"loss": loss.item(), "kl": kl.item(), "ce": ce.item()}


class LongContext(Stage):
    name = "long"
    needs_teacher = False

    def loss(self, student, teacher, ids):
        ce = _next_token_ce(student(input_ids=ids, use_cache=False).logits, ids)
        return ce, {"loss": ce.item(), "ce": ce.item()}


def make_stage(config) -> Stage:
    if config.stage == "align":
        return Align(config.head_weight)
    if config.stage == "distill":
        return Distill(config.kl_weight, config.ce_weight, config.temperature)
    return LongContext()
