"""The shipped teachers: plain transformers loads each, and each meets the same native-length targets."""

import pytest

from hydrahead.evaluation import evaluate

from ..conftest import TEACHER, TEACHER_8L

TARGETS = {"niah_single_1": 95, "niah_multikey_1": 80, "niah_multivalue": 70, "vt": 70}


@pytest.fixture(scope="module", params=[TEACHER, TEACHER_8L], ids=lambda path: path.name)
def teacher(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = request.param
    assert (path / "config.json").is_file(), f"the shipped teacher is missing from {path}"
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def test_teacher_is_a_small_gqa_qwen3(teacher):
    model, tokenizer = teacher
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.num_key_value_heads < cfg.num_attention_heads
    assert cfg.num_hidden_layers >= 4 and 1e6 < model.num_parameters() < 2e7
    assert cfg.max_position_embeddings in (512, 1024)
    assert tokenizer.tokenize("1234567") == list("1234567")  # digits are single tokens


def test_teacher_meets_native_length_targets(teacher):
    model, tokenizer = teacher
    native = model.config.max_position_embeddings
    result = evaluate(model, tokenizer, tasks=list(TARGETS), lengths=[native], limit=24, seed=7, progress=False)
    scores = {task: per[native] for task, per in result.scores.items()}
    assert all(scores[t] >= target for t, target in TARGETS.items()), scores


def test_teacher_retrieves_keys_it_never_saw_in_training(teacher):
    from hydrahead.evaluation import score_samples
    from hydrahead.tasks import generate

    model, tokenizer = teacher
    native = model.config.max_position_embeddings
    samples = generate("niah_multikey_1", tokenizer, native, 24, seed=11, words="heldout")
    result = score_samples(model, tokenizer, samples, progress=False)
    assert result.scores["niah_multikey_1"][native] >= 70
