"""Learning decode roles: one gate per (layer, KV head) on a frozen model, trained on offline passkey / NIAH
samples. The dense model is the teacher; the student mixes every head's dense and sparse-reuse attention by
its gate (`mix.py`). Loss: MSE between the two final hidden states over the answer tokens, relative to the
teacher's mean square, plus, for HardKuma gates, a Lagrangian term lambda * (E[density] - target) whose
multiplier is learned by gradient ascent, so the expected share of retrieval heads is held at the target
instead of traded against the MSE by a hand-tuned weight. The L1 gate (DuoAttention) uses a fixed weight.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from ..compat import cache_arg
from ..plan import ModelShape
from ..selection.hardkuma import GATES, DensityConstraint
from .config import DecodingError, SparseConfig
from .examples import Example, build_examples
from .mix import NAME, SLOT, MixState, register
from .roles import roles_from_values

TRAIN_TASKS = ("niah_single_1", "niah_multikey_1", "passkey")


@dataclass
class RoleTrainingConfig:
    method: str = "hardkuma"  # or "l1"
    target: float = 0.1  # share of the KV heads of layers 1.. that are retrieval
    steps: int = 150
    batch_size: int = 4
    lr: float = 0.02
    multiplier_lr: float = 0.05  # gradient ascent on the Lagrange multiplier
    l1_weight: float = 0.05
    budget: int | float = 0.125  # the decode budget the roles are learned for
    sink: int = 4
    recent: int = 32
    mode: str = "token"
    tasks: tuple[str, ...] = TRAIN_TASKS
    samples: int = 48  # training samples (split over the tasks), generated offline
    length: int | None = None  # default: the model's native length (max_position_embeddings)
    max_answer_tokens: int = 12
    seed: int = 1234  # not the evaluation's seed 0: the samples differ from those roles are judged on

    def sparse_config(self) -> SparseConfig:
        return SparseConfig(self.budget, self.mode, sink=self.sink, recent=self.recent)


@dataclass
class RoleTrainingResult:
    roles: list[list[str]]
    values: list[list[float]]  # [L, KV] deterministic gate values (E[z] for HardKuma, alpha for L1); layer 0 = 1
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


def train_roles(model, tokenizer, config: RoleTrainingConfig | None = None, progress: bool = True) -> RoleTrainingResult:
    """Learn the roles of `model` (an HF Qwen3 / Llama, not a hybrid: train on the original model)."""
    from tqdm import tqdm

    cfg = config or RoleTrainingConfig()
    if getattr(model.config, "hydrahead", None):
        raise DecodingError("learn roles on the original model; its roles apply to the FA heads of its hybrids")
    if cfg.method not in GATES:
        raise DecodingError(f"unknown role method {cfg.method!r}; choose one of {', '.join(GATES)}")
    shape = ModelShape.of(model.config)
    if shape.num_layers < 2:
        raise DecodingError("a one-layer model has no roles to learn: layer 0 is always retrieval")
    start = time.perf_counter()
    sparse = cfg.sparse_config()
    examples = build_examples(model, tokenizer, cfg)
    torch.manual_seed(cfg.seed)
    free = (shape.num_layers - 1, shape.num_kv_heads)
    gate = GATES["hardkuma"](free, init_density=cfg.target) if cfg.method == "hardkuma" and 0 < cfg.target < 1 else GATES[cfg.method](free)
    # a short second-moment memory and a tiny eps: once a gate saturates its gradients are tiny but steady, and
    # Adam must rescale them (not remember the large early ones) for the constraint to move it again
    optimizer = torch.optim.Adam(gate.parameters(), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-12)
    constraint = DensityConstraint(cfg.target, cfg.multiplier_lr)
    rng = random.Random(cfg.seed)
    history = []
    bar = tqdm(range(cfg.steps), desc=f"roles ({cfg.method})", disable=not progress, dynamic_ncols=True)
    with _frozen(model):
        for step in bar:
            batch = rng.sample(examples, min(cfg.batch_size, len(examples)))
            gate.train()
            z = torch.cat([torch.ones(1, shape.num_kv_heads), gate()])  # [L, KV], layer 0 always dense
            mse = student_loss(model, batch, z, sparse)
            density = gate.density().mean()
            if cfg.method == "hardkuma":
                loss = mse + constraint.term(density)
            else:
                loss = mse + cfg.l1_weight * gate.penalty().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if cfg.method == "hardkuma":
                constraint.update(density)
            else:
                gate.project()
            row = {"step": step, "mse": float(mse.detach()), "density": float(density.detach()), "multiplier": constraint.multiplier}
            history.append(row)
            bar.set_postfix(mse=f"{row['mse']:.4f}", density=f"{row['density']:.3f}", lam=f"{row['multiplier']:.2f}")
    gate.eval()
    values = torch.cat([torch.ones(1, shape.num_kv_heads), gate.values()])
    roles = roles_from_values(values.numpy(), shape, cfg.target)
    return RoleTrainingResult(roles, values.tolist(), history, time.perf_counter() - start, asdict(cfg))


def student_loss(model, batch: list[Example], z: torch.Tensor, sparse: SparseConfig) -> torch.Tensor:
    """Relative MSE of the gated student's final hidden states against the dense model's, over answer tokens."""
    window = max(len(e.answer) for e in batch)
    is_answer = torch.tensor([[j < len(e.answer) for j in range(window)] for e in batch])  # [B, W], answers left-aligned
    with torch.no_grad():
        teacher = _decode_answers(model, batch, window, is_answer)  # [B, W, hidden]
    with _mixing(model, MixState(sparse, window, is_answer, z)):
        student = _decode_answers(model, batch, window, is_answer)
    err = ((student - teacher) ** 2).sum(-1)[is_answer].mean()
    return err / (teacher**2).sum(-1)[is_answer].mean()


def _decode_answers(model, batch: list[Example], window: int, is_answer: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, W, hidden] of the answer tokens fed at once over each prompt's cached KV
    (prompts left-padded, answers right-padded)."""
    from transformers import DynamicCache

    lengths = [e.keys[0].shape[1] for e in batch]
    width = max(lengths)
    cache = DynamicCache()
    for layer in range(len(batch[0].keys)):
        k = torch.stack([torch.nn.functional.pad(e.keys[layer], (0, 0, width - n, 0)) for e, n in zip(batch, lengths)])
        v = torch.stack([torch.nn.functional.pad(e.values[layer], (0, 0, width - n, 0)) for e, n in zip(batch, lengths)])
        cache.update(k, v, layer)  # [B, Hk, P, D]
    prompt_mask = torch.tensor([[j >= width - n for j in range(width)] for n in lengths], dtype=torch.long)
    mask = torch.cat([prompt_mask, is_answer.long()], 1)  # [B, P + W]
    ids = torch.tensor([e.answer + [0] * (window - len(e.answer)) for e in batch])
    position_ids = torch.tensor(lengths)[:, None] + torch.arange(window)  # [B, W]
    return model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **cache_arg(cache)).last_hidden_state


@contextmanager
def _frozen(model):
    """Gradients reach the gates only; the model's own flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _mixing(model, state: MixState):
    register()
    layers = model.model.layers
    previous = model.config._attn_implementation
    for i, layer in enumerate(layers):
        setattr(layer.self_attn, SLOT, (i, state))
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        for layer in layers:
            delattr(layer.self_attn, SLOT)
