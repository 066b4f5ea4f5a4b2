"""The shipped teacher with a 4-bit KV cache through `hydrahead eval`, as a user runs it."""

import json

import pytest
import torch

from hydrahead.cli import main
from hydrahead.compat import cache_arg
from hydrahead.kv import QuantizedKVCache, blockwise_attention
from hydrahead.models import load_causal_lm
from hydrahead.tasks import generate

from ..conftest import TEACHER

LIMIT = 25
# a small window, so that most of a 512-token prompt is really held in 4 bits
KV_ARGS = ["--kv-window", "32", "--kv-sink", "4", "--kv-block", "64"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _eval(kv_format, out):
    code = main(["eval", "--model", str(TEACHER), "--tasks", "niah_single_1", "--lengths", "512", "--limit", str(LIMIT),
                 "--kv-format", kv_format, *KV_ARGS, "--output_path", str(out), "--quiet"])
    assert code == 0
    (folder,) = list(out.iterdir())
    return json.loads((folder / "metrics.json").read_text())


def test_tq4_int4_scores_niah_close_to_bf16(tmp_path):
    bf16 = _eval("bf16", tmp_path / "bf16")
    tq4 = _eval("tq4:int4", tmp_path / "tq4")
    assert tq4["config"]["kv_cache"] == {"kv_format": "tq4:int4-token", "window": 32, "sink": 4, "block_size": 64}
    reference, quantized = bf16["results"]["niah_single_1"]["512"], tq4["results"]["niah_single_1"]["512"]
    assert reference >= 80  # the teacher retrieves at its native length
    assert quantized >= reference - 8  # at most two of 25 samples lost


def test_most_of_the_prompt_is_quantized():
    model, tok = load_causal_lm(TEACHER)
    prompt = generate("niah_single_1", tok, 512, 1, seed=0)[0].prompt()
    ids = tok(prompt, return_tensors="pt").input_ids
    cache = QuantizedKVCache(model.config, "tq4:int4", window=32, sink=4, block_size=64)
    with torch.no_grad(), blockwise_attention(model):
        model(ids, use_cache=True, **cache_arg(cache))
    assert ids.shape[1] > 440 and cache.quantized_tokens >= ids.shape[1] - 4 - 32 - 63
    parts = cache.parts()
    as_bf16 = cache.quantized_tokens * 4 * 2 * 2 * 32 * 2  # layers x KV heads x (K, V) x head_dim x 2 bytes
    assert parts["quantized_payload"] + parts["quantized_scales"] < 0.3 * as_bf16  # (18 + 20) / 128 bytes
