"""The switches of the hybrid attention: the paper's ablations, stored in the converted model's config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import HydraheadError

FUSIONS = ("scale", "concat", "gate")
FA_POSITIONS = ("nope_logscale", "rope", "rope_clamped")


@dataclass(frozen=True)
class HybridOptions:
    """How FA and GDN heads are built and fused.

    fusion: `scale` (per-head RMSNorm, then a learned per-head gamma; the paper's choice), `concat` (raw head
    outputs, as the original model), `gate` (per-head RMSNorm, then an input-dependent softmax over heads).
    fa_position: `nope_logscale` (FA heads drop RoPE and scale q by a log-length factor), `rope` (kept), or
        `rope_clamped` (RoPE up to `logscale_length` tokens back, one fixed distance beyond: ReRoPE; with the
        log-length query scale; a plain cache only, see attention/clamped_rope.py).
    gdn_mha: every GDN query head gets its own copy of its KV head's k/v projection (MHA-like), or shares it.
    conv_size: the GDN short causal convolution's width.
    logscale_length: the number of keys up to which the FA query scale stays 1 (the native context length).
    """

    fusion: str = "scale"
    fa_position: str = "nope_logscale"
    gdn_mha: bool = True
    conv_size: int = 4
    logscale_length: int = 4096

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise HydraheadError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.fa_position not in FA_POSITIONS:
            raise HydraheadError(f"fa_position must be one of {FA_POSITIONS}, not {self.fa_position!r}")
        if self.conv_size < 1:
            raise HydraheadError(f"conv_size must be at least 1, not {self.conv_size}")
        if self.logscale_length < 2:
            raise HydraheadError(f"logscale_length must be at least 2, not {self.logscale_length}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HybridOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HydraheadError(f"unknown hybrid options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)
