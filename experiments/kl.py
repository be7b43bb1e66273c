"""Does a KL penalty to a reference policy counter entropy collapse, and how do its weight λ and
the reference refresh cadence (never = the initial policy, or every M steps) change held-out
exact match?

Positional reward, centered deltas, clipped loss, μ=1, k3 KL estimator; only algo.kl_weight and
algo.ref_refresh vary. Entropy is the policy's mean per-position entropy on the training batch
(policy/entropy, nats; a uniform policy over V=8 has ln 8 = 2.08).

    .venv/bin/python experiments/kl.py [--seeds 3] [--steps 2000]
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

NAME = "kl"
# (kl_weight, ref_refresh); ref_refresh 0 = never refreshed: KL to the initial policy.
GRID = [(0.0, 0), (0.01, 0), (0.1, 0), (0.3, 0), (0.1, 100), (0.3, 20), (0.3, 100), (0.3, 500)]


def label(kl_weight: float, refresh: int) -> str:
    if kl_weight == 0:
        return "no KL"
    return f"λ={kl_weight:g}, ref " + (f"every {refresh}" if refresh else "never refreshed")


def settings(steps: int) -> dict[str, dict]:
    return {label(w, m): merge(BASE, {
        "task": {"reward": "positional"},
        "algo": {"delta": "centered", "loss": "clipped", "mu": 1, "kl_weight": w,
                 "kl_estimator": "k3" if w > 0 else None, "ref_refresh": m},
        "train": {"steps": steps}}) for w, m in GRID}


def mean_over(row: dict, key: str, start: int = 1) -> float:
    values = [v for s, v in zip(*curve(row, key), strict=True) if s >= start]
    return statistics.mean(values) if values else float("nan")


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    never = [r for r in rows if r["config"]["algo"]["ref_refresh"] == 0]
    refreshed = [r for r in rows if r["config"]["algo"]["ref_refresh"] > 0
                 or r["config"]["algo"]["kl_weight"] == 0]
    plot_mean_curves(axes[0], never, "policy/entropy", smooth=25)
    axes[0].set_title("entropy, reference = initial policy (25-step average)")
    axes[0].legend(fontsize=8)
    plot_mean_curves(axes[1], never, "eval/exact_match")
    axes[1].set_title("held-out exact match, reference = initial policy")
    axes[1].legend(fontsize=8)
    plot_mean_curves(axes[2], refreshed, "eval/exact_match")
    axes[2].set_title("held-out exact match, reference refreshed every M steps")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, steps=2000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    name = output_name(NAME, args)
    rows = run_grid(name, settings(args.steps), args,
                    train_keys=("policy/entropy", "loss/kl_ref"))
    path = RESULTS / f"{name}.jsonl"
    write_jsonl(path, rows)
    plot(rows, path.with_suffix(".png"))

    print(f"first run: {describe(rows[0])}\nvaried: algo.kl_weight (k3 estimator), "
          f"algo.ref_refresh; seeds {args.seeds}\n")
    print(summary_table(rows, {
        "final held-out EM": lambda r: r["final"]["eval/exact_match"],
        "peak held-out EM": lambda r: max(curve(r, "eval/exact_match")[1]),
        "entropy @ step 500": lambda r: statistics.mean(
            v for s, v in zip(*curve(r, "policy/entropy"), strict=True) if 476 <= s <= 500),
        "final entropy": lambda r: last(r, "policy/entropy"),
        "mean KL to ref": lambda r: mean_over(r, "loss/kl_ref") if r["config"]["algo"][
            "kl_weight"] > 0 else 0.0,
    }, per_seed="final held-out EM"))
    print(f"\nwrote {path} and {path.with_suffix('.png')} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
