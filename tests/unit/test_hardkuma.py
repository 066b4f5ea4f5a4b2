"""HardKuma gates, the density constraint, the L1 baseline, role export and role training."""

import numpy as np
import pytest
import torch

from hydrahead.cli import main
from hydrahead.decoding import DecodingError
from hydrahead.decoding.roles import (
    random_roles,
    retrieval_count,
    roles_from_scores,
    roles_from_values,
)
from hydrahead.decoding.train import RoleTrainingConfig, train_roles
from hydrahead.plan import HeadPlan, ModelShape, PlanError
from hydrahead.selection.hardkuma import (
    DensityConstraint,
    HardKumaGate,
    L1Gate,
    expected_l0,
    expected_value,
    prob_one,
    prob_zero,
    sample,
)

R, S = "retrieval", "sparse"


@pytest.mark.parametrize("a, b", [(0.3, 0.5), (1.0, 1.0), (2.0, 3.0), (0.7, 2.0), (4.0, 0.2)])
def test_sampling_matches_the_closed_forms(a, b):
    n = 200_000
    at, bt = torch.full((n,), a, dtype=torch.float64), torch.full((n,), b, dtype=torch.float64)
    z = sample(at, bt, generator=torch.Generator().manual_seed(0))
    assert ((z >= 0) & (z <= 1)).all()
    a1, b1 = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    tol = 4 * (0.25 / n) ** 0.5  # four standard errors of a Bernoulli share
    assert abs((z == 0).double().mean() - prob_zero(a1, b1)) < tol
    assert abs((z == 1).double().mean() - prob_one(a1, b1)) < tol
    assert abs((z != 0).double().mean() - expected_l0(a1, b1)) < tol
    assert abs(z.mean() - expected_value(a1, b1)) < tol
    # the closed form itself: P(z = 0) = 1 - (1 - x0^a)^b with x0 = 0.1 / 1.2
    assert abs(prob_zero(a1, b1).item() - (1 - (1 - (0.1 / 1.2) ** a) ** b)) < 1e-12


def test_gradients_flow_through_samples_and_the_expected_l0():
    gate = HardKumaGate((3, 2))
    (gate() * torch.arange(6.0).view(3, 2)).sum().backward()
    assert gate.log_a.grad.abs().sum() > 0 and gate.log_b.grad.abs().sum() > 0
    gate.zero_grad()
    gate.density().sum().backward()
    assert torch.isfinite(gate.log_a.grad).all() and (gate.log_b.grad < 0).all()  # larger b closes the gate
    gate.eval()
    assert torch.allclose(gate(), gate.values())  # eval mode: the deterministic gate
    for d in (0.05, 0.1, 0.5, 0.9):
        assert torch.allclose(HardKumaGate((4,), init_density=d).density(), torch.full((4,), d), atol=1e-5)


@pytest.mark.parametrize("start", [None, 0.1])
def test_the_lagrangian_moves_the_expected_density_to_the_target(start):
    """A toy problem: six gates whose loss wants them open, two of them much more than the rest."""
    torch.manual_seed(0)
    weights = torch.tensor([0.05, 0.1, 0.02, 0.05, 1.0, 0.8])
    gate, constraint = HardKumaGate((6,), init_density=start), DensityConstraint(target=0.3, lr=0.05)
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.02, betas=(0.9, 0.95), eps=1e-12)
    before = gate.density().mean().item()
    for _ in range(300):
        density = gate.density().mean()
        loss = (weights * (1 - gate()) ** 2).mean() + constraint.term(density)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        constraint.update(density)
    after = gate.density().mean().item()
    assert abs(after - 0.3) < abs(before - 0.3) and abs(after - 0.3) < 0.1
    assert set(torch.topk(gate.values(), 2).indices.tolist()) == {4, 5}  # the gates the loss needs


def test_l1_gate_stays_in_the_unit_interval():
    gate = L1Gate((2, 2))
    with torch.no_grad():
        gate.alpha.copy_(torch.tensor([[1.5, -0.2], [0.3, 0.9]]))
    assert gate().min() == 0 and gate().max() == 1
    gate.project()
    assert gate.values().flatten().tolist() == pytest.approx([1.0, 0.0, 0.3, 0.9])


def test_role_export_keeps_layer_0_and_meets_the_target():
    shape = ModelShape(4, 8, 2, 32)
    values = np.array([[0.0, 0.0], [0.2, 0.9], [0.1, 0.3], [0.8, 0.6]])
    assert retrieval_count(shape, 0.1) == 1 and retrieval_count(shape, 0.3) == 2 and retrieval_count(shape, 0) == 0
    assert roles_from_values(values, shape, 0.1) == [[R, R], [S, R], [S, S], [S, S]]  # layer 0 despite its 0s
    assert roles_from_values(values, shape, 0.3) == [[R, R], [S, R], [S, S], [R, S]]
    assert roles_from_values(values, shape, None) == [[R, R], [S, R], [S, S], [R, R]]  # threshold 0.5
    roles = random_roles(shape, 0.5, seed=3)
    assert roles[0] == [R, R] and sum(r == R for layer in roles[1:] for r in layer) == 3
    with pytest.raises(PlanError, match="role values have shape"):
        roles_from_values(values[:3], shape)
    with pytest.raises(PlanError, match="retrieval share must lie"):
        retrieval_count(shape, 1.5)

    class FakeScores:
        def __init__(self):
            self.shape = shape

        def fused(self, kv=False):
            return values

    assert roles_from_scores(FakeScores(), 0.1) == [[R, R], [S, R], [S, S], [S, S]]


def test_role_training_runs_on_a_tiny_model_and_refuses_hybrids(tiny_model_dir, tokenizer):
    from hydrahead.models import load_model

    model = load_model(tiny_model_dir)
    for method in ("hardkuma", "l1"):
        cfg = RoleTrainingConfig(method=method, steps=3, samples=3, batch_size=2, budget=40, tasks=("passkey",),
                                 max_answer_tokens=4)
        result = train_roles(model, tokenizer, cfg, progress=False)
        assert result.roles[0] == [R, R] and len(result.history) == 3
        assert all(p.requires_grad for p in model.parameters())  # unfrozen again
        assert model.config._attn_implementation == "sdpa"
    with pytest.raises(DecodingError, match="unknown role method"):
        train_roles(model, tokenizer, RoleTrainingConfig(method="duo", steps=1), progress=False)
    model.config.hydrahead = {"plan": {}}
    with pytest.raises(DecodingError, match="learn roles on the original model"):
        train_roles(model, tokenizer, RoleTrainingConfig(steps=1), progress=False)


def test_cli_roles(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "roles.json"
    assert main(["roles", "--model", str(tiny_model_dir), "--method", "random", "--target", "0.5", "--out", str(out)]) == 0
    plan = HeadPlan.load(out)
    assert plan.decode_roles[0] == [R, R] and plan.num_retrieval == 3 and plan.meta["roles_method"] == "random"
    assert "3 of 4 KV heads retrieval" in capsys.readouterr().out
    assert main(["roles", "--model", str(tiny_model_dir), "--method", "hardkuma", "--steps", "2", "--samples", "2",
                 "--budget", "40", "--out", str(out), "--quiet"]) == 0
    assert HeadPlan.load(out).meta["roles_method"] == "hardkuma"
    capsys.readouterr()
    assert main(["roles", "--model", str(tiny_model_dir), "--method", "scores", "--out", str(out)]) == 2
    assert "--method scores needs --scores FILE" in capsys.readouterr().err
    assert main(["roles", "--model", str(tiny_model_dir), "--target", "2", "--out", str(out)]) == 2
    assert "--target must be a share in [0, 1]" in capsys.readouterr().err
    assert main(["roles", "--model", str(tiny_model_dir), "--budget", "0", "--out", str(out)]) == 2
