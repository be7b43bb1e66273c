"""Which training reward learns to sort, which stalls, and which gets hacked?

Trains the same policy with each reward of the sort task as the *training* reward: sparse
exact_match, positional partial credit, inclusion_adjacency (the seed's richer partial credit) and
inclusion_adjacency_multiset (inclusion counted with multiplicity). The judge is always greedy
exact match on held-out prompts. Then every final model is reloaded from its model.safetensors
and its greedy held-out answers are checked for the loophole: the maximal inclusion_adjacency
reward (2n-1) for an answer that is not sorted (possible only when the prompt repeats a number).

    .venv/bin/python experiments/rewards.py [--seeds 3] [--steps 1500]
"""

import argparse
import time

import torch
from common import (
    BASE,
    RESULTS,
    add_args,
    by_label,
    curve,
    describe,
    merge,
    output_name,
    plot_mean_curves,
    run_grid,
    summary_table,
    write_jsonl,
)

from lmrl.config import Config
from lmrl.tasks.sort import exact_match, inclusion_adjacency, inclusion_adjacency_multiset
from lmrl.trainer import build_task

NAME = "rewards"
REWARD_NAMES = ["exact_match", "positional", "inclusion_adjacency",
                "inclusion_adjacency_multiset"]


def settings(steps: int) -> dict[str, dict]:
    return {r: merge(BASE, {"task": {"reward": r}, "train": {"steps": steps}})
            for r in REWARD_NAMES}


@torch.no_grad()
def hack_analysis(row: dict, max_examples: int = 5) -> dict:
    """Reload the final policy and look at its greedy answers on the held-out prompts."""
    from safetensors.torch import load_file

    from lmrl.state import build_policy

    cfg = Config().replace(**row["config"])
    task = build_task(cfg)
    policy = build_policy(cfg)
    policy.load_state_dict(load_file(f"{row['run_dir']}/model.safetensors"))
    policy.eval()
    prompts = task.heldout  # (K, n)
    greedy = policy.sample(prompts, 1, temperature=0.0).responses  # (K, 1, n)
    n = cfg.task.n
    correct = exact_match(prompts, greedy)[:, 0].bool()
    ia_max = inclusion_adjacency(prompts, greedy)[:, 0] == 2 * n - 1
    multiset_max = inclusion_adjacency_multiset(prompts, greedy)[:, 0] == 2 * n - 1
    repeats = torch.tensor([len(set(p.tolist())) < n for p in prompts])
    hacked = ia_max & ~correct
    # inclusion only asks that each prompt value appear somewhere in the response, so the spare
    # positions a repeated value frees can hold a value the prompt does not contain at all.
    outside = (greedy[:, 0, :, None] != prompts[:, None, :]).all(dim=-1).any(dim=-1)  # (K,)
    examples = [{"prompt": prompts[i].tolist(), "response": greedy[i, 0].tolist(),
                 "sorted": prompts[i].sort().values.tolist(),
                 "inclusion_adjacency": float(inclusion_adjacency(prompts[i:i + 1],
                                                                  greedy[i:i + 1])[0, 0])}
                for i in torch.nonzero(hacked).flatten()[:max_examples].tolist()]
    return {
        "heldout": len(prompts),
        "exact_match": float(correct.float().mean()),
        "ia_max_frac": float(ia_max.float().mean()),
        "hacked_frac": float(hacked.float().mean()),
        "hacked_with_repeats_frac": float((hacked & repeats).sum() / hacked.sum().clamp(min=1)),
        "hacked_with_outside_value_frac": float((hacked & outside).sum()
                                                / hacked.sum().clamp(min=1)),
        "multiset_max_but_wrong_frac": float((multiset_max & ~correct).float().mean()),
        "prompts_with_repeats_frac": float(repeats.float().mean()),
        "examples": examples,
    }


def flat_early(row: dict, until: int = 200) -> float:
    """Fraction of training groups whose G rewards were all equal (no signal under a group
    baseline), averaged over the first `until` steps."""
    values = [v for s, v in zip(*curve(row, "train/flat_group_frac"), strict=True) if s <= until]
    return sum(values) / len(values)


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0]["config"]["task"]["n"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    plot_mean_curves(axes[0], rows, "eval/exact_match")
    axes[0].set_title("judge: held-out greedy exact match")
    axes[0].legend(fontsize=8, title="training reward")
    for r in rows:  # held-out inclusion_adjacency as a fraction of its maximum 2n-1
        r["curve"]["ia_frac"] = [[s, v / (2 * n - 1)] for s, v in
                                 zip(*curve(r, "eval/reward_inclusion_adjacency"), strict=True)]
    plot_mean_curves(axes[1], rows, "ia_frac")
    axes[1].set_ylabel("held-out inclusion_adjacency / max")
    axes[1].set_title("the hackable reward, measured on held-out prompts")
    labels = list(by_label(rows))
    mean = lambda key, lab: sum(r["hack"][key] for r in by_label(rows)[lab]) / len(  # noqa: E731
        by_label(rows)[lab])
    xs = range(len(labels))
    axes[2].bar([x - 0.2 for x in xs], [mean("exact_match", lab) for lab in labels], 0.4,
                label="sorted (exact match)")
    axes[2].bar([x + 0.2 for x in xs], [mean("hacked_frac", lab) for lab in labels], 0.4,
                label="max inclusion_adjacency but not sorted")
    axes[2].set_xticks(list(xs), [lab.replace("_", "_\n") for lab in labels], fontsize=8)
    axes[2].set_ylabel("fraction of held-out prompts (final greedy)")
    axes[2].set_title("final greedy answers, mean over seeds")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, steps=1500)
    args = parser.parse_args()
    t0 = time.perf_counter()
    name = output_name(NAME, args)
    rows = run_grid(name, settings(args.steps), args)
    for row in rows:
        row["hack"] = hack_analysis(row)
    path = RESULTS / f"{name}.jsonl"
    write_jsonl(path, rows)
    plot(rows, path.with_suffix(".png"))

    n = rows[0]["config"]["task"]["n"]
    print(f"first run: {describe(rows[0])}\nvaried: task.reward; seeds {args.seeds}; judge = "
          f"greedy exact match on {rows[0]['hack']['heldout']} held-out prompts\n")
    print(summary_table(rows, {
        "held-out exact match": lambda r: r["final"]["eval/exact_match"],
        "held-out positional": lambda r: r["final"]["eval/reward_positional"],
        f"held-out incl_adj (max {2 * n - 1})": lambda r: r["final"][
            "eval/reward_inclusion_adjacency"],
        "flat groups (steps 1-200)": flat_early,
        "incl_adj max": lambda r: r["hack"]["ia_max_frac"],
        "incl_adj max but wrong": lambda r: r["hack"]["hacked_frac"],
        "multiset max but wrong": lambda r: r["hack"]["multiset_max_but_wrong_frac"],
    }, per_seed="held-out exact match"))
    ia = by_label(rows)["inclusion_adjacency"]
    hacked = [r for r in ia if r["hack"]["examples"]]
    print(f"\n{rows[0]['hack']['prompts_with_repeats_frac']:.3f} of held-out prompts repeat a "
          "number. inclusion_adjacency runs, per seed: hacked answers that come from such prompts "
          + ", ".join(f"{r['hack']['hacked_with_repeats_frac']:.3f}" for r in ia)
          + "; hacked answers that contain a value absent from the prompt "
          + ", ".join(f"{r['hack']['hacked_with_outside_value_frac']:.3f}" for r in ia))
    if hacked:
        print("hacked held-out answers of the inclusion_adjacency model "
              f"(seed {hacked[0]['seed']}, greedy):")
        for ex in hacked[0]["hack"]["examples"]:
            print(f"  prompt {ex['prompt']} -> response {ex['response']} "
                  f"(sorted: {ex['sorted']}), inclusion_adjacency = "
                  f"{ex['inclusion_adjacency']:.0f} = max {2 * n - 1}")
    print(f"\nwrote {path} and {path.with_suffix('.png')} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
