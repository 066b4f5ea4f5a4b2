"""The transfer stages and their training loop on a tiny model: what trains, resume exactness, NaN
handling, config errors, and a 2-process torchrun run equal to the single-process one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

from hydrahead.cli import main
from hydrahead.models import load_model, load_tokenizer
from hydrahead.plan import HeadPlan
from hydrahead.transfer import (
    TransferConfig,
    TransferError,
    load_config,
    packed_batch,
    train_stage,
)
from hydrahead.transfer import loop as loop_module

TEACHER = "models/hydrahead-teacher-3m"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen3 'teacher' with the shipped tokenizer, and a plan with one FA head per layer."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = load_tokenizer(TEACHER)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    HeadPlan.from_config(config, [[0], [3]]).save(root / "plan.json")
    return root


def config_for(tiny: Path, out: str, **kw) -> TransferConfig:
    settings = {"stage": "align", "teacher": str(tiny / "teacher"), "plan": str(tiny / "plan.json"),
                "out": str(tiny / out), "steps": 4, "seq_len": 64, "batch_size": 4, "micro_batch": 2,
                "lr": 3e-3, "warmup": 2, "checkpoint_every": 2}
    settings.update(kw)
    return TransferConfig(**settings)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def assert_trained_alike(two: dict[str, torch.Tensor], one: dict[str, torch.Tensor], lr: float = 3e-3) -> None:
    """Two trainings of the same steps on the same batches, summed in another order (processes, threads): equal to
    float precision, except where Adam turns a last-bit difference in a near-zero gradient (a rare token's tied
    embedding row) into a visible step. Those few elements still differ by well under lr, where a real fault (a
    shard not trained, gradients not averaged, another batch) moves most elements by about lr."""
    for k in one:
        diff = (two[k] - one[k]).abs()
        off = diff > 2e-5 + 1e-4 * one[k].abs()
        assert int(off.sum()) <= max(1, off.numel() // 10_000), f"{k}: {int(off.sum())} of {off.numel()} differ"
        assert float(diff.max()) < 0.1 * lr, f"{k}: differs by {float(diff.max()):.2e}, lr is {lr}"


def test_packed_batches_are_full_deterministic_and_shardable():
    tokenizer = load_tokenizer(TEACHER)
    a = packed_batch(tokenizer, seed=0, step=3, seq_len=128, rows=4)
    assert a.shape == (4, 128) and torch.equal(a, packed_batch(tokenizer, 0, 3, 128, 4))
    assert not torch.equal(a, packed_batch(tokenizer, 0, 4, 128, 4))
    assert int((a == tokenizer.eos_token_id).sum()) >= 1  # examples are packed, EOS between them


def test_align_trains_only_the_hybrid_attention(tiny):
    model_dir = train_stage(config_for(tiny, "align"), progress=False)
    before = load_model(tiny / "teacher").state_dict()
    after = weights(model_dir)
    mlp = [k for k in after if ".mlp." in k or "embed" in k or k.endswith("norm.weight") and "layers" not in k]
    assert mlp and all(torch.equal(after[k], before[k]) for k in mlp)
    attn = [k for k in after if "self_attn" in k]
    assert any(k not in before or not torch.equal(after[k], before[k]) for k in attn)
    log = (tiny / "align" / "training" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and "mse_l1" in log[-1]
    assert (tiny / "align" / "loss.png").stat().st_size > 5000


def test_distill_then_long_stage_train_every_weight(tiny):
    train_stage(config_for(tiny, "a2"), progress=False)
    distilled = train_stage(config_for(tiny, "d2", stage="distill", plan=None, init=str(tiny / "a2" / "model")),
                            progress=False)
    before, after = weights(tiny / "a2" / "model"), weights(distilled)
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert "kl" in (tiny / "d2" / "training" / "log.jsonl").read_text()
    longer = train_stage(config_for(tiny, "l2", stage="long", plan=None, init=str(distilled), seq_len=128), progress=False)
    assert load_model(longer).config.hydrahead  # a hybrid directory every command can load


def test_a_killed_run_resumes_to_the_same_weights(tiny, monkeypatch):
    straight = weights(train_stage(config_for(tiny, "straight", steps=6), progress=False))
    real = loop_module.packed_batch
    calls = []

    def killed_at_step_five(tokenizer, seed, step, *args):
        calls.append(step)
        if step == 4:  # after the checkpoint at step 4 (steps 0-3 done) ... then killed
            raise KeyboardInterrupt
        return real(tokenizer, seed, step, *args)

    monkeypatch.setattr(loop_module, "packed_batch", killed_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        train_stage(config_for(tiny, "resumed", steps=6), progress=False)
    monkeypatch.setattr(loop_module, "packed_batch", real)
    resumed = weights(train_stage(config_for(tiny, "resumed", steps=6), progress=False))
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=0, rtol=0)
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in (tiny / "resumed" / "training" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    with pytest.raises(TransferError, match="made with seed=0; this run has seed=1;"):
        train_stage(config_for(tiny, "resumed", steps=6, seed=1), progress=False)


def test_a_stage_out_of_time_stops_with_a_checkpoint_and_resumes_to_the_same_weights(tiny):
    from hydrahead.transfer.checkpoint import checkpoint_step

    straight = weights(train_stage(config_for(tiny, "straight-4", steps=4), progress=False))
    assert train_stage(config_for(tiny, "timed", steps=4, max_minutes=0), progress=False) is None
    assert checkpoint_step(tiny / "timed" / "training") == 1 and not (tiny / "timed" / "model").exists()
    resumed = weights(train_stage(config_for(tiny, "timed", steps=4), progress=False))
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=0, rtol=0)


def test_a_nan_loss_stops_with_the_last_good_checkpoint(tiny, monkeypatch):
    from hydrahead.transfer import stages

    real = stages.Align.loss

    def poisoned(self, student, teacher, ids):
        loss, metrics = real(self, student, teacher, ids)
        return loss * float("nan") if poisoned.calls >= 4 else loss, metrics

    poisoned.calls = 0

    def counting(self, *args):
        poisoned.calls += 1
        return poisoned(self, *args)

    monkeypatch.setattr(stages.Align, "loss", counting)
    # the 4th loss is the second micro-batch of the second step: step 2 as the log counts, after checkpoint 1
    with pytest.raises(TransferError, match=r"loss is nan at step 2; the last good checkpoint is "
                                            r".*nan/training/checkpoint \(step 1\): run again with a lower --lr and "
                                            r"--change_on_resume lr"):
        train_stage(config_for(tiny, "nan", checkpoint_every=1), progress=False)
    assert [json.loads(line)["step"] for line in (tiny / "nan" / "training" / "log.jsonl").read_text().splitlines()] == [1]


def stopped_after_one_step(tiny: Path, out: str, **kw) -> TransferConfig:
    """A run that stops after its first step with a checkpoint (max_minutes=0), as a kill would."""
    config = config_for(tiny, out, max_minutes=0, **kw)
    assert train_stage(config, progress=False) is None
    return config


def test_resume_is_keyed_on_the_contents_of_every_setting(tiny, tmp_path, monkeypatch):
    plan = tmp_path / "plan.json"
    shutil.copy(tiny / "plan.json", plan)
    stopped_after_one_step(tiny, "keyed", plan=str(plan))
    # the same plan by another spelling of its path resumes (contents, not the path string, are compared)
    monkeypatch.chdir(tmp_path)
    stopped_after_one_step(tiny, "keyed", plan="plan.json")
    ckpt = str(tiny / "keyed" / "training" / "checkpoint")
    # ... an edited plan does not, and the refusal names what differs, old and new
    HeadPlan.from_config(load_model(tiny / "teacher").config, [[1], [2]]).save(plan)
    with pytest.raises(TransferError, match=r"made with plan='.*plan.json' \(sha256 [0-9a-f]{12}\); this run has "
                                            r"plan='plan.json' \(sha256 [0-9a-f]{12}\); resume with the same settings"):
        train_stage(config_for(tiny, "keyed", plan="plan.json"), progress=False)
    shutil.copy(tiny / "plan.json", plan)
    with pytest.raises(TransferError, match=r"made with lr=0.003, warmup=2; this run has lr=0.01, warmup=3; .* "
                                            r"lr, warmup may be changed on purpose with --change_on_resume lr,warmup"):
        train_stage(config_for(tiny, "keyed", plan="plan.json", lr=1e-2, warmup=3), progress=False)
    with pytest.raises(TransferError, match=f"the checkpoint in {ckpt} is at step 2, beyond this run's steps=1"):
        train_stage(config_for(tiny, "keyed", plan="plan.json", steps=1), progress=False)
    with pytest.raises(TransferError, match=r"made with steps=4; this run has steps=8"):  # the schedule depends on it
        train_stage(config_for(tiny, "keyed", plan="plan.json", steps=8), progress=False)
    # a change asked for by name is taken, and the summary says from which step
    train_stage(config_for(tiny, "keyed", plan="plan.json", lr=1e-3), progress=False, change_on_resume={"lr"})
    summary = json.loads((tiny / "keyed" / "summary.json").read_text())
    assert summary["changed_on_resume"] == [{"step": 2, "changed": {"lr": [3e-3, 1e-3]}}]
    assert summary["config"]["lr"] == 1e-3


def test_a_diverged_model_is_never_a_checkpoint(tiny):
    stopped_after_one_step(tiny, "blowup")
    ckpt = tiny / "blowup" / "training" / "checkpoint"
    # a huge lr: AdamW moves every weight by about lr in one step, while that step's loss is still finite
    with pytest.raises(TransferError, match=r"weights after step 2 are unusable \(.* reaches [0-9.]+e\+[23][0-9], beyond 1e\+06\); "
                                            r"no checkpoint was written; the last good checkpoint is .*checkpoint \(step 1\)"):
        train_stage(config_for(tiny, "blowup", lr=1e30, checkpoint_every=1), progress=False, change_on_resume={"lr"})
    assert json.loads((ckpt / "state.json").read_text())["step"] == 1
    weights = load_file(str(ckpt / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) and float(w.abs().max()) < 1e6 for w in weights.values())
    # a checkpoint damaged since (or written before checkpoints were checked) is refused on load
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(TransferError, match=f"checkpoint {ckpt} is unusable: {name} holds NaN or inf; delete it"):
        train_stage(config_for(tiny, "blowup"), progress=False)


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tiny, monkeypatch):
    real = loop_module.packed_batch

    def killed_at_step_three(tokenizer, seed, step, *args):
        if step == 2:
            raise KeyboardInterrupt
        return real(tokenizer, seed, step, *args)

    monkeypatch.setattr(loop_module, "packed_batch", killed_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        train_stage(config_for(tiny, "early", checkpoint_every=4), progress=False)
    log = tiny / "early" / "training" / "log.jsonl"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    monkeypatch.setattr(loop_module, "packed_batch", real)
    train_stage(config_for(tiny, "early", checkpoint_every=4), progress=False)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_change_on_resume_names_only_settings_that_may_change(tiny, tmp_path, capsys):
    args = ["distill", "--stage", "align", "--teacher", str(tiny / "teacher"), "--plan", str(tiny / "plan.json"),
            "--out", str(tmp_path / "x"), "--change_on_resume", "lr,seed"]
    assert main(args) == 2
    assert "--change_on_resume cannot change 'seed'; settings that may change mid-run: steps, lr," in capsys.readouterr().err


def test_config_from_yaml_with_overrides_and_clear_errors(tiny, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"stage: align\nteacher: {tiny / 'teacher'}\nplan: {tiny / 'plan.json'}\nsteps: 50\nlr: 2e-4\n")
    config = load_config(path, {"steps": 7, "seed": None})
    assert config.steps == 7 and config.lr == 2e-4 and config.seed == 0
    with pytest.raises(TransferError, match="unknown config key 'learning_rate'"):
        load_config(path, {"learning_rate": 1})
    with pytest.raises(TransferError, match="needs a number"):
        load_config(path, {"steps": "many"})
    with pytest.raises(TransferError, match="not a multiple of micro_batch"):
        load_config(path, {"batch_size": 6, "micro_batch": 4})
    with pytest.raises(TransferError, match="exactly one of plan"):
        load_config(path, {"init": "somewhere"})
    with pytest.raises(TransferError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(TransferError, match="parallel must be one of auto, ddp, fsdp"):
        load_config(path, {"parallel": "zero3"})
    assert main(["distill", "--config", str(path), "--set", "kl_weigth=2", "--out", str(tmp_path / "x")]) == 2


def test_micro_batch_adapts_to_the_batch_size_and_a_conflict_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("stage: align\nteacher: t\nplan: p.json\n")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    # not given: the largest divisor of batch_size up to 4 (batch_size 2 used to fail against a fixed 4)
    assert [load_config(path, {"batch_size": b}).micro_batch for b in (2, 6, 7, 8, 12)] == [2, 3, 1, 4, 4]
    assert load_config(path, {"batch_size": 6, "micro_batch": 2}).micro_batch == 2  # given: kept
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun each process takes half of the batch
    assert load_config(path, {"batch_size": 4}).micro_batch == 2
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(TransferError, match=r"batch_size 6 is not a multiple of micro_batch 4: give a micro_batch "
                                            r"that divides it \(3, 2, 1, ...\), or leave micro_batch out"):
        load_config(path, {"batch_size": 6, "micro_batch": 4})


TORCHRUN_CASES = [("align", "ddp"), ("align", "fsdp"), ("distill", "fsdp")]


@pytest.fixture(scope="module")
def torchrun_models(tiny, tmp_path_factory) -> dict[str, Path]:
    """`hydrahead distill --config` under torchrun with two processes for each case of TORCHRUN_CASES, then a
    distill stage from the align-fsdp case's model ("chain"), all in one launch, one after another in the same
    two processes: as a script that trains align, then distill from it, runs them."""
    root = tmp_path_factory.mktemp("torchrun")
    configs, models = [], {}

    def add(name: str, start: str, parallel: str) -> None:
        configs.append(root / f"{name}.yaml")
        configs[-1].write_text(f"{start}teacher: {tiny / 'teacher'}\nout: {root / name}\nparallel: {parallel}\n"
                               "steps: 3\nseq_len: 64\nbatch_size: 4\nmicro_batch: 2\nlr: 3.0e-3\nwarmup: 2\n"
                               "checkpoint_every: 2\n")
        models[name] = root / name / "model"

    for stage, parallel in TORCHRUN_CASES:
        add(f"{stage}-{parallel}", f"stage: {stage}\nplan: {tiny / 'plan.json'}\n", parallel)
    add("chain", f"stage: distill\ninit: {models['align-fsdp']}\n", "fsdp")
    driver = root / "driver.py"
    driver.write_text("import sys\nfrom hydrahead.cli import main\n\n"
                      "for config in sys.argv[1:]:\n"
                      "    if main(['distill', '--config', config, '--quiet']):\n"
                      "        sys.exit(f'{config} failed')\n")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
         *map(str, configs)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return models


@pytest.mark.parametrize(("stage", "parallel"), TORCHRUN_CASES)
def test_two_processes_with_torchrun_equal_one_process(tiny, torchrun_models, stage, parallel):
    """DDP and FSDP (sharded, gloo on CPU) with the same global batch train the same weights as one process;
    align freezes all but the attention, distill trains everything (tied embeddings included)."""
    one = weights(train_stage(config_for(tiny, f"one-{stage}", stage=stage, steps=3), progress=False))
    two = weights(torchrun_models[f"{stage}-{parallel}"])
    assert_trained_alike(two, one)


def test_a_second_stage_in_the_same_torchrun_launch_starts_from_the_first_ones_model(tiny, torchrun_models):
    """Stages run one after another in the same processes share one process group (initialising it again raced:
    a hang or "connection reset by peer"), and no process starts the next stage before the model is written."""
    align = train_stage(config_for(tiny, "one-align", steps=3), progress=False)
    one = weights(train_stage(config_for(tiny, "one-chain", stage="distill", steps=3, plan=None, init=str(align)),
                              progress=False))
    two = weights(torchrun_models["chain"])
    assert_trained_alike(two, one)


def _head_loss(teacher, student, ids, head_weight=1.0):
    from hydrahead.transfer.stages import Align

    loss, logs = Align(head_weight=head_weight).loss(student, teacher, ids)
    return loss, logs


def test_align_head_loss_is_zero_for_exact_copies_and_trains_the_gdn_heads(tiny):
    from hydrahead.attention.options import HybridOptions
    from hydrahead.convert import convert

    teacher = load_model(tiny / "teacher").eval()
    ids = torch.randint(3, teacher.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    copy = convert(teacher, HeadPlan.full_attention(teacher.config), HybridOptions(fusion="concat", fa_position="rope"))
    loss, logs = _head_loss(teacher, copy, ids)
    assert logs["head_mse"] < 1e-8 and logs["layer_mse"] < 1e-8 and loss.item() < 1e-8  # every head the original's
    hybrid = convert(teacher, HeadPlan.from_config(teacher.config, [[0], [3]]), HybridOptions())
    loss, logs = _head_loss(teacher, hybrid, ids)
    assert logs["head_mse"] > 1e-3 and loss.item() == pytest.approx(logs["layer_mse"] + logs["head_mse"], rel=1e-5)
    loss.backward()
    gdn = {n: p.grad for n, p in hybrid.named_parameters() if "gdn" in n or "gamma" in n or "in_proj" in n}
    assert gdn and all(g is not None and g.abs().sum() > 0 for g in gdn.values())
    # head_weight 0 leaves the loss as it was
    plain, plain_logs = _head_loss(teacher, hybrid, ids, head_weight=0.0)
    assert "head_mse" not in plain_logs and plain.item() == pytest.approx(logs["layer_mse"], rel=1e-5)
    # and a few steps on it bring every head toward the original head's output
    attention = [p for layer in hybrid.model.layers for p in layer.self_attn.parameters()]
    optimizer = torch.optim.Adam(attention, lr=3e-2)
    first = logs["head_mse"]
    for _ in range(30):
        optimizer.zero_grad()
        loss, logs = _head_loss(teacher, hybrid, ids)
        loss.backward()
        optimizer.step()
    assert logs["head_mse"] < first / 2


def test_align_stage_logs_the_head_loss(tiny):
    train_stage(config_for(tiny, "ha", steps=2, head_weight=1.0), progress=False)
    rows = [json.loads(line) for line in (tiny / "ha" / "training" / "log.jsonl").read_text().splitlines()]
    assert all(row["head_mse"] > 0 and row["layer_mse"] > 0 for row in rows)


def test_head_weight_is_checked():
    with pytest.raises(TransferError, match="head_weight must be at least 0"):
        TransferConfig(stage="align", plan="p.json", head_weight=-1).check()
    with pytest.raises(TransferError, match="belongs to the align stage"):
        TransferConfig(stage="distill", init="m", head_weight=1.0).check()


def test_activation_checkpointing_trains_the_same_weights(tiny):
    """distill with every decoder layer recomputed in the backward pass ends at the weights of plain training;
    align, whose forward hooks a recompute would miss, refuses it."""
    train_stage(config_for(tiny, "ac_align"), progress=False)
    init = str(tiny / "ac_align" / "model")
    plain = weights(train_stage(config_for(tiny, "ac_plain", stage="distill", plan=None, init=init), progress=False))
    from hydrahead.modeling import HydraForCausalLM

    enabled = []
    original = HydraForCausalLM.activation_checkpointing_enable
    with pytest.MonkeyPatch.context() as patch:  # the setting must reach the model, or the equality proves nothing
        patch.setattr(HydraForCausalLM, "activation_checkpointing_enable",
                      lambda self, *a, **kw: (enabled.append(True), original(self, *a, **kw)))
        again = weights(train_stage(config_for(tiny, "ac_recomputed", stage="distill", plan=None, init=init,
                                               activation_checkpointing=True), progress=False))
    assert enabled == [True]
    assert plain.keys() == again.keys()
    assert all(torch.allclose(plain[k], again[k], atol=1e-5) for k in plain)
    assert any(not torch.equal(plain[k], weights(init)[k]) for k in plain)  # and training did move them
    with pytest.raises(TransferError, match="activation_checkpointing is for the distill and long stages"):
        config_for(tiny, "ac_bad", activation_checkpointing=True).check()


def record_stages(monkeypatch, setting: str) -> dict:
    """Replace the stage trainer with one that checks each stage's config, notes its `setting` by stage in the
    dict returned, and writes an empty model, as a finished stage leaves it."""
    seen = {}

    def fake_train_stage(config, progress=True):
        config.check()
        seen[config.stage] = getattr(config, setting)
        (Path(config.out) / "model").mkdir(parents=True)
        (Path(config.out) / "model" / "config.json").write_text("{}")
        return Path(config.out) / "model"

    monkeypatch.setattr(loop_module, "train_stage", fake_train_stage)
    return seen


def test_the_pipeline_asks_distill_and_long_for_activation_checkpointing(tmp_path, monkeypatch):
    from hydrahead.transfer.pipeline import PipelineConfig, train_hybrid

    seen = record_stages(monkeypatch, "activation_checkpointing")
    train_hybrid(PipelineConfig(activation_checkpointing=True), tmp_path / "plan.json", tmp_path / "run", 256,
                 progress=False)
    assert seen == {"align": False, "distill": True, "long": True}


@pytest.mark.parametrize("name", ["corpus", "skills", "skills-cwe"])
def test_the_pipeline_gives_its_distill_mixture_to_the_distill_stage_only(tmp_path, monkeypatch, name):
    from hydrahead.transfer.config import DISTILL_MIXTURES, SKILLS_MIXTURE
    from hydrahead.transfer.pipeline import PipelineConfig, train_hybrid

    seen = record_stages(monkeypatch, "mixture")
    train_hybrid(PipelineConfig(distill_mixture=name, long_mixture="corpus"), tmp_path / "plan.json",
                 tmp_path / "run", 256, progress=False)
    assert seen == {"align": None, "distill": DISTILL_MIXTURES[name], "long": None}  # None: the corpus mixture
    assert DISTILL_MIXTURES["skills"] is SKILLS_MIXTURE
    assert all(abs(sum(m.values()) - 1) < 1e-9 for m in DISTILL_MIXTURES.values() if m is not None)


def test_the_pipeline_gives_its_long_mixture_to_the_long_stage(tmp_path, monkeypatch):
    from hydrahead.transfer.config import SKILLS_CWE_MIXTURE, SKILLS_MIXTURE
    from hydrahead.transfer.pipeline import PipelineConfig, train_hybrid

    seen = record_stages(monkeypatch, "mixture")
    train_hybrid(PipelineConfig(distill_mixture="skills", long_mixture="skills-cwe"), tmp_path / "plan.json",
                 tmp_path / "run", 256, progress=False)
    assert seen == {"align": None, "distill": SKILLS_MIXTURE, "long": SKILLS_CWE_MIXTURE}


@pytest.mark.parametrize("setting, message", [
    ({"distill_mixture": "skill"}, "unknown mixture 'skill'; mixtures are corpus, skills, skills-cwe"),
    ({"long_mixture": "cwe"}, "long_mixture: unknown mixture 'cwe'; mixtures are corpus, skills, skills-cwe"),
    ({"align_steps": 0}, "align_steps must be at least 1, got 0"),
    ({"long_factor": 0}, "long_factor must be at least 1, got 0"),
    ({"limit": -1}, "limit must be at least 1, got -1"),
    ({"head_weight": -0.5}, "head_weight must be at least 0, got -0.5"),
    ({"factors": ()}, "factors must be one or more multiples"),
])
def test_a_pipeline_config_with_a_bad_setting_is_refused_when_made(setting, message):
    from hydrahead.transfer.config import TransferError
    from hydrahead.transfer.pipeline import PipelineConfig

    with pytest.raises(TransferError, match=message):
        PipelineConfig(**setting)  # not minutes later, after the head scores
    with pytest.raises(TransferError, match=message):
        PipelineConfig.quick(**setting)


def test_a_pipeline_with_an_unknown_fa_position_is_refused_before_the_teacher_loads(tmp_path):
    from hydrahead.errors import HydraheadError
    from hydrahead.transfer.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(teacher=str(tmp_path / "no-teacher"), out=str(tmp_path / "run"), fa_position="nope")
    with pytest.raises(HydraheadError, match="fa_position must be one of"):
        run_pipeline(cfg, tmp_path / "results", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_pipeline_with_an_unknown_behaviour_is_refused_before_the_teacher_loads(tmp_path):
    from hydrahead.selection import SelectionError
    from hydrahead.transfer.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(teacher=str(tmp_path / "no-teacher"), out=str(tmp_path / "run"),
                         behaviours=["retrieval", "copying"])
    with pytest.raises(SelectionError, match="copying"):
        run_pipeline(cfg, tmp_path / "results", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_pipeline_folder_is_never_reused_with_other_settings(tmp_path):
    from hydrahead.transfer.config import TransferError
    from hydrahead.transfer.pipeline import PipelineConfig, check_run_folder

    out = tmp_path / "run"
    check_run_folder(PipelineConfig(out=str(out)))  # a new folder: its settings noted
    check_run_folder(PipelineConfig(out=str(out)))  # the same: reused
    with pytest.raises(TransferError, match=r"other settings .*'distill_steps': \(800, 200\).*another --out"):
        check_run_folder(PipelineConfig(out=str(out), distill_steps=200))
    # a folder made before settings were noted, with head scores of the old default behaviours
    old = tmp_path / "old"
    old.mkdir()
    (old / "scores.json").write_text(json.dumps({"config": {"behaviours": ["retrieval", "multikey", "induction"]}}))
    with pytest.raises(TransferError, match="behaviours retrieval,multikey,induction, not retrieval,multikey,"
                                            "induction,no_repeat; use another --out, or --behaviours"):
        check_run_folder(PipelineConfig(out=str(old)))
    assert not (old / "settings.json").exists()
    check_run_folder(PipelineConfig(out=str(old), behaviours=["retrieval", "multikey", "induction"]))
    assert json.loads((old / "settings.json").read_text())["behaviours"] == ["retrieval", "multikey", "induction"]
    # a folder noted before long_mixture existed was made with the corpus mixture in its long stage
    noted = json.loads((out / "settings.json").read_text())
    del noted["long_mixture"]
    (out / "settings.json").write_text(json.dumps(noted))
    check_run_folder(PipelineConfig(out=str(out), long_mixture="corpus"))
    with pytest.raises(TransferError, match=r"other settings .*'long_mixture': \('corpus', 'skills-cwe'\)"):
        check_run_folder(PipelineConfig(out=str(out)))  # today's default long mixture
    with pytest.raises(TransferError, match=r"other settings .*'long_mixture': \('corpus', 'skills'\)"):
        check_run_folder(PipelineConfig(out=str(out), long_mixture="skills"))
