"""Writes that are never half-done: convert refuses to write over its source, convert and results folders
are written as NAME.partial then renamed, leftovers of killed runs are removed (and said), a folder another
live process is writing is left alone, and two writers in the same second get different folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hydrahead import atomic
from hydrahead.atomic import WriteError, atomic_dir, final_of, new_results_dir
from hydrahead.cli import main
from hydrahead.plan import HeadPlan


@pytest.fixture(scope="module")
def plan_file(tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig

    path = tmp_path_factory.mktemp("plan") / "plan.json"
    HeadPlan.from_config(AutoConfig.from_pretrained(tiny_model_dir), [[0], [3]]).save(path)
    return str(path)


def convert_args(model, plan, out):
    return ["convert", "--model", str(model), "--plan", plan, "--out", str(out)]


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("hydrahead: error: ")]
    return line.removeprefix("hydrahead: error: ")


def snapshot(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_convert_never_writes_over_or_around_its_source(tiny_model_dir, plan_file, tmp_path, capsys):
    before = snapshot(tiny_model_dir)
    assert error_of(capsys, convert_args(tiny_model_dir, plan_file, tiny_model_dir)) == (
        f"--out {tiny_model_dir} is the source model {tiny_model_dir}; give another directory")
    relative = os.path.relpath(tiny_model_dir)  # the same directory by another spelling
    assert "is the source model" in error_of(capsys, convert_args(tiny_model_dir, plan_file, relative))
    assert "is inside the source model" in error_of(capsys, convert_args(tiny_model_dir, plan_file, tiny_model_dir / "x"))
    assert "holds the source model" in error_of(capsys, convert_args(tiny_model_dir, plan_file, tiny_model_dir.parent))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert "exists and is not a hybrid written by hydrahead" in error_of(capsys, convert_args(tiny_model_dir, plan_file, other))
    assert snapshot(tiny_model_dir) == before and (other / "mine.txt").read_text() == "keep me"


def test_an_interrupted_convert_leaves_no_model_behind(tiny_model_dir, plan_file, tmp_path, monkeypatch):
    from hydrahead import convert as convert_module

    def killed_half_way(model, path, tokenizer=None):
        model.config.save_pretrained(path)  # config.json written, the weights not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "save", killed_half_way)
    out = tmp_path / "hybrid"
    assert main(convert_args(tiny_model_dir, plan_file, out)) == 130
    assert list(tmp_path.iterdir()) == []  # neither a model without weights nor a .partial


def test_convert_clears_a_killed_runs_partial_and_replaces_an_earlier_hybrid(tiny_model_dir, plan_file, tmp_path, capsys):
    out = tmp_path / "hybrid"
    stale = tmp_path / "hybrid.partial"  # what a kill -9 leaves: its writer is gone
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    (stale / atomic.OWNER).write_text(f"{os.uname().nodename} {dead_pid()}\n")
    assert main(convert_args(tiny_model_dir, plan_file, out)) == 0
    assert f"hydrahead: removed {stale}, left by an interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "plan.json"} <= set(os.listdir(out))
    assert atomic.OWNER not in os.listdir(out)
    assert main(convert_args(tiny_model_dir, plan_file, out)) == 0  # an earlier hybrid is replaced, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid"]


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_partial_that_a_live_process_writes_is_left_alone(tmp_path, capsys):
    final = tmp_path / "model"
    live = atomic.partial_of(final)
    live.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (live / atomic.OWNER).write_text(f"{os.uname().nodename} {sleeper.pid}\n")
        with pytest.raises(WriteError, match=rf"model.partial is being written by another process \(pid {sleeper.pid}"):
            with atomic_dir(final):
                pass
        results = tmp_path / "results"
        results.mkdir()
        os.rename(live, results / "run.partial")
        with new_results_dir(results, "x") as partial:
            (partial / "metrics.json").write_text("{}")
        assert "run.partial is being written by another process" in capsys.readouterr().err
        assert (results / "run.partial").is_dir() and final_of(partial).is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_partials_in_a_results_folder_are_removed_and_reported(tmp_path, capsys):
    old = tmp_path / "model_2026-01-01T00-00-00.partial"  # from a hydrahead before writer files: no owner
    old.mkdir()
    os.utime(old, (0, 0))
    with new_results_dir(tmp_path, "model") as partial:
        (partial / "metrics.json").write_text("{}")
    assert f"hydrahead: removed {old}, left by an interrupted run" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [final_of(partial).name]


def test_two_writers_in_the_same_second_get_different_folders(tmp_path):
    with new_results_dir(tmp_path, "model") as a, new_results_dir(tmp_path, "model") as b:
        assert a != b  # each claimed its folder by a mkdir only one writer can win
        (a / "metrics.json").write_text(json.dumps("a"))
        (b / "metrics.json").write_text(json.dumps("b"))
    assert final_of(a) != final_of(b)
    assert {json.loads((final_of(p) / "metrics.json").read_text()) for p in (a, b)} == {"a", "b"}
    assert not list(tmp_path.glob("*.partial"))


def test_a_failed_results_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), new_results_dir(tmp_path, "model") as partial:
        (partial / "metrics.json").write_text("{}")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
