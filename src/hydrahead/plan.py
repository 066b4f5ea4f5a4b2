"""The head plan: for every layer, which query heads keep full attention (FA) and which run Gated DeltaNet;
per KV head, its decode role and the formats its keys and values are stored in; and the decode settings.

A plan is tied to a model shape (layers, query heads, KV heads, head_dim). Its KV cost follows GQA: a KV
head is cached if any query head of its group runs FA. At `query` granularity heads are chosen one by
one (as the paper does); at `kv` granularity whole KV groups are FA or GDN, which is what saves cache.

Format `hydrahead.plan/2` adds `kv_formats` ([layer][KV head] "KEYS:VALUES" specs, `hydrahead.kv.spec`),
`kv_sizes` (sink, window, block_size: one number, or a [layer][KV head] table) and `decode` (the sparse
decoding settings, `SparseConfig`); `hydrahead.plan/1` files load as plans without them.

Bytes. `kv_bytes(tokens, batch, dtype)` is exact: the bytes a cache built from the plan holds after
`tokens` tokens (sink and window tokens in `dtype`, the model's; quantized blocks with every scale, norm
and zero point; GDN states apart, `gdn_state_bytes`). `kv_bytes_per_token(dtype)` is the steady-state
cost of one more token: one quantized block of every cached KV head / block_size, per-block scalars
included (e.g. fp8's tensor scale adds 4 / block_size); without formats, every token in `dtype`. The
sink and window are a fixed extra of up to sink + window + block_size - 1 tokens in `dtype` per head.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import HydraheadError

FORMAT = "hydrahead.plan/2"
READABLE_FORMATS = ("hydrahead.plan/1", FORMAT)
KV_SIZE_DEFAULTS = {"sink": 4, "window": 128, "block_size": 64}  # as QuantizedKVCache's
GRANULARITIES = ("query", "kv")
GDN_STATE_BYTES_PER_VALUE = 4  # the recurrent state is kept in float32
DECODE_ROLES = ("retrieval", "sparse")  # LycheeDecode: a KV head selects tokens at decode, or reuses them


class PlanError(HydraheadError):
    pass


_DTYPE_BYTES = {
    "float32": 4, "fp32": 4, "float": 4,
    "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "float8": 1, "fp8": 1, "float8_e4m3fn": 1,
}


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype or its name ('bf16', 'float32', 'fp8', ...)."""
    if hasattr(dtype, "itemsize"):
        return int(dtype.itemsize)
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise PlanError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclass
class ModelShape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> ModelShape:
        """The attention shape of an HF config (Qwen3, Llama and their kin); a ModelShape is its own shape, so
        the plans built from a config (HeadPlan.full_attention, ...) also serve callers that hold only a shape."""
        if isinstance(config, ModelShape):
            return config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(config.num_hidden_layers, heads, kv_heads, head_dim)

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def describe(self) -> str:
        return (
            f"{self.num_layers} layers x {self.num_heads} query heads "
            f"({self.num_kv_heads} KV heads, head_dim {self.head_dim})"
        )


@dataclass(frozen=True)
class HeadKV:
    """How one cached KV head is stored: a canonical "KEYS:VALUES" format spec, and the tokens kept in the
    model's dtype at the start (sink) and end (window, plus up to block_size - 1 waiting to be quantized)."""

    spec: str
    sink: int
    window: int
    block_size: int


@dataclass
class HeadPlan:
    """Per layer, the sorted query-head indices that run FA; every other head runs GDN. Optionally, per
    layer and KV head: the decode role of sparse decoding ("retrieval" or "sparse"; layer 0 retrieval) and
    the storage of keys and values (`kv_formats`, with `kv_sizes`); and the sparse decoding settings
    (`decode`: budget, mode, sink, recent, block_size, dense_every, dense_share, score)."""

    shape: ModelShape
    fa_heads: list[list[int]]
    granularity: str = "query"
    meta: dict = field(default_factory=dict)
    decode_roles: list[list[str]] | None = None
    kv_formats: list[list[str]] | None = None
    kv_sizes: dict | None = None
    decode: dict | None = None

    def __post_init__(self):
        self.fa_heads = [sorted(int(h) for h in layer) for layer in self.fa_heads]
        if self.decode_roles is not None:
            self.decode_roles = [list(layer) if isinstance(layer, (list, tuple)) else layer for layer in self.decode_roles]
        self.validate()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config, fa_heads, granularity: str = "query", **meta) -> HeadPlan:
        return cls(ModelShape.of(config), [list(layer) for layer in fa_heads], granularity, dict(meta))

    @classmethod
    def full_attention(cls, config) -> HeadPlan:  # config: an HF config or a ModelShape
        """Every head FA: the original model, expressed as a plan."""
        shape = ModelShape.of(config)
        return cls(shape, [list(range(shape.num_heads))] * shape.num_layers, "kv", {"strategy": "full_attention"})

    @classmethod
    def all_gdn(cls, config) -> HeadPlan:
        shape = ModelShape.of(config)
        return cls(shape, [[] for _ in range(shape.num_layers)], "kv", {"strategy": "all_gdn"})

    @classmethod
    def layerwise(cls, config, fa_layers) -> HeadPlan:
        """Whole layers FA (a layer-wise hybrid such as 3:1), the rest all GDN."""
        shape = ModelShape.of(config)
        fa_layers = set(fa_layers)
        bad = sorted(layer for layer in fa_layers if not 0 <= layer < shape.num_layers)
        if bad:
            raise PlanError(f"layer index {bad[0]} out of range: the model has {shape.num_layers} layers")
        heads = [list(range(shape.num_heads)) if layer in fa_layers else [] for layer in range(shape.num_layers)]
        return cls(shape, heads, "kv", {"strategy": "layerwise"})

    # ---- checks -------------------------------------------------------------------------------

    def validate(self) -> None:
        s = self.shape
        if self.granularity not in GRANULARITIES:
            raise PlanError(f"granularity must be one of {GRANULARITIES}, not {self.granularity!r}")
        if s.num_heads % s.num_kv_heads:
            raise PlanError(f"{s.num_heads} query heads cannot be shared by {s.num_kv_heads} KV heads")
        if len(self.fa_heads) != s.num_layers:
            raise PlanError(f"the plan lists {len(self.fa_heads)} layers but its model has {s.num_layers}")
        for layer, heads in enumerate(self.fa_heads):
            bad = [h for h in heads if not 0 <= h < s.num_heads]
            if bad:
                raise PlanError(f"layer {layer}: head index {bad[0]} out of range (0..{s.num_heads - 1})")
            if len(set(heads)) != len(heads):
                raise PlanError(f"layer {layer}: a head is listed twice in {heads}")
            if self.granularity == "kv":
                for kv in self.fa_kv_heads(layer):
                    group = set(self.group(kv))
                    if not group <= set(heads):
                        raise PlanError(
                            f"layer {layer}: at kv granularity KV group {kv} (query heads {sorted(group)}) must be "
                            f"all FA or all GDN, but only {sorted(group & set(heads))} are FA"
                        )
        self._validate_roles()
        self._validate_kv()
        self._validate_decode()

    def _table(self, name: str, table, check) -> list[list]:
        """A [layers][KV heads] table, each entry passed through `check(value, layer, kv)`."""
        s = self.shape
        if not isinstance(table, list) or len(table) != s.num_layers:
            n = len(table) if isinstance(table, list) else type(table).__name__
            raise PlanError(f"{name} lists {n} layers but the model has {s.num_layers}")
        rows = []
        for layer, per_kv in enumerate(table):
            if not isinstance(per_kv, list) or len(per_kv) != s.num_kv_heads:
                raise PlanError(f"{name} layer {layer}: expected one entry per KV head ({s.num_kv_heads}), got {per_kv!r}")
            rows.append([check(value, layer, kv) for kv, value in enumerate(per_kv)])
        return rows

    def _validate_kv(self) -> None:
        if self.kv_formats is None:
            if self.kv_sizes:
                raise PlanError("kv_sizes (sink, window, block_size) only apply with kv_formats")
            return
        from .kv import KVFormatError
        from .kv.spec import canonical_spec, parse_cache_spec

        built: dict[str, str] = {}

        def spec(value, layer, kv):
            if value not in built:
                try:
                    keys, values = parse_cache_spec(value)
                    keys.build(self.shape.head_dim), values.build(self.shape.head_dim)
                    built[value] = canonical_spec(value)
                except KVFormatError as e:
                    raise PlanError(f"kv_formats layer {layer}, KV head {kv}: {e}") from None
            return built[value]

        self.kv_formats = self._table("kv_formats", self.kv_formats, spec)
        sizes = dict(self.kv_sizes or {})
        unknown = sorted(set(sizes) - set(KV_SIZE_DEFAULTS))
        if unknown:
            raise PlanError(f"kv_sizes has no entry {unknown[0]!r}; it takes {', '.join(KV_SIZE_DEFAULTS)}")
        for name, value in sizes.items():
            if isinstance(value, list):
                sizes[name] = self._table(f"kv_sizes.{name}", value, lambda v, layer, kv: v)
        self.kv_sizes = sizes
        from .kv.layer import KVCacheError, check_sizes

        for layer in range(self.shape.num_layers):
            for kv in range(self.shape.num_kv_heads):
                head = self.head_kv(layer, kv)
                try:
                    check_sizes(head.window, head.sink, head.block_size)
                except KVCacheError as e:
                    raise PlanError(f"kv_sizes layer {layer}, KV head {kv}: {e}") from None

    def _validate_decode(self) -> None:
        if self.decode is None:
            return
        from .decoding.config import DecodingError, SparseConfig

        try:
            SparseConfig(**self.decode)
        except TypeError:
            known = ", ".join(SparseConfig.__dataclass_fields__)
            raise PlanError(f"decode settings {sorted(self.decode)}: it takes {known}") from None
        except DecodingError as e:
            raise PlanError(f"decode settings: {e}") from None
        self.decode = dict(self.decode)

    def _validate_roles(self) -> None:
        roles, s = self.decode_roles, self.shape
        if roles is None:
            return
        if not isinstance(roles, list) or len(roles) != s.num_layers:
            n = len(roles) if isinstance(roles, list) else type(roles).__name__
            raise PlanError(f"decode_roles lists {n} layers but the model has {s.num_layers}")
        for layer, per_kv in enumerate(roles):
            if not isinstance(per_kv, list) or len(per_kv) != s.num_kv_heads:
                raise PlanError(f"decode_roles layer {layer}: expected one role per KV head ({s.num_kv_heads}), got {per_kv!r}")
            bad = [r for r in per_kv if r not in DECODE_ROLES]
            if bad:
                raise PlanError(f"decode_roles layer {layer}: unknown role {bad[0]!r}; use one of {DECODE_ROLES}")
        if any(r != "retrieval" for r in roles[0]):
            raise PlanError(f"decode_roles: every KV head of layer 0 must be retrieval (nothing below it to reuse), got {roles[0]}")

    def with_roles(self, roles, **meta) -> HeadPlan:
        """A copy of this plan with decode roles ([L][KV] of "retrieval" / "sparse"; layer 0 retrieval)."""
        return replace(self, fa_heads=[list(h) for h in self.fa_heads], meta={**self.meta, **meta},
                       decode_roles=[list(layer) for layer in roles])

    def with_kv_formats(self, formats, sink: int | list | None = None, window: int | list | None = None,
                        block_size: int | list | None = None) -> HeadPlan:
        """A copy whose KV heads store keys and values in `formats`: one "KEYS:VALUES" spec for every head, or
        a [L][KV] table of them; sink, window and block_size (tokens, one number or a [L][KV] table) replace
        the plan's where given."""
        if isinstance(formats, str):
            formats = [[formats] * self.shape.num_kv_heads for _ in range(self.shape.num_layers)]
        sizes = {**(self.kv_sizes or {}),
                 **{k: v for k, v in (("sink", sink), ("window", window), ("block_size", block_size)) if v is not None}}
        return replace(self, fa_heads=[list(h) for h in self.fa_heads], meta=dict(self.meta),
                       kv_formats=[list(layer) for layer in formats], kv_sizes=sizes)

    def without_kv_formats(self) -> HeadPlan:
        """A copy that keeps every cached KV head in the model's dtype (a plain cache)."""
        return replace(self, fa_heads=[list(h) for h in self.fa_heads], meta=dict(self.meta), kv_formats=None,
                       kv_sizes=None)

    def with_decode(self, **settings) -> HeadPlan:
        """A copy with sparse decoding settings (`SparseConfig` fields: budget, mode, sink, recent, ...)."""
        return replace(self, fa_heads=[list(h) for h in self.fa_heads], meta=dict(self.meta),
                       decode={**(self.decode or {}), **settings})

    def head_kv(self, layer: int, kv_head: int) -> HeadKV:
        """The storage of KV head `kv_head` of `layer` (a plan with kv_formats)."""
        if self.kv_formats is None:
            raise PlanError("this plan has no kv_formats: its KV heads are stored as the model computes them")
        sizes = {}
        for name, default in KV_SIZE_DEFAULTS.items():
            value = (self.kv_sizes or {}).get(name, default)
            sizes[name] = value[layer][kv_head] if isinstance(value, list) else value
        return HeadKV(self.kv_formats[layer][kv_head], **sizes)

    def kv_groups(self, layer: int) -> list[tuple[HeadKV, list[int]]]:
        """The cached KV heads of `layer` grouped by identical storage: (storage, positions in `fa_kv_heads`),
        in order of first appearance. A cache keeps each group in one quantized layer."""
        groups: dict[HeadKV, list[int]] = {}
        for position, kv in enumerate(self.fa_kv_heads(layer)):
            groups.setdefault(self.head_kv(layer, kv), []).append(position)
        return list(groups.items())

    @property
    def num_retrieval(self) -> int:
        """KV heads with the retrieval decode role (0 without roles)."""
        return sum(r == "retrieval" for layer in self.decode_roles or [] for r in layer)

    def check_model(self, config) -> None:
        """Raise unless this plan was made for a model of `config`'s shape."""
        other = ModelShape.of(config)
        if other != self.shape:
            raise PlanError(f"the plan is for a model with {self.shape.describe()}; this model has {other.describe()}")

    # ---- per layer ----------------------------------------------------------------------------

    def group(self, kv_head: int) -> list[int]:
        g = self.shape.group_size
        return list(range(kv_head * g, (kv_head + 1) * g))

    def gdn_heads(self, layer: int) -> list[int]:
        fa = set(self.fa_heads[layer])
        return [h for h in range(self.shape.num_heads) if h not in fa]

    def fa_kv_heads(self, layer: int) -> list[int]:
        """The KV heads of `layer` that must be cached: those with at least one FA query head."""
        return sorted({h // self.shape.group_size for h in self.fa_heads[layer]})

    def gdn_kv_heads(self, layer: int) -> list[int]:
        """The KV heads whose k/v projections feed this layer's GDN heads."""
        return sorted({h // self.shape.group_size for h in self.gdn_heads(layer)})

    def kinds(self, layer: int) -> list[str]:
        fa = set(self.fa_heads[layer])
        return ["fa" if h in fa else "gdn" for h in range(self.shape.num_heads)]

    # ---- totals -------------------------------------------------------------------------------

    @property
    def num_fa(self) -> int:
        return sum(len(heads) for heads in self.fa_heads)

    @property
    def num_gdn(self) -> int:
        return self.shape.num_layers * self.shape.num_heads - self.num_fa

    @property
    def ratio(self) -> str:
        """GDN:FA query heads, the paper's LA:FA ratio ('7:1'; 'all FA' / 'all GDN' at the ends)."""
        if self.num_gdn == 0:
            return "all FA"
        if self.num_fa == 0:
            return "all GDN"
        value = self.num_gdn / self.num_fa
        return f"{value:g}:1" if value == int(value) else f"{value:.2f}:1"

    @property
    def num_cached_kv(self) -> int:
        """KV heads the cache keeps, over all layers."""
        return sum(len(self.fa_kv_heads(layer)) for layer in range(self.shape.num_layers))

    def kv_bytes_per_token(self, dtype="bfloat16") -> int | float:
        """Bytes the FA heads add to the KV cache for every token (keys and values, all layers): in `dtype`, or
        with kv_formats the steady-state cost of their quantized blocks (exact, possibly fractional)."""
        if self.kv_formats is not None:
            from .kv.sizes import plan_bytes_per_token

            return plan_bytes_per_token(self)
        return self.num_cached_kv * 2 * self.shape.head_dim * dtype_bytes(dtype)

    def kv_bytes(self, tokens: int, batch_size: int = 1, dtype="bfloat16") -> int:
        """The exact bytes of keys and values a cache made from this plan holds after `tokens` tokens of a batch
        (sink and window in `dtype`, the model's; GDN states not included)."""
        if self.kv_formats is not None:
            from .kv.sizes import plan_kv_bytes

            return plan_kv_bytes(self, tokens, batch_size, dtype)
        return tokens * batch_size * self.kv_bytes_per_token(dtype)

    def full_kv_bytes_per_token(self, dtype="bfloat16") -> int:
        """The same figure for the original model (every KV head cached)."""
        return self.shape.num_layers * self.shape.num_kv_heads * 2 * self.shape.head_dim * dtype_bytes(dtype)

    def gdn_state_bytes(self, batch_size: int = 1, conv_size: int = 4, mha: bool = True, dtype="bfloat16") -> int:
        """Fixed bytes of the GDN states, whatever the length: float32 [K, V] per GDN head plus conv history.

        The conv keeps `conv_size - 1` past inputs of every q, k and v channel; with `mha` each GDN query
        head has its own k and v, otherwise it shares those of its KV head.
        """
        d = self.shape.head_dim
        total = 0
        for layer in range(self.shape.num_layers):
            n_q = len(self.gdn_heads(layer))
            if n_q == 0:
                continue
            n_kv = n_q if mha else len(self.gdn_kv_heads(layer))
            total += n_q * d * d * GDN_STATE_BYTES_PER_VALUE
            total += (n_q + 2 * n_kv) * d * (conv_size - 1) * dtype_bytes(dtype)
        return total * batch_size

    def summary(self, dtype="bfloat16") -> str:
        per_token = self.kv_bytes_per_token(dtype)
        stored = "quantized per head" if self.kv_formats is not None else dtype
        full = self.full_kv_bytes_per_token(dtype)
        lines = [
            f"head plan for {self.shape.describe()}, granularity {self.granularity}",
            f"  {self.num_fa} FA / {self.num_gdn} GDN query heads (GDN:FA {self.ratio})",
            f"  KV cache {per_token:g} B/token ({stored}); original {full} B/token ({dtype}, "
            f"{full / per_token if per_token else float('inf'):.1f}x); GDN state {self.gdn_state_bytes(dtype=dtype)} B",
        ]
        if self.decode is not None:
            lines.append(f"  sparse decoding: {', '.join(f'{k} {v}' for k, v in self.decode.items())}")
        for layer in range(self.shape.num_layers):
            kinds = "".join("F" if k == "fa" else "." for k in self.kinds(layer))
            roles = "".join(r[0].upper() for r in self.decode_roles[layer]) if self.decode_roles else ""
            formats = ""
            if self.kv_formats is not None and self.fa_kv_heads(layer):
                formats = "  KV formats " + " ".join(self.kv_formats[layer][kv] for kv in self.fa_kv_heads(layer))
            lines.append(f"  layer {layer:3d}  {kinds}  FA heads {self.fa_heads[layer]}  cached KV {self.fa_kv_heads(layer)}"
                         + (f"  decode roles {roles}" if roles else "") + formats)
        return "\n".join(lines)

    # ---- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": vars(self.shape).copy(),
            "granularity": self.granularity,
            "fa_heads": self.fa_heads,
            "meta": self.meta,
            **({"decode_roles": self.decode_roles} if self.decode_roles is not None else {}),
            **({"kv_formats": self.kv_formats} if self.kv_formats is not None else {}),
            **({"kv_sizes": self.kv_sizes} if self.kv_sizes else {}),
            **({"decode": self.decode} if self.decode is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> HeadPlan:
        if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
            raise PlanError(f"{source} is not a hydrahead head plan (expected \"format\": \"{FORMAT}\")")
        try:
            shape = ModelShape(**data["model"])
            return cls(shape, data["fa_heads"], data.get("granularity", "query"), data.get("meta", {}),
                       data.get("decode_roles"), data.get("kv_formats"), data.get("kv_sizes"), data.get("decode"))
        except (KeyError, TypeError) as e:
            raise PlanError(f"{source}: malformed head plan ({e!r})") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1)
        # one line per layer: collapse the innermost lists of head indices, decode roles and KV formats
        text = re.sub(r'\[[-\d.,\s]*\]|\[(?:\s*"[^"\\]*",?)+\s*\]', lambda m: json.dumps(json.loads(m.group(0))), text)
        path.write_text(text + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadPlan:
        from .jsonfile import read_json

        return cls.from_dict(read_json(path, "plan file", PlanError), str(path))
