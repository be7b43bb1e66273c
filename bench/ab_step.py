"""Two variants of the causal-LM GRPO step in one process, alternating step by step.

On these VMs the same step moves by 10-25% between processes (bench/README.md), which hides a
5% change in a process-level A/B. Here both variants run in one process, their steps
interleaved (A B B A A B ...), so slow phases of the machine hit both alike. A variant is a
Python statement run before each of its steps, with `lean` (lmrl.policies.lean), `hf`
(lmrl.policies.hf), `step` (lmrl.step) and the original `groups_with_gradient` in scope;
torch.compile keeps one graph per variant when the statement changes a global the compiled
code reads.

    .venv/bin/python bench/ab_step.py --model <model dir> --kl 0.04 \\
        "lean.SMALL_TILE = 0" "lean.SMALL_TILE = 1024"
    .venv/bin/python bench/ab_step.py --model <model dir> --kl 0 --reward exact_match \\
        "step.Batch.groups_with_gradient = lambda self: self" \\
        "step.Batch.groups_with_gradient = groups_with_gradient"
"""

import argparse
import statistics

import torch

import lmrl.policies.hf as hf
import lmrl.policies.lean as lean
import lmrl.step as step
from lmrl.config import Config
from lmrl.state import build_policy, build_state
from lmrl.trainer import build_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs=2, help="a Python statement per variant")
    p.add_argument("--model", required=True)
    p.add_argument("--kl", type=float, default=0.04)
    p.add_argument("--reward", default="positional", help="sort_text reward")
    p.add_argument("--steps", type=int, default=24, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps per variant")
    p.add_argument("--eager", action="store_true", help="without policy.compile")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch._dynamo.config.cache_size_limit = 64  # one graph per variant and shape
    cfg = Config().replace(
        policy={"model": a.model, "dtype": "float32", "compile": not a.eager, "device": "cpu"},
        task={"task": "sort_text", "n": 5, "heldout_size": 500, "reward": a.reward},
        train={"B": 16, "G": 8}, algo={"kl_weight": a.kl})
    task = build_task(cfg)
    state = build_state(cfg, build_policy(cfg, task.max_new_tokens))
    # The unpatched skip, so that a variant can put it back after another replaced it.
    scope = {"lean": lean, "hf": hf, "step": step,
             "groups_with_gradient": step.Batch.groups_with_gradient}
    rows: dict[str, list[dict]] = {v: [] for v in a.variants}
    for v in a.variants:
        exec(v, scope)
        for _ in range(a.warmup):
            step.grpo_step(state, task, cfg)
    for i in range(a.steps):
        for v in a.variants if i % 2 == 0 else a.variants[::-1]:
            exec(v, scope)
            rows[v].append(step.grpo_step(state, task, cfg))
    keys = [k for k in rows[a.variants[0]][0] if k.startswith("time/")]
    print(f"median ms over {a.steps} interleaved steps per variant (KL {a.kl})")
    for v, rs in rows.items():
        ms = {k[5:-8]: 1000 * statistics.median(r[k] for r in rs) for k in keys}
        updated = statistics.mean(r["train/updated_group_frac"] for r in rs)
        print(f"{v!r}: " + ", ".join(f"{k} {t:.1f}" for k, t in ms.items()) +
              f"; updated groups {updated:.3f}")


if __name__ == "__main__":
    main()
