"""Plots read the JSONL a run wrote; nothing here touches a model."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmrl.logging import read_metrics  # noqa: E402


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train reward (sampled) and held-out reward (greedy) per step, and held-out exact match."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(*series(rows, "train/reward_mean"), label="train reward (sampled)", alpha=0.7)
    left.plot(*series(rows, "eval/reward"), "o-", label="held-out reward (greedy)")
    left.set_xlabel("step")
    left.set_ylabel("reward")
    left.legend()
    right.plot(*series(rows, "train/exact_match"), label="train exact match (sampled)", alpha=0.7)
    right.plot(*series(rows, "eval/exact_match"), "o-", label="held-out exact match (greedy)")
    right.set_xlabel("step")
    right.set_ylim(-0.02, 1.02)
    right.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "reward.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, metric: str = "eval/exact_match",
              labels: list[str] | None = None) -> Path:
    """Overlay one metric of several runs."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run_dir in enumerate(run_dirs):
        label = labels[i] if labels else Path(run_dir).name
        ax.plot(*series(read_metrics(run_dir), metric), "o-" if metric.startswith("eval/")
                else "-", label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
