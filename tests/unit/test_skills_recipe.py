"""benchmarks/skills_recipe.py: the rows kept apart from the runs, the shared align stage, the paired comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import script_fixture


recipe = script_fixture("skills_recipe")


def finished_align(out: Path, tag: str) -> Path:
    model = out / tag / "align" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (out / tag / "align" / "summary.json").write_text('{"steps": 100}')
    return out / tag / "align"


def test_a_variant_that_differs_after_align_takes_a_copy_of_the_finished_align(recipe, tmp_path):
    finished_align(tmp_path, "nope_logscale__full__s1")
    source = recipe.share_stages(tmp_path, "nope_logscale + skills mixture", "full", 1)
    assert source == tmp_path / "nope_logscale__full__s1"
    copy = tmp_path / "nope_logscale+skills_mixture__full__s1"
    assert json.loads((copy / "align" / "summary.json").read_text()) == {"steps": 100}
    assert str(source / "align") in (copy / "ALIGN_SHARED.txt").read_text()
    assert not (copy / "align.partial").exists() and not (copy / "distill").exists()  # distill mixtures differ
    assert recipe.share_stages(tmp_path, "nope_logscale + skills mixture", "full", 1) is None  # already there


@pytest.mark.parametrize("name, budget, seed", [
    ("nope_logscale + head align", "full", 1),  # another align setting: its own align stage
    ("rope + skills mixture", "full", 1),  # other conversion options
    ("nope_logscale + skills mixture", "2x", 1),  # another budget
    ("nope_logscale + skills mixture", "full", 0),  # another seed
    ("nope_logscale + no_repeat heads", "full", 1),  # another plan (its FA heads scored on other behaviours)
    ("all FA (NoPE + log-scale) + skills mixture", "full", 1),  # another plan (every head FA), the rest alike
])
def test_no_copy_from_a_stage_trained_another_way(recipe, tmp_path, name, budget, seed):
    finished_align(tmp_path, "nope_logscale__full__s1")
    assert recipe.share_stages(tmp_path, name, budget, seed) is None
    assert not (tmp_path / recipe.run_tag(name, budget, seed) / "align").exists()


def test_the_cwe_weighted_mixture_shares_the_align_of_the_mixture_with_the_same_heads(recipe, tmp_path):
    # same plan (no_repeat heads), options and align settings; only the distill mixture differs
    finished_align(tmp_path, "nope_logscale+skills_mixture+no_repeat_heads__4x__s1")
    name = "nope_logscale + cwe-weighted mixture + no_repeat heads"
    assert recipe.share_stages(tmp_path, name, "4x", 1) == tmp_path / "nope_logscale+skills_mixture+no_repeat_heads__4x__s1"
    assert recipe.share_stages(tmp_path, name, "4x", 0) is None  # the other seed's align is not there
    assert abs(sum(recipe.CWE_MIXTURE.values()) - 1) < 1e-9
    assert recipe.CWE_MIXTURE["cwe"] == 2 * recipe.SKILLS_MIXTURE["cwe"]


def test_a_variant_that_differs_only_in_its_long_stage_takes_align_and_distill(recipe, tmp_path):
    name = "nope_logscale + cwe-weighted mixture in distill and long + no_repeat heads"
    mixture_only = finished_align(tmp_path, "nope_logscale+skills_mixture+no_repeat_heads__4x__s0").parent
    cwe = finished_align(tmp_path, "nope_logscale+cwe-weighted_mixture+no_repeat_heads__4x__s0").parent
    (cwe / "distill" / "model").mkdir(parents=True)
    (cwe / "distill" / "model" / "config.json").write_text('{"distill": 1}')
    assert recipe.share_stages(tmp_path, name, "4x", 0) == cwe  # two stages alike beat one
    copy = tmp_path / recipe.run_tag(name, "4x", 0)
    assert json.loads((copy / "distill" / "model" / "config.json").read_text()) == {"distill": 1}
    assert str(cwe / "distill") in (copy / "DISTILL_SHARED.txt").read_text() and (copy / "align").exists()
    assert not (copy / "long").exists() and mixture_only.exists()


def test_no_copy_from_an_align_stage_still_training(recipe, tmp_path):
    (tmp_path / "nope_logscale__full__s0" / "align" / "checkpoint").mkdir(parents=True)  # no model yet
    assert recipe.share_stages(tmp_path, "nope_logscale + skills mixture", "full", 0) is None


def row(recipe, variant: str, seed: int, value: float, budget: str = "full", n: int = 4) -> dict:
    """A row whose every sample scores `value` (0-1) in every column of the recipe's table."""
    records = [{"task": t, "length": int(length), "score": value}
               for t, length in recipe.COLUMNS for _ in range(n)]
    return {"variant": variant, "budget": budget, "seed": seed, "limit": n, "train_minutes": 1.0,
            "load_at_start": 0.5, "load_at_end": 0.5, "records": records}


def test_rows_are_read_from_the_rows_folder_when_one_is_given(recipe, tmp_path):
    run_row = tmp_path / "runs" / "nope_logscale__full__s0" / "row.json"
    run_row.parent.mkdir(parents=True)
    run_row.write_text(json.dumps(row(recipe, "nope_logscale", 0, 0.5)))
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "rope__full__s0.json").write_text(json.dumps(row(recipe, "rope", 0, 0.25)))
    assert [r["variant"] for r in recipe.load_rows(tmp_path / "runs", None)] == ["nope_logscale"]
    assert [r["variant"] for r in recipe.load_rows(tmp_path / "runs", tmp_path / "rows")] == ["rope"]


def test_compare_pairs_the_seeds_both_sides_have(recipe):
    mixture = "nope_logscale + skills mixture"
    rows = [row(recipe, mixture, 0, 0.75), row(recipe, mixture, 1, 0.75),
            row(recipe, "nope_logscale", 0, 0.5), row(recipe, "nope_logscale", 2, 0.0)]
    text = recipe.compare(rows, "nope_logscale + skills mixture", "nope_logscale", budget="full")
    assert "seeds [0]" in text  # seed 1 has no partner, seed 2 none either
    vt = next(line for line in text.splitlines() if line.startswith("| vt @512 |"))
    assert [c.strip() for c in vt.strip("|").split("|")][1:4] == ["75.0", "50.0", "+25.0 [+25.0, +25.0]"]
    with pytest.raises(SystemExit, match="no seed has both"):
        recipe.compare(rows, "nope_logscale + skills mixture@2x", "nope_logscale", budget="full")


def test_compare_reads_only_the_columns_both_sides_have(recipe):
    # rows measured again at the native length alone (--remeasure --factors 1) have no 8192 columns
    native = [{**r, "records": [x for x in r["records"] if x["length"] == 512]}
              for r in (row(recipe, "nope_logscale", 0, 0.5), row(recipe, "rope", 0, 0.25))]
    lines = recipe.compare(native, "nope_logscale", "rope", budget="full").splitlines()
    assert not any("@8192" in line for line in lines)
    mean = next(line for line in lines if line.startswith("| mean of 5 tasks @512 |"))
    assert "+25.0 [+25.0, +25.0]" in mean


def goal_rows(text: str) -> dict[tuple[str, str], list[str]]:
    out = {}
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip("|").split("|")]
        if len(cols) == 6 and cols[1].isdigit():
            out[(cols[0], cols[1])] = cols[2:]
    return out


def test_the_goal_pools_the_seeds_and_asks_the_reach_of_every_seed(recipe):
    teacher = row(recipe, "original", 0, 0.8)
    seed0, seed1 = row(recipe, "nope_logscale", 0, 0.8, "4x"), row(recipe, "nope_logscale", 1, 0.64, "4x")
    table = goal_rows(recipe.goal([teacher, seed0, seed1], "nope_logscale@4x", "full"))
    # pooled 72 of the teacher's 80 is exactly 90%: met
    assert table[("vt", "512")] == ["80.0", "72.0 [72.0, 72.0]", "90%", "met"]
    # at 8192 seed 1 scores 64 < 95: the reach is asked of each seed, whatever the pool
    assert table[("niah_single_1", "8192")][2:] == ["seeds: 80, 64", "not met"]
    assert ("vt", "8192") not in table  # only niah_single_1 carries a goal at 16x
    with pytest.raises(SystemExit, match="at least one nope_logscale@2x row"):
        recipe.goal([teacher, seed0], "nope_logscale@2x", "full")
    with pytest.raises(SystemExit, match="unknown budget"):
        recipe.goal([teacher, seed0], "nope_logscale@8x", "full")


def test_the_goal_is_met_only_when_every_task_is(recipe):
    teacher = row(recipe, "original", 0, 0.5)
    records = row(recipe, "nope_logscale", 0, 1.0, "4x")
    text = recipe.goal([teacher, records], "nope_logscale@4x", "full")
    assert text.splitlines()[-1] == "goal met: 6 of 6 rows"
    records["records"] = [dict(r, score=0.4) if r["task"] == "cwe" else r for r in records["records"]]
    text = recipe.goal([teacher, records], "nope_logscale@4x", "full")
    assert goal_rows(text)[("cwe", "512")][2:] == ["80%", "not met"]
    assert text.splitlines()[-1] == "goal not met: 5 of 6 rows"


def native_only(full: dict) -> dict:
    """The row measured again at 512 only (as --remeasure --factors 1 writes it)."""
    return dict(full, records=[r for r in full["records"] if r["length"] == 512], factors=[1])


def test_the_goal_reads_the_reach_from_other_rows_when_its_rows_stop_at_512(recipe):
    teacher = native_only(row(recipe, "original", 0, 0.8))
    ours = [native_only(row(recipe, "nope_logscale", s, 0.8, "4x")) for s in (0, 1)]
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0, 1\] have no niah_single_1 @8192.*--reach_rows"):
        recipe.goal([teacher, *ours], "nope_logscale@4x", "full")
    far = [row(recipe, "nope_logscale", 0, 1.0, "4x"), row(recipe, "nope_logscale", 1, 0.9, "4x")]
    table = goal_rows(recipe.goal([teacher, *ours], "nope_logscale@4x", "full", reach=far))
    assert table[("niah_single_1", "8192")][2:] == ["seeds: 100, 90", "not met"]  # seed 1's far row, not its own
    assert table[("vt", "512")][2:] == ["100%", "met"]
    with pytest.raises(SystemExit, match=r"no niah_single_1 @8192 for nope_logscale@4x seed\(s\) \[1\]"):
        recipe.goal([teacher, *ours], "nope_logscale@4x", "full", reach=far[:1])


def test_remeasure_refuses_before_loading_anything_when_a_model_is_missing(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "load_causal_lm", lambda path: (_ for _ in ()).throw(AssertionError("loaded")))
    base = ["skills_recipe.py", "--out", str(tmp_path), "--budget", "4x", "--remeasure"]
    monkeypatch.setattr("sys.argv", [*base, "--only", "nope_logscale"])
    with pytest.raises(SystemExit, match="--remeasure needs --rows"):
        recipe.main()
    monkeypatch.setattr("sys.argv", [*base, "--rows", str(tmp_path / "rows"), "--only", "original,nope_logscale"])
    with pytest.raises(SystemExit, match="no finished model for nope_logscale at --budget 4x --seed 0"):
        recipe.main()
    monkeypatch.setattr("sys.argv", [*base, "--rows", str(tmp_path / "rows"), "--only", "original", "--factors", "1,x"])
    with pytest.raises(SystemExit, match="--factors: comma-separated"):
        recipe.main()


def test_a_redefined_variant_never_resumes_its_old_folder(recipe, tmp_path, monkeypatch):
    from hydrahead.transfer.config import TransferError

    from types import SimpleNamespace

    teacher = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    monkeypatch.setattr(recipe, "load_causal_lm", lambda path: (teacher, None))
    monkeypatch.setattr(recipe, "share_stages", lambda *a: (_ for _ in ()).throw(RuntimeError("checked")))
    argv = ["skills_recipe.py", "--out", str(tmp_path), "--budget", "quick", "--only", "nope_logscale"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(RuntimeError, match="checked"):  # the folder's recipe noted, then on to the training
        recipe.main()
    folder = tmp_path / "nope_logscale__quick__s0"
    assert json.loads((folder / "recipe.json").read_text())["recipe"]["options"] == {"fa_position": "nope_logscale"}
    monkeypatch.setitem(recipe.VARIANTS, "nope_logscale", recipe.Recipe({"fa_position": "rope"}, {}))
    with pytest.raises(TransferError, match="other settings .*'recipe'.*use another --out"):
        recipe.main()


def test_the_pipeline_default_trains_the_recipe_whose_rows_met_the_goal(recipe):
    # the rule (benchmarks/rows/skills-native100/RULE-long-stage-mixture.md) made this variant the default: the
    # pipeline's defaults must train what its rows measured, or the README's figures describe another model
    from hydrahead.transfer.config import DISTILL_MIXTURES
    from hydrahead.transfer.pipeline import PipelineConfig

    name, budget = recipe.parse_side(recipe.PIPELINE_DEFAULT, "full", "PIPELINE_DEFAULT")
    variant, cfg = recipe.VARIANTS[name], PipelineConfig()
    assert (cfg.align_steps, cfg.distill_steps, cfg.long_steps) == recipe.BUDGETS[budget]
    for stage in ("distill", "long"):
        assert DISTILL_MIXTURES[getattr(cfg, f"{stage}_mixture")] == variant.settings[stage]["mixture"]
    assert tuple(cfg.behaviours) == variant.behaviours and cfg.fa_position == variant.options["fa_position"]
    assert cfg.head_weight == 0 and "align" not in variant.settings and not variant.all_fa
