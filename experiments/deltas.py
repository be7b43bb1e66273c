"""How does the choice of Δ (raw, centered, normalized, max_only, rloo) change what is learned?

Same policy, positional reward, clipped loss with μ=1; only the delta function differs. The judge
is greedy exact match on held-out prompts; the held-out training reward (greedy) and the sampled
training reward are shown too. --reward picks another training reward (results then go to
results/deltas_<reward>.*).

    .venv/bin/python experiments/deltas.py [--seeds 3] [--steps 1500] [--reward positional]
"""

import argparse
import statistics
import time

from common import (
    BASE,
    RESULTS,
    add_args,
    curve,
    describe,
    last,
    merge,
    output_name,
    plot_mean_curves,
    run_grid,
    summary_table,
    write_jsonl,
)

NAME = "deltas"
DELTA_NAMES = ["raw", "centered", "normalized", "max_only", "rloo"]


def settings(steps: int, reward: str) -> dict[str, dict]:
    return {d: merge(BASE, {"task": {"reward": reward}, "algo": {"delta": d},
                            "train": {"steps": steps}}) for d in DELTA_NAMES}


def tail_mean(row: dict, key: str, k: int = 100) -> float:
    """Mean of key over the last k training steps."""
    steps, values = curve(row, key)
    return statistics.mean(v for s, v in zip(steps, values, strict=True) if s > steps[-1] - k)


def first_step(row: dict, key: str, threshold: float) -> float:
    """First evaluation step at which key reaches threshold (nan if never)."""
    for step, value in zip(*curve(row, key), strict=True):
        if value >= threshold:
            return step
    return float("nan")


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    panels = [("eval/exact_match", 1, "held-out greedy exact match (the judge)"),
              ("eval/reward", 1, "held-out greedy training reward"),
              ("train/reward_mean", 25, "sampled training reward (moving average of 25 steps)"),
              ("policy/entropy", 25, "policy entropy per position (nats)")]
    for ax, (key, smooth, title) in zip(axes.flat, panels, strict=True):
        plot_mean_curves(ax, rows, key, smooth)
        ax.set_title(title)
    axes[0, 0].legend(title="delta", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, steps=1500)
    parser.add_argument("--reward", default="positional",
                        help="training reward (the seed's question uses positional)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    name = output_name(NAME if args.reward == "positional" else f"{NAME}_{args.reward}", args)
    rows = run_grid(name, settings(args.steps, args.reward), args)
    path = RESULTS / f"{name}.jsonl"
    write_jsonl(path, rows)
    plot(rows, path.with_suffix(".png"))

    print(f"first run: {describe(rows[0])}\nvaried: algo.delta; seeds {args.seeds}\n")
    print(summary_table(rows, {
        "held-out exact match": lambda r: r["final"]["eval/exact_match"],
        "held-out reward": lambda r: r["final"]["eval/reward"],
        "train reward (last 100)": lambda r: tail_mean(r, "train/reward_mean"),
        "first step held-out EM ≥ 0.3": lambda r: first_step(r, "eval/exact_match", 0.3),
        "final entropy": lambda r: last(r, "policy/entropy"),
    }, per_seed="held-out exact match"))
    print(f"\nwrote {path} and {path.with_suffix('.png')} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
