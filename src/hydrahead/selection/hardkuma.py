"""Gates that learn which KV heads keep their own attention at decode: HardKuma (Bastings et al. 2019), the
gate LycheeDecode learns roles with, and a DuoAttention-style L1 gate as the baseline.

HardKuma: s ~ Kumaraswamy(a, b), sampled by inverting its CDF F(x) = 1 - (1 - x^a)^b at u ~ U(0, 1):
s = (1 - (1 - u)^(1/b))^(1/a). Stretched to t = l + (r - l) s with (l, r) = (-0.1, 1.1) and clamped,
z = min(1, max(0, t)) puts finite mass on exactly 0 and exactly 1, so a gate can really switch a head off
while the sample stays differentiable in (a, b). The expected number of open gates (the L0 norm) is
sum P(z != 0) = sum 1 - F(x0), x0 = -l / (r - l), differentiable too: that is what the constraint holds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOW, HIGH = -0.1, 1.1


def kuma_cdf(x, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """F(x) = 1 - (1 - x^a)^b for x in [0, 1], computed in log space so small a, b stay finite."""
    x = torch.as_tensor(x, dtype=a.dtype, device=a.device).clamp(1e-12, 1 - 1e-7)
    return -torch.expm1(b * torch.log1p(-torch.exp(a * torch.log(x))))


def prob_zero(a: torch.Tensor, b: torch.Tensor, low: float = LOW, high: float = HIGH) -> torch.Tensor:
    """P(z = 0) = P(t <= 0) = F(x0), x0 = -l / (r - l)."""
    return kuma_cdf(-low / (high - low), a, b)


def prob_one(a: torch.Tensor, b: torch.Tensor, low: float = LOW, high: float = HIGH) -> torch.Tensor:
    """P(z = 1) = P(t >= 1) = 1 - F(x1), x1 = (1 - l) / (r - l)."""
    return 1 - kuma_cdf((1 - low) / (high - low), a, b)


def expected_l0(a: torch.Tensor, b: torch.Tensor, low: float = LOW, high: float = HIGH) -> torch.Tensor:
    """P(z != 0) = 1 - P(z = 0): summed over gates, the expected number of open ones."""
    return 1 - prob_zero(a, b, low, high)


def sample(a: torch.Tensor, b: torch.Tensor, low: float = LOW, high: float = HIGH, generator=None) -> torch.Tensor:
    """One reparameterised HardKuma sample per element of a and b (same shape)."""
    u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device).clamp(1e-6, 1 - 1e-6)
    # s = (1 - (1 - u)^(1/b))^(1/a), with the powers taken through log1p / expm1 for stability
    s = torch.exp(torch.log(-torch.expm1(torch.log1p(-u) / b)) / a)
    return (low + (high - low) * s).clamp(0, 1)


def expected_value(a: torch.Tensor, b: torch.Tensor, low: float = LOW, high: float = HIGH, points: int = 513) -> torch.Tensor:
    """E[z] = integral over t in [0, 1] of P(z > t) = 1 - F((t - l) / (r - l)), by the trapezoid rule."""
    t = torch.linspace(0, 1, points, dtype=a.dtype, device=a.device)
    survival = 1 - kuma_cdf(((t - low) / (high - low)).view(-1, *[1] * a.dim()), a, b)  # [points, *a.shape]
    return torch.trapezoid(survival, t, dim=0)


class HardKumaGate(nn.Module):
    """One HardKuma gate per entry of `shape` (e.g. [layers, KV heads]), parameterised by log a and log b.

    `init_density` sets P(z != 0) at the start (b = e, a solved for): starting at the target share rather
    than fully open keeps the Lagrangian from overshooting while every gate saturates at once; the gates that
    the loss needs open up from there. None starts at a = b = 1 (t uniform, density 11/12).
    """

    BOUND = 3.0  # |log a|, |log b| stay below this, softly: beyond it P(z = 0) and its gradient underflow

    def __init__(self, shape, init_density: float | None = None):
        super().__init__()
        log_a, log_b = 0.0, 0.0
        if init_density is not None:
            if not 0 < init_density < 1:
                raise ValueError(f"init_density must lie in (0, 1), got {init_density}")
            x0, log_b = -LOW / (HIGH - LOW), 1.0
            # (1 - x0^a)^b = density  <=>  a = log(1 - density^(1/b)) / log(x0)
            a = math.log(1 - init_density ** math.exp(-log_b)) / math.log(x0)
            log_a = self.BOUND * math.atanh(max(-0.999, min(0.999, math.log(a) / self.BOUND)))
            log_b = self.BOUND * math.atanh(log_b / self.BOUND)
        self.log_a = nn.Parameter(torch.full(tuple(shape), float(log_a)))
        self.log_b = nn.Parameter(torch.full(tuple(shape), float(log_b)))

    def ab(self) -> tuple[torch.Tensor, torch.Tensor]:
        # softly bounded, so the powers 1/a and 1/b stay representable in float32; a hard clamp would stop the
        # gradient at the bound, and a gate pinned there could never be moved by the constraint again
        bound = self.BOUND
        return (bound * torch.tanh(self.log_a / bound)).exp(), (bound * torch.tanh(self.log_b / bound)).exp()

    def forward(self, generator=None) -> torch.Tensor:
        """A sample z [shape] in training, the expected value in eval mode."""
        a, b = self.ab()
        return sample(a, b, generator=generator) if self.training else expected_value(a, b)

    def density(self) -> torch.Tensor:
        """[shape] P(z != 0): the expected L0 of each gate."""
        return expected_l0(*self.ab())

    def values(self) -> torch.Tensor:
        """[shape] E[z], the deterministic gate that roles are exported from."""
        return expected_value(*self.ab()).detach()

    def penalty(self) -> torch.Tensor:
        return self.density()


class L1Gate(nn.Module):
    """DuoAttention's gate: a value alpha in [0, 1] per head (starting at 1, dense) with an L1 penalty; the
    mix is alpha * dense + (1 - alpha) * sparse. No sampling, no exact zeros: roles come from ranking alpha."""

    def __init__(self, shape, init: float = 1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.full(tuple(shape), float(init)))

    def forward(self, generator=None) -> torch.Tensor:
        return self.alpha.clamp(0, 1)

    def density(self) -> torch.Tensor:
        return self.alpha.clamp(0, 1)

    def values(self) -> torch.Tensor:
        return self.alpha.detach().clamp(0, 1)

    def penalty(self) -> torch.Tensor:
        return self.alpha.abs()

    @torch.no_grad()
    def project(self) -> None:
        """Back into [0, 1] after an optimiser step, as DuoAttention clamps its gate values."""
        self.alpha.clamp_(0, 1)


class DensityConstraint:
    """Holds an expected density (share of open gates) at `target` by a Lagrangian: the loss gets
    multiplier * (density - target); the multiplier takes a gradient-ascent step on that same term after each
    optimiser step, growing while the density is above the target and shrinking (below zero if need be) while
    it is under, so the constraint is met without hand-tuning a penalty weight."""

    def __init__(self, target: float, lr: float = 0.2):
        self.target, self.lr, self.multiplier = float(target), float(lr), 0.0

    def term(self, density: torch.Tensor) -> torch.Tensor:
        return self.multiplier * (density - self.target)

    def update(self, density: torch.Tensor) -> None:
        self.multiplier += self.lr * (float(density.detach()) - self.target)


GATES = {"hardkuma": HardKumaGate, "l1": L1Gate}
