"""A model directory is checked before use: each bad directory gets one line naming the problem, exit 2,
nothing written."""

import json
import shutil

import pytest

from hydrahead.models import ModelError, load_causal_lm, load_model, load_tokenizer
from hydrahead.tasks import TaskError, generate
from tests.conftest import cli_in_process


def copy_dir(src, dst, skip=()):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def empty_tokenizer(tokenizer):
    """A tokenizer that encodes every text to no tokens (what transformers 5 makes of an empty directory)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={}, merges=[])), eos_token=None)


def test_no_tokenizer_files(tiny_model_dir, tmp_path):
    bare = copy_dir(tiny_model_dir, tmp_path / "bare", skip={"tokenizer.json", "tokenizer_config.json"})
    with pytest.raises(ModelError, match="has no tokenizer files"):
        load_causal_lm(bare)


def test_a_tokenizer_that_encodes_to_nothing(tiny_model_dir, tmp_path, tokenizer):
    broken = copy_dir(tiny_model_dir, tmp_path / "broken", skip={"tokenizer.json", "tokenizer_config.json"})
    empty_tokenizer(tokenizer).save_pretrained(broken)
    with pytest.raises(ModelError, match="encodes text to no tokens"):
        load_tokenizer(broken)


def test_generators_stop_when_the_tokenizer_makes_no_progress(tokenizer):
    with pytest.raises(TaskError, match="the tokenizer makes no progress"):
        generate("niah_single_1", empty_tokenizer(tokenizer), 4096, 1)


def test_an_encoder_is_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                               vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match=r"is not a causal LM: its architectures are \['BertForMaskedLM'\]"):
        load_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model_type 'bert' is an encoder"):
        load_model(tmp_path)


def test_weights_that_do_not_match_the_config(tiny_model_dir, tmp_path):
    deeper = copy_dir(tiny_model_dir, tmp_path / "deeper")
    config = json.loads((deeper / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the weights have 2 layers: layer 2 would be random
    if "layer_types" in config:
        config["layer_types"] = config["layer_types"] + config["layer_types"][:1]
    (deeper / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"the weights do not match the config: missing \d+ \(model\.layers\.2\."):
        load_model(deeper)
    nothing = copy_dir(tiny_model_dir, tmp_path / "nothing", skip={"model.safetensors"})
    with pytest.raises(ModelError, match="has no weights"):
        load_model(nothing)


def test_the_cli_refuses_with_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    bare = copy_dir(tiny_model_dir, tmp_path / "bare", skip={"tokenizer.json", "tokenizer_config.json"})
    out = tmp_path / "results"
    proc = cli_in_process("eval", "--model", str(bare), "--tasks", "vt", "--lengths", "512", "--limit", "1",
                          "--output_path", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"hydrahead: error: {bare} has no tokenizer files "
                                                "(none of tokenizer.json, tokenizer.model, vocab.json, tokenizer_config.json)"]
    assert not out.exists()
