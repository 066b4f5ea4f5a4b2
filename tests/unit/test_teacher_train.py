import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hydrahead.cli import main
from hydrahead.errors import HydraheadError
from hydrahead.teacher import train as train_mod
from hydrahead.teacher.train import TeacherConfig, TeacherError, TrainingDiverged, length_at, lr_at, train

TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
            native_length=256, tokens_per_batch=512, min_length=160, start_max_length=192, steps=6,
            warmup=2, checkpoint_every=2, eval_every=1000, eval_samples=2, vocab_size=600)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_schedule_and_curriculum():
    cfg = TeacherConfig(steps=1000, warmup=100)
    assert lr_at(cfg, 0) == pytest.approx(cfg.lr / 100)
    assert lr_at(cfg, 99) == pytest.approx(cfg.lr)
    assert lr_at(cfg, 1000) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    early = [length_at(cfg, s) for s in range(50)]
    late = [length_at(cfg, s) for s in range(900, 1000)]
    bound = cfg.start_max_length + 50 / (cfg.curriculum_until * cfg.steps) * (cfg.native_length - cfg.start_max_length)
    assert max(early) <= bound < 300 and max(late) > 400 and min(late) >= cfg.min_length


def test_train_exports_an_hf_directory_and_resume_is_exact(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TeacherConfig(**TINY)
    full = train(tmp_path / "full", cfg, progress=False)
    model = AutoModelForCausalLM.from_pretrained(full)
    tok = AutoTokenizer.from_pretrained(full)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert tok.decode(tok("VAR ABC = 12345")["input_ids"]) == "VAR ABC = 12345"

    # killed after its first minute-check (max_minutes=0 stops at once, with a checkpoint), then resumed twice
    assert train(tmp_path / "split", cfg, max_minutes=0, progress=False) is None
    state = json.loads((tmp_path / "split" / "training" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 1
    assert train(tmp_path / "split", cfg, max_minutes=0, progress=False) is None
    train(tmp_path / "split", cfg, progress=False)
    a, b = weights(full), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_eval_samples_zero_skips_every_evaluation(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_mod, "quick_eval", lambda *a, **k: calls.append(1) or {"vt": 100.0})
    train(tmp_path / "evaluated", TeacherConfig(**{**TINY, "steps": 2}), progress=False)
    assert calls == [1]  # the closing evaluation (eval_every is beyond the run)
    out = train(tmp_path / "skipped", TeacherConfig(**{**TINY, "steps": 2, "eval_every": 1, "eval_samples": 0}),
                progress=False)
    assert calls == [1] and (out / "training_curve.png").is_file()
    assert not any("eval" in json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines())


def test_cli_no_eval_sets_eval_samples_zero_and_keeps_the_preset(tmp_path, monkeypatch):
    from hydrahead.cli import main

    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda out, cfg, **kw: seen.setdefault("cfg", cfg) and None)
    assert main(["teacher", "train", "--out", str(tmp_path), "--preset", "teacher-8l", "--steps", "2", "--no-eval"]) == 0
    assert (seen["cfg"].eval_samples, seen["cfg"].steps, seen["cfg"].num_layers) == (0, 2, 8)


def test_corrupt_checkpoint_is_named(tmp_path):
    cfg = TeacherConfig(**{**TINY, "steps": 2})
    train(tmp_path, cfg, max_minutes=0, progress=False)
    (tmp_path / "training" / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HydraheadError, match="corrupt or incomplete"):  # one line on the command line
        train(tmp_path, cfg, progress=False)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = TeacherConfig(**TINY)
    real = train_mod.loss_fn
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        out = real(*args)
        return (out[0] * float("nan"),) + out[1:] if calls["n"] == 4 else out

    monkeypatch.setattr(train_mod, "loss_fn", flaky)
    # the 4th loss is step 4 as the log counts it (from 1), after the checkpoint at step 2
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4; the last good checkpoint is .*checkpoint "
                                               r"\(step 2\): run again with a lower --lr and --change_on_resume lr"):
        train(tmp_path, cfg, progress=False)
    assert json.loads((tmp_path / "training" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "training" / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    # resumed, the log goes back to the checkpoint's step before the steps run again
    monkeypatch.setattr(train_mod, "loss_fn", real)
    train(tmp_path, cfg, progress=False)
    assert [json.loads(line)["step"] for line in (tmp_path / "training" / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_settings_unless_named(tmp_path):
    cfg = TeacherConfig(**TINY)
    assert train(tmp_path, cfg, max_minutes=0, progress=False) is None  # a checkpoint at step 1
    with pytest.raises(TeacherError, match=r"made with num_layers=2, lr=0.002; this run has num_layers=3, lr=0.01; "
                                           r"resume with the same settings, or use another out directory; lr may be "
                                           r"changed on purpose with --change_on_resume lr$"):
        train(tmp_path, TeacherConfig(**{**TINY, "lr": 1e-2, "num_layers": 3}), progress=False)
    with pytest.raises(TeacherError, match=r"is at step 1, beyond this run's steps=0"):
        train(tmp_path, TeacherConfig(**{**TINY, "steps": 0}), progress=False)
    assert main(["teacher", "train", "--out", str(tmp_path), "--change_on_resume", "seed"]) == 2
    train(tmp_path, TeacherConfig(**{**TINY, "lr": 1e-3, "eval_every": 500}), progress=False, change_on_resume={"lr"})
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["changed_on_resume"] == [{"step": 1, "changed": {"lr": [2e-3, 1e-3]}}]


def test_diverged_weights_are_never_a_checkpoint_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    cfg = TeacherConfig(**{**TINY, "checkpoint_every": 1})
    assert train(tmp_path, cfg, max_minutes=0, progress=False) is None
    real_step = torch.optim.AdamW.step

    def blown_up(self, *args, **kwargs):  # what a huge lr does: weights of 1e30, the loss still finite
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(1e30)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", blown_up)
    with pytest.raises(TrainingDiverged, match=r"weights after step 2 are unusable \(.* reaches 1e\+30, beyond 1e\+06\); "
                                               r"no checkpoint was written; the last good checkpoint is .*\(step 1\)"):
        train(tmp_path, cfg, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    ckpt = tmp_path / "training" / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 1
    state = weights(ckpt)
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("inf"))
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(TeacherError, match=f"checkpoint {ckpt} is unusable: {name} holds NaN or inf; delete it"):
        train(tmp_path, cfg, progress=False)
