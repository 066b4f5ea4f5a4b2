"""Plots of an evaluation: accuracy vs length, and a needle depth x length heatmap per NIAH task."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def length_axis(ax, lengths, native_length: int | None = None, label: str | None = "native length") -> None:
    """A context-length x axis: log2, one tick per measured length, a dotted line at the native length,
    scores from 0 to 100 on y."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(lengths), [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    if native_length:
        ax.axvline(native_length, color="grey", linestyle=":", label=label)


def ema(values, span: int | None = None) -> list[float]:
    """Exponential moving average (span ~ the steps it averages over; default an eighth of the run,
    1-50 steps), seeded with the first value so the curve starts where the raw one does."""
    values = [float(v) for v in values]
    span = span or max(1, min(50, len(values) // 8))
    alpha = 2 / (span + 1)
    out, current = [], values[0] if values else 0.0
    for v in values:
        current = alpha * v + (1 - alpha) * current
        out.append(current)
    return out


def loss_curve(ax, steps, values, label: str, color=None, width: float = 1.4):
    """One loss: the raw values faint, their moving average drawn over them."""
    raw = ax.plot(steps, values, lw=0.5, alpha=0.3, color=color)[0]
    ax.plot(steps, ema(values), lw=width, color=raw.get_color(), label=label)


def loss_axis(ax, values, ylabel: str = "loss") -> None:
    """A y axis that a reader reads without decoding: log scale only when the loss spans more than 3x,
    with ticks at 1-2-5 of each decade (more within one decade, only the decades over a wide range)
    written plainly (0.2, 0.5, 1, 2) instead of "2x10^0"."""
    from matplotlib import ticker

    import math

    positive = [float(v) for v in values if v is not None and float(v) > 0]
    if positive and max(positive) / min(positive) > 3:
        ax.set_yscale("log")
        decades = math.log10(max(positive) / min(positive))
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=12))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_accuracy_vs_length(result, path: Path, native_length: int | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for task, per in result.scores.items():
        lengths = sorted(per)
        ax.plot(lengths, [per[n] for n in lengths], marker="o", label=task)
    length_axis(ax, sorted({n for per in result.scores.values() for n in per}), native_length)
    ax.set_ylabel("score (RULER string match, %)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_depth_heatmap(task: str, per_length: dict, path: Path) -> Path:
    import numpy as np

    plt = _pyplot()
    lengths = sorted(per_length)
    depths = sorted({d for per in per_length.values() for d in per})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for j, n in enumerate(lengths):
        for i, d in enumerate(depths):
            if d in per_length[n]:
                grid[i, j] = per_length[n][d]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_title(task)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_results(result, folder: Path, native_length: int | None = None) -> list[Path]:
    folder = Path(folder)
    paths = [plot_accuracy_vs_length(result, folder / "accuracy_vs_length.png", native_length)]
    for task, per_length in result.depth_scores.items():
        if per_length:
            paths.append(plot_depth_heatmap(task, per_length, folder / f"depth_heatmap_{task}.png"))
    return paths


def plot_training_log(log_path: Path, path: Path) -> Path:
    """Loss, answer-token accuracy and the periodic native-length task scores of a teacher run."""
    import json

    plt = _pyplot()
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("loss", "loss (all tokens)"), ("answer_loss", "loss (answer tokens)")):
        loss_curve(ax1, steps, [r[key] for r in rows], label, width=1.2)
    loss_axis(ax1, [r[k] for r in rows for k in ("loss", "answer_loss")], "next-token cross-entropy")
    ax1.legend(fontsize=8)
    evals = [r for r in rows if "eval" in r]
    for task in evals[0]["eval"] if evals else []:
        ax2.plot([r["step"] for r in evals], [r["eval"].get(task) for r in evals], marker="o", label=task)
    ax2.set_xlabel("step")
    ax2.set_ylabel("score at native length (%)")
    ax2.set_ylim(-3, 103)
    if evals:
        ax2.legend(fontsize=8)
    else:  # trained with eval_samples=0 (--no_eval)
        ax2.text(0.5, 0.5, "no evaluation in this run", ha="center", va="center", transform=ax2.transAxes)
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def _head_map(ax, grid, title: str, cmap: str, vmin=None, vmax=None, marked=()):
    """A layer x head heatmap; the (layer, head) cells in `marked` (the heads a plan keeps FA) are boxed."""
    from matplotlib.patches import Rectangle

    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for layer, head in marked:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="magenta", lw=2.5))
    layers, heads = grid.shape
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    if layers * heads <= 256:  # numbers stay readable
        for i in range(layers):
            for j in range(heads):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
    return im


def plot_head_scores(scores, path: Path, plan=None) -> Path:
    """Layer x head heatmaps: per behaviour the activation-patching (receiver) and path-patching (sender)
    effects; then the fused ranking score and the retrieval-score baseline. With a `plan`, the query heads
    it keeps as full attention are boxed on every map and named in the title."""
    import numpy as np

    plt = _pyplot()
    kept = [(layer, head) for layer, heads in enumerate(plan.fa_heads) for head in heads] if plan else []
    names = list(scores.behaviours)
    rows = len(names) + 1
    layers, heads = scores.shape.num_layers, scores.shape.num_heads
    cell = (0.45 * heads + 1.6, 0.35 * layers + 1.0)
    fig, axes = plt.subplots(rows, 2, figsize=(2 * cell[0], rows * cell[1]), squeeze=False)
    for r, name in enumerate(names):
        b = scores.behaviours[name]
        limit = max(float(np.abs(b.activation).max()), float(np.abs(b.path).max()), 1e-6)
        im = _head_map(axes[r, 0], b.activation, f"{name}: activation patching (receivers)", "RdBu_r", -limit, limit,
                       kept)
        _head_map(axes[r, 1], b.path, f"{name}: path patching via {len(b.receivers)} receivers", "RdBu_r", -limit, limit,
                  kept)
        fig.colorbar(im, ax=axes[r, 1], fraction=0.046)
    im = _head_map(axes[-1, 0], scores.fused(), "fused rank score", "viridis", 0, 1, kept)
    fig.colorbar(im, ax=axes[-1, 0], fraction=0.046)
    if scores.retrieval_score is not None:
        im = _head_map(axes[-1, 1], np.asarray(scores.retrieval_score), "retrieval score (Wu et al.)", "viridis", 0, 1,
                       kept)
        fig.colorbar(im, ax=axes[-1, 1], fraction=0.046)
    else:
        axes[-1, 1].axis("off")
    if kept:
        fig.suptitle(f"boxed: the {len(kept)} heads the plan keeps as full attention (GDN:FA {plan.ratio})",
                     fontsize=10)
    return _save(fig, path)


def plot_ablation(curve, path: Path) -> Path:
    """Task score against the number of mean-ablated heads: top-k by score vs k random heads."""
    import numpy as np

    plt = _pyplot()
    ks = sorted(curve.top)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.plot([0, *ks], [curve.dense, *(curve.top[k] for k in ks)], marker="o", label="top-k by fused score")
    rand = [np.array(curve.random[k]) for k in ks]
    ax.plot([0, *ks], [curve.dense, *(r.mean() for r in rand)], marker="s", label=f"k random heads (mean of {len(rand[0])})")
    ax.fill_between([0, *ks], [curve.dense, *(r.min() for r in rand)], [curve.dense, *(r.max() for r in rand)],
                    alpha=0.2, color=ax.lines[-1].get_color(), label="random min-max")
    ax.set_xlabel("heads mean-ablated (k)")
    ax.set_ylabel(f"{curve.task} at {curve.length} (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


LOSS_LABELS = {"align": "relative MSE of the attention outputs", "distill": "KL + cross-entropy",
               "long": "next-token cross-entropy"}


def read_log(log_path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]


def stage_losses(ax, rows: list[dict], stage: str = "", title: str = "") -> None:
    """Every logged loss component of a transfer stage against the step, on one axis."""
    keys = [k for k in rows[0] if k not in ("step", "lr", "grad_norm", "tokens_per_s")] if rows else []
    steps = [r["step"] for r in rows]
    for key in keys:
        loss_curve(ax, steps, [r[key] for r in rows], key, width=1.4 if key == "loss" else 0.9)
    loss_axis(ax, [r[k] for r in rows for k in keys], f"loss ({LOSS_LABELS[stage]})" if stage in LOSS_LABELS else "loss")
    ax.set_title(title, fontsize=9)
    if keys:
        ax.legend(fontsize=7)


def plot_loss_log(log_path: Path, path: Path, title: str = "") -> Path:
    """The loss of a transfer stage against the step (every logged loss component)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    stage = title.removeprefix("stage ").strip()
    stage_losses(ax, read_log(log_path), stage, title)
    return _save(fig, path)
