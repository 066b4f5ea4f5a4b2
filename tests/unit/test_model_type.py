"""A hybrid is its own model type: the Auto classes load it (after `import hydrahead`, or from the directory's
own code with trust_remote_code), plain transformers refuses it, and directories of the older format load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hydrahead
from hydrahead.attention import HybridOptions
from hydrahead.convert import convert, load, save
from tests.unit.test_hybrid import ids, mixed_plan, randomise_new_parameters, tiny


@pytest.fixture(scope="module")
def hybrid_dir(tmp_path_factory):
    model = tiny(seed=11)
    hybrid = randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=16)))
    path = tmp_path_factory.mktemp("hybrid") / "model"
    save(hybrid, path)
    with torch.no_grad():
        logits = hybrid(ids(2, 19)).logits
    torch.save(logits, path.parent / "expected.pt")
    return path


def run_python(code: str, tmp_path) -> subprocess.CompletedProcess:
    """A fresh interpreter (nothing imported yet, transformers' remote-code cache in tmp_path)."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_directory_names_its_own_model_type(hybrid_dir):
    config = json.loads((hybrid_dir / "config.json").read_text())
    assert config["model_type"] == "hydrahead_qwen3"
    assert config["architectures"] == ["HydraQwen3ForCausalLM"]
    assert config["auto_map"] == {"AutoConfig": "configuration_hydrahead.HydraQwen3Config",
                                  "AutoModelForCausalLM": "modeling_hydrahead.HydraQwen3ForCausalLM"}
    assert config["hydrahead"]["base_model_type"] == "qwen3"
    assert (hybrid_dir / "configuration_hydrahead.py").is_file() and (hybrid_dir / "modeling_hydrahead.py").is_file()


def test_auto_classes_after_import_hydrahead(hybrid_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hybrid_dir)
    assert isinstance(model, hydrahead.HydraQwen3ForCausalLM)
    with torch.no_grad():
        assert torch.equal(model(ids(2, 19)).logits, torch.load(hybrid_dir.parent / "expected.pt"))


def test_trust_remote_code_gives_the_hybrid_and_plain_transformers_refuses(hybrid_dir, tmp_path):
    remote = run_python(f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(hybrid_dir)!r}, trust_remote_code=True)
        x = torch.randint(1, 97, (2, 19), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (model(x).logits - torch.load({str(hybrid_dir.parent / "expected.pt")!r})).abs().max().item()
        print(type(model).__module__, type(model).__name__, diff)
    """, tmp_path)
    assert remote.returncode == 0, remote.stderr[-2000:]
    module, name, diff = remote.stdout.split()
    assert module == "hydrahead.modeling" and name == "HydraQwen3ForCausalLM"
    # Another process may split the matmuls over a different number of threads (CI has more cores than
    # this machine), so float32 sums can differ in the last bits; random q/k/v would differ by whole units.
    assert float(diff) < 1e-5

    plain = run_python(f"""
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(hybrid_dir)!r})
    """, tmp_path)
    assert plain.returncode != 0
    assert "trust_remote_code" in plain.stderr or "hydrahead_qwen3" in plain.stderr, plain.stderr[-2000:]


def test_a_directory_of_the_older_format_still_loads(hybrid_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for f in ("model.safetensors", "generation_config.json"):
        (old / f).write_bytes((hybrid_dir / f).read_bytes())
    config = json.loads((hybrid_dir / "config.json").read_text())
    config.update(model_type="qwen3", architectures=["HydraQwen3ForCausalLM"])
    config.pop("auto_map")
    config["hydrahead"].pop("base_model_type")
    (old / "config.json").write_text(json.dumps(config))
    model = load(old)
    assert isinstance(model, hydrahead.HydraQwen3ForCausalLM) and model.config.model_type == "hydrahead_qwen3"
    with torch.no_grad():
        assert torch.equal(model(ids(2, 19)).logits, torch.load(hybrid_dir.parent / "expected.pt"))
