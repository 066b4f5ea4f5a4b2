"""A self-check run before a model is evaluated: decoding with the model's own cache must give the logits
of one forward over the whole sequence.

A cache that is silently not used (transformers 5.24 renamed the cache argument, and a hybrid that swallowed
the new name decoded every token without its cache) turns every score into noise without an error. Ten
tokens through the cache cost a few milliseconds and catch exactly that.
"""

from __future__ import annotations

import torch

from .compat import cache_arg, output_cache
from .errors import HydraheadError


class CachedDecodingError(HydraheadError):
    pass


@torch.no_grad()
def check_cached_decoding(model, prompt_tokens: int = 24, new_tokens: int = 8, seed: int = 0) -> float:
    """Prefill `prompt_tokens` random tokens, decode `new_tokens` more one at a time through the cache the model
    builds, and compare with one forward over all of them. Returns the largest difference relative to the
    logits' scale; raises CachedDecodingError if it is beyond float rounding for the model's dtype."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, prompt_tokens + new_tokens), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(device)
    was_training = model.training
    model.eval()
    try:
        full = model(input_ids=ids, use_cache=False).logits.float()  # [1, T, V]
        out = model(input_ids=ids[:, :prompt_tokens], use_cache=True)
        cache, steps = output_cache(out), [out.logits]
        if cache is None:
            raise CachedDecodingError(f"{type(model).__name__} returned no cache from a forward with use_cache=True")
        for t in range(prompt_tokens, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], use_cache=True, **cache_arg(cache))
            steps.append(out.logits)
    finally:
        model.train(was_training)
    cached = torch.cat(steps, dim=1).float()
    relative = ((cached - full).abs().max() / full.abs().max().clamp(min=1e-6)).item()
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if not relative <= tolerance:
        raise CachedDecodingError(
            f"decoding through the cache disagrees with a full forward ({relative:.2g} of the logits' scale, "
            f"tolerance {tolerance:g}): the cache is not being used as it should, and every score would be wrong. "
            f"{type(model).__name__}, transformers {_transformers_version()}"
        )
    return relative


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
