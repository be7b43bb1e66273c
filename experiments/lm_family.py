"""The policy-gradient family on a tiny causal LM (issue 16): GRPO, RLOO, Dr. GRPO, REINFORCE++,
naive Δ = R and PPO with a learned critic (the LM's learned baseline), per task and seed from
that seed's own SFT start, every run at the same 512 sampled completions per step (B×G = 32×16,
or 512×1 where no group is needed).

Tasks are bench/lm_targets.py's recipes: sort5 (sort_text n=5, SFT to 0.3), add3 (3-digit
addition, SFT to 0.8) and sort12 (sort_text n=12, SFT to 0.3; the long completions, 24 tokens).
Per seed the script builds the SFT start itself (lmrl init-model, lmrl sft) under
experiments/results/runs/lm_family/ (git-ignored), then trains each method with lmrl train
and appends one row per run to experiments/results/lm_family_<task>.jsonl (a rerun of a
(seed, method) replaces its row). Each row holds every held-out evaluation as
[step, greedy exact match, wall seconds, sampled completion tokens]: the tokens are the sum over
the steps so far of train/response_tokens (mean response tokens per completion, as the trainer
logs it) × B × G. --report writes lm_family_<task>.md (table) and .png (held-out exact match
against step, wall seconds and sampled tokens).

    .venv/bin/python experiments/lm_family.py --task sort5 --seeds 1 2 [--steps 100]
    .venv/bin/python experiments/lm_family.py --task add3 --seeds 0 1
    .venv/bin/python experiments/lm_family.py --task sort12 --seeds 0 1 --workers 1 \
        --methods grpo rpp_1 ppo_1 ppo_16 naive_1
    .venv/bin/python experiments/lm_family.py --task sort5 --report
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "runs" / "lm_family"
LEVEL = 0.95
LMRL = [sys.executable, "-m", "lmrl.cli"]

sys.path.insert(0, str(HERE.parent / "bench"))
from lm_targets import TARGETS  # noqa: E402

# Per task: the lm_targets recipe (task flags, SFT flags) and the RL evaluation cadence.
TASKS = {
    "sort5": {"target": "sort5", "eval": ["--eval-every", "10", "--eval-limit", "200"],
              "steps": 100},
    # From add3's SFT start (0.8) every method passes 0.95 within 50 steps, hence 100 steps.
    "add3": {"target": "add3", "eval": ["--eval-every", "10", "--eval-limit", "200"],
             "steps": 100},
    # Long completions (23 tokens + EOS against sort5's 9 + EOS): where per-token credit from a
    # critic could matter. A step costs ~2.5x sort5's, hence 80 steps (GRPO: 0.36 -> 0.63 in
    # its first 10 from seed 0's SFT start).
    # No method reached 0.95 within 80 steps, so its report adds a table at 0.85.
    "sort12": {"target": "sort12", "eval": ["--eval-every", "10", "--eval-limit", "200"],
               "steps": 80, "levels": (LEVEL, 0.9, 0.85)},
}
GROUP, SINGLE = ["--B", "32", "--G", "16"], ["--B", "512", "--G", "1"]
# key -> (label, flags); every method samples 512 completions per step.
METHODS = {
    "grpo": ("GRPO (normalized, 32x16)", [*GROUP]),
    "rloo": ("RLOO (32x16)", [*GROUP, "--delta", "rloo"]),
    "dr_grpo": ("Dr. GRPO (32x16, constant aggregation)",
                [*GROUP, "--delta", "dr_grpo", "--aggregation", "constant"]),
    "rpp_16": ("REINFORCE++ (32x16)", [*GROUP, "--delta", "reinforce_pp"]),
    "rpp_1": ("REINFORCE++ (512x1)", [*SINGLE, "--delta", "reinforce_pp"]),
    "naive_1": ("naive R (512x1)", [*SINGLE, "--delta", "raw"]),
    "ppo_16": ("PPO, separate critic (32x16)", [*GROUP, "--critic", "separate"]),
    "ppo_1": ("PPO, separate critic (512x1)", [*SINGLE, "--critic", "separate"]),
}


def shape(flags: list[str]) -> int:
    """Completions per step, B × G, from a method's flags."""
    return int(flags[flags.index("--B") + 1]) * int(flags[flags.index("--G") + 1])


def eval_points(rows: list[dict], per_step: int) -> list[list]:
    """[step, exact match, wall seconds, sampled completion tokens] at every held-out evaluation
    in a run's metrics rows. The tokens are those sampled up to and including that step (the
    evaluation at step s follows step s's update): sum of train/response_tokens × per_step."""
    tokens, seconds, out = 0.0, 0.0, []
    for r in rows:
        if "train/response_tokens" in r:
            tokens += r["train/response_tokens"] * per_step
        seconds = r.get("time/elapsed_seconds", seconds)
        if "eval/exact_match" in r:
            out.append([r["step"], round(r["eval/exact_match"], 4), round(seconds, 1),
                        round(tokens)])
    return out


def first_crossing(points: list[list], level: float = LEVEL) -> list | None:
    """The first evaluation point at or above level, or None."""
    return next((p for p in points if p[1] >= level), None)


def lmrl(args: list[str]) -> float:
    """Run one CLI command (one thread); returns its wall seconds."""
    cmd = LMRL + args + ["--threads", "1"] * (args[0] != "init-model")
    print("$ lmrl " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1)


def build_sft(task: str, seed: int, root: Path, max_steps: int = 0) -> dict:
    """init-model and sft as bench/lm_targets.py does; reused when its summary exists.
    max_steps > 0 caps the SFT steps (a smoke test), else the recipe's own."""
    t = TARGETS[TASKS[task]["target"]]
    sft_flags = list(t.sft)
    if max_steps:
        sft_flags[sft_flags.index("--steps") + 1] = str(max_steps)
    base = root / f"{task}_seed{seed}"
    init, sft = base / "init", base / "sft"
    info = base / "sft_info.json"
    if info.is_file() and (sft / "summary.json").is_file():
        return json.loads(info.read_text())
    lmrl(["init-model", "--out", str(init), "--overwrite", "--seed", str(seed), *t.task, *t.init])
    seconds = lmrl(["sft", "--model", str(init), "--out", str(sft), "--overwrite", "--seed",
                    str(seed), "--no-progress", *t.task, *sft_flags])
    em = json.loads((sft / "summary.json").read_text())["eval/exact_match"]
    out = {"sft_dir": str(sft), "sft_exact_match": em, "sft_seconds": seconds}
    info.write_text(json.dumps(out))
    return out


def train(task: str, seed: int, key: str, steps: int, sft: dict, root: Path,
          eval_every: int | None = None) -> dict:
    label, flags = METHODS[key]
    t = TARGETS[TASKS[task]["target"]]
    cadence = list(TASKS[task]["eval"])
    if eval_every:
        cadence[cadence.index("--eval-every") + 1] = str(eval_every)
    run_dir = root / f"{task}_seed{seed}" / key
    seconds = lmrl(["train", "--model", sft["sft_dir"], "--run-dir", str(run_dir), "--overwrite",
                    *t.task, "--steps", str(steps), *cadence, "--seed", str(seed),
                    "--no-progress", *flags])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = eval_points(rows, shape(flags))
    return {"task": task, "seed": seed, "method": key, "label": label, "flags": flags,
            "steps": steps, "completions_per_step": shape(flags),
            "sft_exact_match": sft["sft_exact_match"], "sft_seconds": sft["sft_seconds"],
            "evals": points, "last3": round(statistics.mean(p[1] for p in points[-3:]), 4),
            "first_095": first_crossing(points), "wall_seconds": seconds}


def store(path: Path, row: dict, lock: threading.Lock) -> None:
    """Add row to the JSONL, replacing an earlier row of the same (task, seed, method)."""
    with lock:
        rows = [json.loads(line) for line in path.read_text().splitlines()] \
            if path.is_file() else []
        key = (row["task"], row["seed"], row["method"])
        rows = [r for r in rows if (r["task"], r["seed"], r["method"]) != key] + [row]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict], level: float = LEVEL) -> str:
    """One line per method (in METHODS order): seeds, last-3 held-out EM (mean ± sd over seeds),
    the first evaluation at >= level as step / wall s / k sampled tokens (mean ± sd over the
    seeds that reached it, and how many never did) and the run's wall seconds."""
    header = ["method (B×G)", "seeds", "last-3 EM", f"first >= {level}: step", "wall s",
              "k tokens", "never", "run wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = [k for k in METHODS if any(r["method"] == k for r in rows)]
    for key in order:
        group = sorted((r for r in rows if r["method"] == key), key=lambda r: r["seed"])
        firsts = [first_crossing(r["evals"], level) for r in group]
        hits = [h for h in firsts if h is not None]
        cells = [METHODS[key][0], ",".join(str(r["seed"]) for r in group),
                 mean_sd([r["last3"] for r in group]),
                 mean_sd([h[0] for h in hits], 0), mean_sd([h[2] for h in hits], 0),
                 mean_sd([h[3] / 1000 for h in hits], 0), f"{len(group) - len(hits)}/{len(group)}",
                 mean_sd([r["wall_seconds"] for r in group], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], task: str, out: Path) -> Path:
    from lmrl.plotting import palette, plt, save

    keys = [k for k in METHODS if any(r["method"] == k for r in rows)]
    colors = dict(zip(keys, palette(len(keys)), strict=True))
    seeds = sorted({r["seed"] for r in rows})
    styles = dict(zip(seeds, ["-", "--", ":", "-."] * 4, strict=False))
    fig, axes = plt.subplots(1, 3, figsize=(20, 5), sharey=True)
    xs = [(0, "step"), (2, "wall seconds (one thread per run, evaluation included)"),
          (3, "sampled completion tokens (thousands)")]
    for ax, (i, name) in zip(axes, xs, strict=True):
        for r in sorted(rows, key=lambda r: (keys.index(r["method"]), r["seed"])):
            x = [p[i] / (1000 if i == 3 else 1) for p in r["evals"]]
            ax.plot(x, [p[1] for p in r["evals"]], color=colors[r["method"]],
                    linestyle=styles[r["seed"]], marker="o", markersize=2.5, linewidth=1.2,
                    label=f"{r['label']}, seed {r['seed']}")
        ax.axhline(LEVEL, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out exact match (greedy)")
    fig.suptitle(f"{task}: the policy-gradient family on the tiny LM from each seed's SFT start, "
                 "512 completions per step")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.legend(handles, labels, fontsize=7, loc="center right")
    return save(fig, out)


def report(task: str, path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    levels = TASKS[task].get("levels", (LEVEL, 0.9))
    text = "\n".join(table(rows, level) for level in levels)
    path.with_suffix(".md").write_text(text)
    plot(rows, task, path.with_suffix(".png"))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASKS), default="sort5")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None,
                        help="RL steps per run (default 100)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="RL evaluation cadence (default 10)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--workers", type=int, default=2, help="training processes at a time")
    parser.add_argument("--sft-steps", type=int, default=0,
                        help="cap the SFT steps (smoke tests; default: the recipe's)")
    parser.add_argument("--root", default=str(RUNS))
    parser.add_argument("--out", default=None,
                        help="JSONL (default experiments/results/lm_family_<task>.jsonl)")
    parser.add_argument("--report", action="store_true", help="only write the table and plot")
    ns = parser.parse_args()
    out = Path(ns.out or RESULTS / f"lm_family_{ns.task}.jsonl")
    if not ns.report:
        steps = ns.steps or TASKS[ns.task]["steps"]
        root, lock = Path(ns.root), threading.Lock()
        with ThreadPoolExecutor(ns.workers) as pool:
            sfts = dict(zip(ns.seeds, pool.map(lambda s: build_sft(ns.task, s, root, ns.sft_steps),
                                               ns.seeds),
                            strict=True))
            for seed, info in sfts.items():
                print(f"{ns.task} seed {seed}: SFT exact match {info['sft_exact_match']:.3f} "
                      f"({info['sft_seconds']:.0f} s)", flush=True)

            def job(args: tuple[int, str]) -> None:
                row = train(ns.task, *args, steps, sfts[args[0]], root, ns.eval_every)
                store(out, row, lock)
                print(f"{row['label']} seed {row['seed']}: last-3 {row['last3']:.3f}, first "
                      f">= {LEVEL} {row['first_095']}, {row['wall_seconds']:.0f} s", flush=True)

            list(pool.map(job, [(s, k) for s in ns.seeds for k in ns.methods]))
    print(report(ns.task, out))


if __name__ == "__main__":
    main()
