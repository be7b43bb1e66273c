"""The policy-gradient family on a tiny causal LM (issue 16): GRPO, RLOO, Dr. GRPO, REINFORCE++,
naive Δ = R and PPO with a learned critic, from one SFT start on sort_text n=5, every run at the
same 512 sampled completions per step (B×G = 32×16, or 512×1 where no group is needed).

Writes bench/results/lm_deltas.{jsonl,md}: per run the held-out greedy exact match at every
evaluation, its last-3 mean, the first evaluation at >= 0.95 (step, seconds) and the run's wall
seconds. The SFT model comes from bench/lm_targets.py's sort5 (give its directory).
experiments/lm_family.py generalises this: per seed its own SFT start, sort5 and add3, sampled
tokens, a plot (experiments/README.md, section 9).

    .venv/bin/python bench/lm_deltas.py --sft bench/results/runs/sort5_seed0/sft [--steps 100]
    .venv/bin/python bench/lm_deltas.py --report
"""

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path(__file__).parent / "results"
TASK = ["--task", "sort_text", "--n", "5", "--heldout-size", "500"]
GROUP, SINGLE = ["--B", "32", "--G", "16"], ["--B", "512", "--G", "1"]
METHODS = {
    "GRPO (normalized, 32x16)": [*GROUP],
    "RLOO (32x16)": [*GROUP, "--delta", "rloo"],
    "Dr. GRPO (32x16, constant aggregation)": [*GROUP, "--delta", "dr_grpo", "--aggregation",
                                               "constant"],
    "REINFORCE++ (32x16)": [*GROUP, "--delta", "reinforce_pp"],
    "REINFORCE++ (512x1)": [*SINGLE, "--delta", "reinforce_pp"],
    "naive R (512x1)": [*SINGLE, "--delta", "raw"],
    "PPO, separate critic (32x16)": [*GROUP, "--critic", "separate"],
    "PPO, separate critic (512x1)": [*SINGLE, "--critic", "separate"],
}


def run(job: dict) -> dict:
    run_dir = Path(job["root"]) / re.sub(r"\W+", "_", job["label"]).strip("_")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmrl", "train", "--model", job["sft"], "--run-dir",
                    str(run_dir), "--overwrite", *TASK, "--steps", str(job["steps"]),
                    "--eval-every", "10", "--eval-limit", "200", "--seed", "0", "--threads", "1",
                    "--no-progress", *METHODS[job["label"]]],
                   check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/exact_match"], r.get("time/elapsed_seconds", 0.0))
             for r in rows if "eval/exact_match" in r]
    first = next(((s, round(t, 1)) for s, em, t in evals if em >= 0.95), (None, None))
    return {"label": job["label"], "flags": METHODS[job["label"]], "steps": job["steps"],
            "evals": [(s, round(em, 4)) for s, em, _ in evals],
            "last3": sum(em for _, em, _ in evals[-3:]) / len(evals[-3:]),
            "first_step_095": first[0], "first_seconds_095": first[1],
            "wall_seconds": round(time.perf_counter() - start, 1)}


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lines = ["| method (B×G) | held-out EM at steps 0 / 50 / last | last-3 mean | first >= 0.95: "
             "step (s) | wall s |", "|---|---|---|---|---|"]
    for r in rows:
        at = dict(r["evals"])
        first = "never" if r["first_step_095"] is None else \
            f"{r['first_step_095']} ({r['first_seconds_095']:.0f} s)"
        lines.append(f"| {r['label']} | {at[0]:.3f} / {at.get(50, float('nan')):.3f} / "
                     f"{r['evals'][-1][1]:.3f} | {r['last3']:.3f} | {first} | "
                     f"{r['wall_seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    path.with_suffix(".md").write_text(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", help="the SFT model directory (bench/lm_targets.py sort5)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", default=str(OUT / "runs" / "lm_deltas"))
    parser.add_argument("--out", default=str(OUT / "lm_deltas.jsonl"))
    parser.add_argument("--report", action="store_true", help="only print the table")
    ns = parser.parse_args()
    if not ns.report:
        jobs = [{"label": label, "sft": ns.sft, "steps": ns.steps, "root": ns.root}
                for label in METHODS]
        with ThreadPoolExecutor(ns.workers) as pool:
            rows = list(pool.map(run, jobs))
        Path(ns.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(report(Path(ns.out)))


if __name__ == "__main__":
    main()
