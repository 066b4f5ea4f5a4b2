"""The teacher's training configuration and its named presets (torch-free: the command line's help shows
these defaults without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TeacherConfig:
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 32
    native_length: int = 512
    rope_theta: float = 10000.0
    steps: int = 6000
    drill_steps: int = 1200  # steps trained on the drill-heavy early mixture
    tokens_per_batch: int = 4096
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.05
    answer_weight: float = 1.0  # extra loss on answer tokens, on top of the loss on every token
    min_length: int = 128
    start_max_length: int = 256
    curriculum_until: float = 0.5  # share of the run after which the longest sequences are native length
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 500
    eval_samples: int = 16  # per task; 0 skips the periodic and the closing evaluation (minutes on a CPU)
    bf16: bool = True


# named configurations: the shipped 4-layer teacher and a deeper one (layer-wise 3:1 is then two FA
# layers of eight, head-wise 7:1 eight heads of 64)
PRESETS = {
    "teacher-3m": {},
    "teacher-8l": {"num_layers": 8},
}
