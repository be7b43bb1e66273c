"""With several gradient steps per batch (μ > 1), does the clipped GRPO loss stay stable where the
naive and unclipped losses do not?

Each batch is reused for μ=4 optimizer steps at a fairly high learning rate. naive (-Δ log π)
ignores that the samples are stale, unclipped (-rΔ) corrects with the importance ratio but has no
trust region, clipped (-min(rΔ, clip(r)Δ)) zeroes the gradient of tokens whose ratio left
[1-ε, 1+ε]. A μ=1 run (where all three losses have the same gradient) is the reference. Each
learning rate is its own grid block. Clip fractions and approx KL(π_old || π) are averaged over the
first 100 steps, before the policies collapse (once every group is flat, Δ = 0 and nothing clips).

    .venv/bin/python experiments/losses.py [--seeds 3] [--steps 600] [--lrs 3e-3,1e-2] [--mu 4]
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

NAME = "losses"
LOSS_NAMES = ["naive", "unclipped", "clipped"]
EARLY = 100


def settings(steps: int, lrs: list[float], mu: int) -> dict[str, dict]:
    out = {}
    for lr in lrs:
        base = merge(BASE, {"task": {"reward": "positional"}, "algo": {"delta": "centered",
                            "clip_eps": 0.2, "ratio_level": "token"},
                            "train": {"steps": steps, "lr": lr, "grad_clip": 1.0}})
        out[f"lr={lr:g} mu=1 (reference)"] = merge(base, {"algo": {"loss": "clipped", "mu": 1}})
        for loss in LOSS_NAMES:
            out[f"lr={lr:g} mu={mu} {loss}"] = merge(base, {"algo": {"loss": loss, "mu": mu}})
    return out


def early_mean(row: dict, key: str) -> float:
    steps, values = curve(row, key)
    early = [v for s, v in zip(steps, values, strict=True) if 1 <= s <= EARLY]
    return statistics.mean(early) if early else float("nan")


def clip_frac(row: dict) -> float:
    return early_mean(row, "loss/clip_frac_low") + early_mean(row, "loss/clip_frac_high")


def peak(row: dict, key: str) -> float:
    return max(curve(row, key)[1])


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = list(dict.fromkeys(r["config"]["train"]["lr"] for r in rows))
    fig, axes = plt.subplots(len(lrs), 3, figsize=(17, 4.5 * len(lrs)), squeeze=False)
    for ax_row, lr in zip(axes, lrs, strict=True):
        block = [r for r in rows if r["config"]["train"]["lr"] == lr]
        for r in block:
            lo, hi = curve(r, "loss/clip_frac_low"), curve(r, "loss/clip_frac_high")
            r["curve"]["clip_frac"] = [[s, a + b] for s, a, b in zip(lo[0], lo[1], hi[1],
                                                                     strict=True)]
        plot_mean_curves(ax_row[0], block, "eval/exact_match")
        ax_row[0].set_title(f"lr={lr:g}: held-out greedy exact match")
        ax_row[0].legend(fontsize=8)
        plot_mean_curves(ax_row[1], block, "clip_frac", smooth=10)
        ax_row[1].set_title(f"lr={lr:g}: clip fraction (low + high), 10-step average")
        ax_row[1].set_ylabel("tokens with r outside [1-ε, 1+ε] on the clipped side")
        plot_mean_curves(ax_row[2], block, "loss/approx_kl_old", smooth=10)
        ax_row[2].set_yscale("symlog", linthresh=1e-4)
        ax_row[2].set_title(f"lr={lr:g}: approx KL(π_old || π) after μ steps, 10-step average")
        for ax in ax_row[1:]:
            ax.set_xlim(0, min(300, ax.get_xlim()[1]))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, steps=600)
    parser.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")],
                        default=[3e-3, 1e-2])
    parser.add_argument("--mu", type=int, default=4)
    args = parser.parse_args()
    t0 = time.perf_counter()
    name = output_name(NAME, args)
    rows = run_grid(name, settings(args.steps, args.lrs, args.mu), args,
                    train_keys=("policy/entropy", "loss/clip_frac_low", "loss/clip_frac_high",
                                "loss/approx_kl_old", "loss/ratio_max"))
    path = RESULTS / f"{name}.jsonl"
    write_jsonl(path, rows)
    plot(rows, path.with_suffix(".png"))

    print(f"first run: {describe(rows[0])}\nvaried: train.lr, algo.mu, algo.loss; seeds "
          f"{args.seeds}\n")
    print(summary_table(rows, {
        "final held-out EM": lambda r: r["final"]["eval/exact_match"],
        "peak held-out EM": lambda r: peak(r, "eval/exact_match"),
        f"clip frac (steps 1-{EARLY})": clip_frac,
        f"approx KL old (steps 1-{EARLY})": lambda r: early_mean(r, "loss/approx_kl_old"),
        "max ratio": lambda r: peak(r, "loss/ratio_max"),
        "final entropy": lambda r: last(r, "policy/entropy"),
    }, per_seed="final held-out EM"))
    print(f"\nwrote {path} and {path.with_suffix('.png')} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
