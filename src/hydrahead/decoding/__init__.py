"""LycheeDecode: hybrid-head sparse decoding. Retrieval KV heads attend densely and select the top-k tokens;
sparse KV heads reuse the selection of the nearest lower retrieval head with the same KV index."""

# imported on first use, so that the command line's parser (decoding.cli) loads neither torch nor transformers
_LAZY = {
    "DecodeSetup": "run",
    "PlanRun": "run",
    "decode_setup": "run",
    "plan_decoding": "run",
    "DecodingError": "config",
    "SparseConfig": "config",
    "parse_budget": "config",
    "random_roles": "roles",
    "resolve_roles": "roles",
    "role_plan": "roles",
    "roles_from_scores": "roles",
    "roles_from_values": "roles",
    "uniform_roles": "roles",
    "select_tokens": "select",
    "sparse_decoding": "sparse",
    "DecodeStats": "state",
    "SparseState": "state",
    "RoleTrainingConfig": "train",
    "train_roles": "train",
}


from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "DecodeSetup",
    "DecodeStats",
    "DecodingError",
    "RoleTrainingConfig",
    "SparseConfig",
    "SparseState",
    "PlanRun",
    "decode_setup",
    "parse_budget",
    "plan_decoding",
    "random_roles",
    "resolve_roles",
    "role_plan",
    "roles_from_scores",
    "roles_from_values",
    "select_tokens",
    "sparse_decoding",
    "train_roles",
    "uniform_roles",
]
