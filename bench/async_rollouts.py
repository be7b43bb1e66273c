"""--async-rollouts against synchronous training on this machine (issue 17).

Runs `lmrl train` on one model and task in fresh processes, settings alternating (A B C A B C
...): synchronous with --threads 2 and --threads 1, and --async-rollouts with --threads 1
(each of its two threads, sampling and update, then has a core of a 2-core machine). Prints per
setting the median step seconds (steps after the first two), the sampling and update stage
medians, the held-out exact match at the end, and the step-time ratio to the first setting.

    .venv/bin/python bench/async_rollouts.py --model DIR --steps 30 --repeats 2 \\
        [-- extra lmrl train flags, e.g. --task sort_text --n 5]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "sync, 2 threads": ["--threads", "2"],
    "sync, 1 thread": ["--threads", "1"],
    "async, 1 thread each": ["--threads", "1", "--async-rollouts"],
}


def run(model: str, steps: int, flags: list[str], extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run([sys.executable, "-m", "lmrl", "train", "--model", model, "--run-dir",
                        run_dir, "--overwrite", "--steps", str(steps), "--eval-every",
                        str(steps), "--no-progress", "--no-compile", *flags, *extra],
                       check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").open()]
    later = [r for r in rows if "time/step_seconds" in r][2:]

    def median(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in later)
    return {"step": median("time/step_seconds"), "sample": median("time/sample_seconds"),
            "update": median("time/update_seconds"),
            "em": [r["eval/exact_match"] for r in rows if "eval/exact_match" in r][-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("extra", nargs="*", help="more lmrl train flags, after --")
    a = p.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(a.repeats):
        for name, flags in SETTINGS.items():
            results[name].append(run(a.model, a.steps, flags, a.extra))
            r = results[name][-1]
            print(f"{name:22} step {r['step']:.3f} s  sample {r['sample']:.3f}  update "
                  f"{r['update']:.3f}  held-out EM {r['em']:.3f}", flush=True)
    first = statistics.median(r["step"] for r in results[next(iter(SETTINGS))])
    print("\n| setting | median step s | sample s | update s | held-out EM | step vs first |\n"
          "|---|---|---|---|---|---|")
    for name, runs in results.items():
        step = statistics.median(r["step"] for r in runs)
        ems = " / ".join(format(r["em"], ".3f") for r in runs)
        print(f"| {name} | {step:.3f} | {statistics.median(r['sample'] for r in runs):.3f} | "
              f"{statistics.median(r['update'] for r in runs):.3f} | {ems} | "
              f"{first / step:.2f}x |")


if __name__ == "__main__":
    main()
