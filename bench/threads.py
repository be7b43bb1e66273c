"""How thread settings change a GRPO step on this machine.

OpenMP reads OMP_WAIT_POLICY / GOMP_SPINCOUNT when torch is imported, so every setting runs in
its own subprocess. Each prints the median step time of the default toy config, or with
`--model DIR` of a causal LM on sort_text (n=5, default RL settings); the table gives ratios
against `threads=1` measured in the same invocation (machines here are noisy).

    .venv/bin/python bench/threads.py [--steps 300]
    .venv/bin/python bench/threads.py --model runs/sft --steps 20
"""

import argparse
import json
import os
import subprocess
import sys

SETTINGS = [
    ("threads=1", {"LMRL_THREADS": "1"}),
    ("threads=2", {"LMRL_THREADS": "2"}),
    ("threads=2 OMP_WAIT_POLICY=PASSIVE", {"LMRL_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}),
    ("threads=2 GOMP_SPINCOUNT=10000", {"LMRL_THREADS": "2", "GOMP_SPINCOUNT": "10000"}),
]

CHILD = """
import json, os, statistics, time, torch
from lmrl.config import Config
from lmrl.state import build_state
from lmrl.step import grpo_step
from lmrl.trainer import build_task
torch.set_num_threads(int(os.environ["LMRL_THREADS"]))
cfg = Config()
if {model!r}:
    cfg = cfg.replace(policy={{"model": {model!r}}}, task={{"task": "sort_text", "n": 5}})
task = build_task(cfg)
policy = None
if {model!r}:
    from lmrl.state import build_policy
    policy = build_policy(cfg, task.max_new_tokens)
state = build_state(cfg, policy)
for _ in range({warmup}):
    grpo_step(state, task, cfg)
times = []
for _ in range({steps}):
    t = time.perf_counter(); grpo_step(state, task, cfg); times.append(time.perf_counter() - t)
print(json.dumps({{"median_ms": 1000 * statistics.median(times)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="", help="a causal LM directory (default: the toy)")
    args = parser.parse_args()
    results = {}
    for name, env in SETTINGS:
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
        out = subprocess.run([sys.executable, "-c", CHILD.format(steps=args.steps, model=args.model,
                                                                warmup=3 if args.model else 20)],
                             env={**clean, **env}, capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]
    base = results["threads=1"]
    print(f"{'setting':<36} {'ms/step':>8} {'vs threads=1':>13}")
    for name, ms in results.items():
        print(f"{name:<36} {ms:8.2f} {ms / base:12.2f}x")


if __name__ == "__main__":
    main()
