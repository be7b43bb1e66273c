"""A causal-LM GRPO step under different thread and dtype settings, with its stage breakdown.

Each setting runs in its own subprocess (OpenMP reads its environment at import); the table
gives each setting's median step time and its ratio to the first setting, measured in the same
invocation (these machines are noisy). The workload is sort_text n=5 with lmrl's default RL
settings and B=16 prompts x G=8 samples (the TRL comparison's batch), on a model directory.

    .venv/bin/python bench/lm_step.py --model runs/sft [--steps 30] [--compare dtype]
"""

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
    "dtype": [
        ("threads=1 float32", {"LMRL_THREADS": "1", "LMRL_DTYPE": "float32"}),
        ("threads=2 float32", {"LMRL_THREADS": "2", "LMRL_DTYPE": "float32"}),
        ("threads=1 bf16 autocast", {"LMRL_THREADS": "1", "LMRL_DTYPE": "autocast"}),
        ("threads=2 bf16 autocast", {"LMRL_THREADS": "2", "LMRL_DTYPE": "autocast"}),
    ],
    # The same step on transformers' modules and on lmrl's own forward (policy.forward).
    "forward": [
        ("threads=2 transformers", {"LMRL_THREADS": "2", "LMRL_FORWARD": "transformers"}),
        ("threads=2 lmrl", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl"}),
        ("threads=1 transformers", {"LMRL_THREADS": "1", "LMRL_FORWARD": "transformers"}),
        ("threads=1 lmrl", {"LMRL_THREADS": "1", "LMRL_FORWARD": "lmrl"}),
    ],
    # lmrl's forward eager and torch.compile'd (policy.compile).
    "compile": [
        ("threads=2 eager", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl"}),
        ("threads=2 compiled", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl",
                                "LMRL_COMPILE": "1"}),
    ],
    # bf16 autocast (bf16 matmuls on float32 weights) against float32, eager and compiled.
    "bf16": [
        ("eager float32", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl"}),
        ("eager bf16 autocast", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl",
                                 "LMRL_DTYPE": "autocast"}),
        ("compiled float32", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl",
                              "LMRL_COMPILE": "1"}),
        ("compiled bf16 autocast", {"LMRL_THREADS": "2", "LMRL_FORWARD": "lmrl",
                                    "LMRL_COMPILE": "1", "LMRL_DTYPE": "autocast"}),
    ],
}
STAGES = ["sample", "reward", "ref", "logprob", "backward", "optimizer", "step"]

CHILD = """
import json, os, statistics, torch
from lmrl.config import Config
from lmrl.state import build_policy, build_state
from lmrl.step import grpo_step
from lmrl.trainer import build_task
torch.set_num_threads(int(os.environ["LMRL_THREADS"]))
cfg = Config().replace(policy={{"model": {model!r},
                                "dtype": os.environ.get("LMRL_DTYPE", "float32"),
                                "forward": os.environ.get("LMRL_FORWARD", "auto"),
                                "compile": os.environ.get("LMRL_COMPILE") == "1",
                                "device": "cpu"}},
                       task={{"task": "sort_text", "n": 5, "heldout_size": 500}},
                       train={{"B": 16, "G": 8}}, algo={{"kl_weight": {kl}}})
task = build_task(cfg)
state = build_state(cfg, build_policy(cfg, task.max_new_tokens))
for _ in range({warmup}):
    grpo_step(state, task, cfg)
rows = [grpo_step(state, task, cfg) for _ in range({steps})]
print(json.dumps({{s: 1000 * statistics.median(r.get(f"time/{{s}}_seconds", 0.0) for r in rows)
                   for s in {stages!r}}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--kl", type=float, default=0.04)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiling)")
    parser.add_argument("--compare", choices=list(SETTINGS), default="forward",
                        help="dtype: threads x float32/bf16 autocast; forward: threads x "
                             "transformers'/lmrl's forward; compile: lmrl's forward eager / "
                             "compiled; bf16: lmrl's forward eager / compiled x float32 / "
                             "bf16 autocast")
    args = parser.parse_args()
    settings = SETTINGS[args.compare]
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                                  "OMP_WAIT_POLICY")}
    results = {}
    for name, env in settings:
        code = CHILD.format(model=args.model, steps=args.steps, warmup=args.warmup, kl=args.kl,
                            stages=STAGES)
        out = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results[settings[0][0]]["step"]
    print(f"KL weight {args.kl}, {args.steps} timed steps; median ms per stage")
    print(f"{'setting':<26}" + "".join(f"{s:>10}" for s in STAGES) + f"{'vs first':>10}")
    for name, ms in results.items():
        print(f"{name:<26}" + "".join(f"{ms[s]:10.1f}" for s in STAGES) +
              f"{ms['step'] / base:9.2f}x")


if __name__ == "__main__":
    main()
