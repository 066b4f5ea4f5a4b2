"""The one place that knows how the transformers releases hydrahead supports differ.

transformers 5.24 renamed the cache argument of models and `generate()`, and the cache field of their
outputs, from `past_key_values` to `cache` (the old name warns until 5.40). hydrahead passes and reads the
cache under the installed release's name, found from a public signature rather than a version number.
"""

from __future__ import annotations

import inspect

from transformers import GenerationMixin

CACHE_KWARG = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
               else "past_key_values")


def cache_arg(cache) -> dict:
    """`model(..., **cache_arg(cache))`: the cache under the installed release's argument name."""
    return {CACHE_KWARG: cache}


def output_cache(output):
    """The cache a model's forward returned (a ModelOutput of any supported release)."""
    return output[CACHE_KWARG] if CACHE_KWARG in output else None
