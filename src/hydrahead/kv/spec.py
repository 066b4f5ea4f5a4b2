"""Cache format specs: "KEYS[:VALUES]", each side a format name with an optional variant.

Examples: "tq4:int4", "fp8", "int4-token" (keys grouped per token too), "fp8-head", "tq4-qjl:int4". A bare
name uses the codec's defaults, except that int4 keys are grouped per channel (KIVI): keys have a few large
fixed channels, and a per-token group would spend its whole range on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import get_format, parse_kv_format
from .base import KVFormat, KVFormatError

# variant -> the options it stands for, per format
VARIANTS: dict[str, dict[str, dict]] = {
    "int4": {"channel": {"axis": "channel"}, "token": {"axis": "token"}},
    "fp8": {"tensor": {"scale": "tensor"}, "head": {"scale": "head"}, "none": {"scale": "none"}},
    "tq4": {"qjl": {"qjl": True}},
}
ROLE_DEFAULTS = {("int4", "keys"): "channel", ("int4", "values"): "token"}


@dataclass
class FormatChoice:
    """One side of a spec: a registered format name, its options, and the label it is reported under."""

    name: str
    options: dict = field(default_factory=dict)
    label: str = ""

    def build(self, head_dim: int) -> KVFormat:
        return get_format(self.name, head_dim, **self.options)


def _side(text: str, role: str) -> FormatChoice:
    name, _, variant = text.partition("-")
    parse_kv_format(name)  # an unknown name gets the registry's error, which lists the known ones
    variant = variant or ROLE_DEFAULTS.get((name, role), "")
    if not variant:
        return FormatChoice(name, {}, name)
    known = VARIANTS.get(name, {})
    if variant not in known:
        takes = f"it takes {', '.join(known)}" if known else "it has no variants"
        raise KVFormatError(f"KV format {name!r} has no variant {variant!r}; {takes}")
    return FormatChoice(name, dict(known[variant]), f"{name}-{variant}")


def parse_cache_spec(spec: str) -> tuple[FormatChoice, FormatChoice]:
    """"tq4:int4" -> (keys, values); one side serves both, with each role's default variant."""
    parts = [part.strip() for part in str(spec).split(":")]
    if len(parts) > 2 or not all(parts):
        raise KVFormatError(f"a KV cache format is NAME or KEYS:VALUES (e.g. tq4:int4, fp8, int4-token), got {spec!r}")
    return _side(parts[0], "keys"), _side(parts[-1], "values")


def canonical_spec(spec: str) -> str:
    """The spec with every default spelled out: "int4" -> "int4-channel:int4-token"."""
    keys, values = parse_cache_spec(spec)
    return f"{keys.label}:{values.label}"
