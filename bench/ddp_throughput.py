"""Data parallel on this machine: 2 processes × 1 thread against 1 process × 2 threads (and
1 process × 1 thread), toy GRPO steps per second, and the share of a 2-rank step spent in the
gradient all-reduce (and in sampling: every rank draws the whole batch's noise).

Each setting runs in its own subprocess (2 ranks through torchrun, gloo); each times `--steps`
grpo_step calls after 5 warm-up steps, with the default toy config or `--B/--G` overrides. The
all-reduce share is time/all_reduce_seconds over time/step_seconds on rank 0; it includes
waiting for the slower rank. The metrics' own small collectives (a few floats and the (B, G)
scores) are outside it and inside the step.

    .venv/bin/python bench/ddp_throughput.py [--steps 200] [--B 32 --G 16]
    .venv/bin/python bench/ddp_throughput.py --steps 10 --B 8 --G 8 \
        --flags "--task sort_text --n 5 --model runs/m"     # a causal LM (lmrl init-model)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time, torch
from lmrl import distributed
from lmrl.cli import parse_config
from lmrl.state import build_state
from lmrl.step import grpo_step
from lmrl.trainer import build_task

distributed.init()
torch.set_num_threads(int(sys.argv[1]))
steps, out = int(sys.argv[2]), sys.argv[3]
cfg = parse_config(sys.argv[4].split())
state, task = build_state(cfg), build_task(cfg)
for _ in range(5):
    grpo_step(state, task, cfg)
distributed.barrier()
start, spent = time.perf_counter(), {}
for _ in range(steps):
    for key, value in grpo_step(state, task, cfg).items():
        if key.startswith("time/"):
            spent[key] = spent.get(key, 0.0) + value
seconds = time.perf_counter() - start
if distributed.is_main():
    total = spent["time/step_seconds"]
    with open(out, "w") as f:
        json.dump({"steps_per_s": steps / seconds,
                   "sample_share": spent["time/sample_seconds"] / total,
                   "all_reduce_share": spent.get("time/all_reduce_seconds", 0.0) / total}, f)
distributed.leave()
"""

SETTINGS = [("1 process x 1 thread", 1, 1, ""), ("1 process x 2 threads", 1, 2, ""),
            ("2 processes x 1 thread", 2, 1, "")]
# A causal LM also runs sharded (FSDP2): every forward then gathers each layer's weights.
SHARDED = ("2 processes x 1 thread, --fsdp", 2, 1, "--fsdp")


def run(nproc: int, threads: int, steps: int, flags: str, workdir: Path) -> dict:
    script, out = workdir / "child.py", workdir / "out.json"
    script.write_text(CHILD)
    launch = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(launch + [str(script), str(threads), str(steps), str(out), flags], env=env,
                   check=True, capture_output=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--G", type=int, default=16)
    parser.add_argument("--flags", default="", help="more lmrl train flags, e.g. a model")
    args = parser.parse_args()
    flags = f"--B {args.B} --G {args.G} {args.flags}".strip()
    print(f"lmrl train {flags}; {args.steps} timed steps each after 5 warm-up steps")
    print(f"{'setting':<31} {'steps/s':>8} {'vs 1x1':>7} {'sample share':>13} "
          f"{'all-reduce share':>17}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, nproc, threads, extra in SETTINGS + [SHARDED] * ("--model" in flags):
            result = run(nproc, threads, args.steps, f"{flags} {extra}", Path(tmp))
            base = base or result["steps_per_s"]
            share = "-" if nproc == 1 else "in backward" if extra else \
                f"{result['all_reduce_share']:.1%}"  # FSDP reduce-scatters inside backward
            print(f"{name:<31} {result['steps_per_s']:>8.2f} "
                  f"{result['steps_per_s'] / base:>6.2f}x {result['sample_share']:>13.1%} "
                  f"{share:>17}", flush=True)


if __name__ == "__main__":
    main()
