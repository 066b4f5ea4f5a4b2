import pytest
import torch
from transformers import Qwen3Config

from hydrahead.plan import HeadPlan, ModelShape, PlanError


def config(layers=4, heads=8, kv=2, head_dim=32):
    return Qwen3Config(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                       hidden_size=64, intermediate_size=64, vocab_size=10)


def test_shape_and_ratio():
    plan = HeadPlan.from_config(config(), [[0], [5], [], [2, 3, 7]])
    assert plan.shape == ModelShape(4, 8, 2, 32)
    assert (plan.num_fa, plan.num_gdn) == (5, 27)
    assert plan.ratio == "5.40:1"
    assert HeadPlan.from_config(config(), [[1], [2], [3], [4]]).ratio == "7:1"
    assert HeadPlan.full_attention(config()).ratio == "all FA"
    assert HeadPlan.all_gdn(config()).ratio == "all GDN"
    assert plan.kinds(1) == ["gdn"] * 5 + ["fa"] + ["gdn"] * 2
    assert plan.gdn_heads(3) == [0, 1, 4, 5, 6]


def test_plans_from_a_shape_equal_plans_from_its_config():
    # callers that hold only a shape (head scores, the comparison's variants) build the same plans
    shape = ModelShape.of(config())
    assert ModelShape.of(shape) is shape
    for build in (HeadPlan.full_attention, HeadPlan.all_gdn):
        assert build(shape).to_dict() == build(config()).to_dict()
    assert HeadPlan.full_attention(shape).fa_heads == [list(range(8))] * 4


def test_kv_cache_follows_gqa():
    # group size 4: heads 0-3 share KV head 0, heads 4-7 share KV head 1
    plan = HeadPlan.from_config(config(), [[0], [5], [], [2, 3, 7]])
    assert [plan.fa_kv_heads(layer) for layer in range(4)] == [[0], [1], [], [0, 1]]
    # 4 cached KV heads x (K + V) x 32 dims x 2 bytes
    assert plan.kv_bytes_per_token(torch.bfloat16) == 4 * 2 * 32 * 2
    assert plan.kv_bytes_per_token("float32") == 4 * 2 * 32 * 4
    assert plan.full_kv_bytes_per_token("bf16") == 4 * 2 * 2 * 32 * 2
    # one FA head per layer costs as much cache at query granularity as one whole KV group
    per_query = HeadPlan.from_config(config(), [[0], [4], [1], [7]])
    per_group = HeadPlan.from_config(config(), [[0, 1, 2, 3], [], [], []], granularity="kv")
    assert per_query.ratio == per_group.ratio == "7:1"
    assert per_query.kv_bytes_per_token() == 4 * per_group.kv_bytes_per_token()


def test_gdn_state_bytes():
    plan = HeadPlan.from_config(config(), [[0, 1, 2, 3], [], [], []], granularity="kv")
    d = 32
    recurrent = 28 * d * d * 4
    conv_mha = 28 * 3 * d * 3 * 2  # q, k, v channels of 28 heads, 3 past inputs, bf16
    assert plan.gdn_state_bytes() == recurrent + conv_mha
    # shared k/v: layer 0 has 1 GDN KV head for 4 GDN heads, layers 1-3 have 2 for 8
    conv_shared = (4 + 2 * 1) * d * 3 * 2 + 3 * (8 + 2 * 2) * d * 3 * 2
    assert plan.gdn_state_bytes(mha=False) == recurrent + conv_shared
    assert plan.gdn_state_bytes(batch_size=3) == 3 * plan.gdn_state_bytes()
    assert HeadPlan.full_attention(config()).gdn_state_bytes() == 0


def test_layerwise():
    plan = HeadPlan.layerwise(config(), [3])
    assert plan.fa_heads == [[], [], [], list(range(8))]
    assert plan.ratio == "3:1"
    with pytest.raises(PlanError, match="layer index 4 out of range"):
        HeadPlan.layerwise(config(), [4])


def test_json_round_trip(tmp_path):
    plan = HeadPlan.from_config(config(), [[3, 0], [5], [], [7]], strategy="hand")
    path = plan.save(tmp_path / "p" / "plan.json")
    again = HeadPlan.load(path)
    assert again == plan
    assert again.fa_heads[0] == [0, 3]
    assert again.meta == {"strategy": "hand"}


@pytest.mark.parametrize(
    "heads, granularity, message",
    [
        ([[8], [], [], []], "query", r"layer 0: head index 8 out of range \(0..7\)"),
        ([[-1], [], [], []], "query", "head index -1 out of range"),
        ([[1, 1], [], [], []], "query", "listed twice"),
        ([[], [], []], "query", "lists 3 layers but its model has 4"),
        ([[0, 1], [], [], []], "kv", r"KV group 0 \(query heads \[0, 1, 2, 3\]\) must be all FA or all GDN"),
        ([[0], [], [], []], "heads", "granularity must be one of"),
    ],
)
def test_validation_errors(heads, granularity, message):
    with pytest.raises(PlanError, match=message):
        HeadPlan.from_config(config(), heads, granularity)


def test_plan_for_another_model():
    plan = HeadPlan.from_config(config(), [[0], [], [], []])
    with pytest.raises(PlanError, match="plan is for a model with 4 layers x 8 query heads .* this model has 4 layers x 16"):
        plan.check_model(config(heads=16, kv=4))
    plan.check_model(config())


def test_bad_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        HeadPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        HeadPlan.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"layers": []}')
    with pytest.raises(PlanError, match="not a hydrahead head plan"):
        HeadPlan.load(tmp_path / "other.json")
    (tmp_path / "partial.json").write_text('{"format": "hydrahead.plan/1", "model": {}}')
    with pytest.raises(PlanError, match="malformed"):
        HeadPlan.load(tmp_path / "partial.json")
