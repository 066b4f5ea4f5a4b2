import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "hydrahead-teacher-3m"
TEACHER_8L = ROOT / "models" / "hydrahead-teacher-8l"  # the deeper second teacher (8 layers, same heads and length)


def cli_in_process(*args: str):
    """`hydrahead ARGS` run by this process: a CompletedProcess with the exit code, stdout and stderr, as
    `subprocess.run` gives them, without an interpreter start and the torch import per call (5-15 s each here).
    For what a command says and writes; what only a fresh process shows (warnings on import, which modules a
    command imports, transformers' log handler, which holds the real stderr) is tested with a subprocess in
    test_cli.py."""
    import contextlib
    import io
    import subprocess

    from hydrahead.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return subprocess.CompletedProcess(["hydrahead", *args], code, out.getvalue(), err.getvalue())


def script_fixture(name: str):
    """A module-scoped fixture giving a script of benchmarks/ imported as a module (they are not a package), to
    test its pieces: `recipe = script_fixture("skills_recipe")` in a test module. Registered in sys.modules while
    the module's tests run, as its dataclasses look their module up; removed after them. A script that imports
    another script (`from skills_recipe import ...`, as when run from benchmarks/) finds it."""
    import importlib.util
    import sys

    @pytest.fixture(scope="module")
    def fixture():
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(ROOT / "benchmarks"))
        try:
            spec.loader.exec_module(module)
            yield module
        finally:
            sys.modules.pop(name, None)
            sys.path.remove(str(ROOT / "benchmarks"))

    return fixture


@functools.lru_cache(maxsize=None)
def _small_tokenizer():
    from hydrahead.teacher.corpus import tokenizer_texts
    from hydrahead.teacher.tokenizer import train_tokenizer

    return train_tokenizer(tokenizer_texts(600, seed=1), vocab_size=600)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module that asks (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    tensors and many small ops, where a second thread only adds OpenMP hand-offs (10x slower here when the 2
    cores are busy). Restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    """A small byte-level BPE tokenizer trained like the teacher's (seconds, offline)."""
    return _small_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A random tiny Qwen3 causal LM saved as an HF directory."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny_model")
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
