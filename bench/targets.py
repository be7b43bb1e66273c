"""Measure the sort lab's targets (issue #2) and write bench/results/targets.{json,md}.

Each target is judged at the end of its run (not at its first crossing), with the default
config unless the target says otherwise:

  T1       n=3, V=5, all 125 prompts, 60/40 split with constant prompts in train;
           held-out greedy exact match >= 0.99 averaged over 5 split seeds
  T2       n=6, V=10, random prompts, 2,000 held out: >= 0.99 within 30 s of training
  T3       n=8, V=20: >= 0.95 within 60 s
  T4       the lecture-faithful linear model (hidden=0) on T2: >= 0.95
  lecture  the lecture's own set-up (`--preset lecture`), for comparison: training prompts solved
  demo     `lmrl train` as `make demo` runs it: under 2 minutes

    .venv/bin/python bench/targets.py [--only T1 T2 ...] [--train-seeds 0 1 2]
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from lmrl.config import Config
from lmrl.presets import PRESETS
from lmrl.trainer import train

OUT = Path(__file__).parent / "results"


def run(cfg: Config, name: str) -> dict:
    cfg = cfg.replace(log={"run_dir": str(OUT / "runs" / name), "overwrite": True,
                           "progress": False})
    return train(cfg, verbose=False)


def t1(seed: int) -> dict:
    scores = [run(PRESETS["t1"]().replace(task={"split_seed": s}, train={"seed": seed}),
                  f"t1_seed{seed}_split{s}")["eval/exact_match"] for s in range(5)]
    mean = sum(scores) / len(scores)
    return {"value": mean, "per_split": scores, "goal": ">= 0.99", "met": mean >= 0.99}


def timed(preset: str, goal_em: float, limit_s: float):
    def measure(seed: int) -> dict:
        s = run(PRESETS[preset]().replace(train={"seed": seed}), f"{preset}_seed{seed}")
        met = s["eval/exact_match"] >= goal_em and s["wall_seconds"] <= limit_s
        return {"value": s["eval/exact_match"], "wall_seconds": s["wall_seconds"],
                "steps": s["steps"], "goal": f">= {goal_em} within {limit_s:.0f} s", "met": met}
    return measure


def t4(seed: int) -> dict:
    s = run(PRESETS["linear"]().replace(train={"seed": seed}), f"t4_seed{seed}")
    return {"value": s["eval/exact_match"], "wall_seconds": s["wall_seconds"],
            "steps": s["steps"], "goal": ">= 0.95", "met": s["eval/exact_match"] >= 0.95}


def lecture(seed: int) -> dict:
    s = run(PRESETS["lecture"]().replace(train={"seed": seed}), f"lecture_seed{seed}")
    solved = round(3 * s["eval/train_exact_match"])
    return {"value": s["eval/train_exact_match"], "heldout": s["eval/exact_match"],
            "goal": "comparison only", "met": None, "note": f"{solved} of 3 training prompts"}


def demo(seed: int) -> dict:
    run_dir = OUT / "runs" / f"demo_seed{seed}"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmrl.cli", "train", "--run-dir", str(run_dir),
                    "--overwrite", "--no-progress", "--seed", str(seed)], check=True,
                   capture_output=True)
    wall = time.perf_counter() - t
    em = json.loads((run_dir / "summary.json").read_text())["eval/exact_match"]
    return {"value": wall, "eval/exact_match": em, "goal": "< 120 s", "met": wall < 120}


TARGETS = {"T1": t1, "T2": timed("default", 0.99, 30), "T3": timed("t3", 0.95, 60), "T4": t4,
           "lecture": lecture, "demo": demo}


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the sort lab's targets.")
    parser.add_argument("--only", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "targets.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.only:
        for seed in args.train_seeds:
            r = TARGETS[name](seed)
            results[f"{name}/seed{seed}"] = r
            print(f"{name} seed {seed}: {json.dumps(r)}", flush=True)
    path.write_text(json.dumps(results, indent=2))
    (OUT / "targets.md").write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    lines = ["| target | train seed | value | seconds | goal | met |", "|---|---|---|---|---|---|"]
    for key, r in sorted(results.items()):
        name, seed = key.split("/")
        seconds = r.get("wall_seconds", r["value"] if name == "demo" else None)
        sec = f"{seconds:.1f}" if seconds is not None else ""
        value = f"{r['value']:.3f}" + (f" {r['per_split']}" if "per_split" in r else "")
        if "note" in r:
            value += f" ({r['note']}; held-out {r['heldout']:.3f})"
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        lines.append(f"| {name} | {seed[4:]} | {value} | {sec} | {r['goal']} | {met} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
