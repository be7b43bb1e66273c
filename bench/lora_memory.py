"""LoRA against full fine-tuning with a KL term: peak memory and step time on a ~20M model.

With full fine-tuning and kl_weight > 0 the run holds the policy, AdamW's two moments of every
weight and a copy of the policy as the reference; with LoRA the base weights are frozen (no
optimizer state) and the reference is the same model with its adapters off (no copy). Each
variant runs in its own subprocess (peak RSS, ru_maxrss, is per process and never goes down),
which reports its resident memory after the imports and the task, after the state is built,
and its peak (ru_maxrss) at the end,
plus the bytes of parameters, optimizer state and reference weights it holds.

    .venv/bin/python bench/lora_memory.py [--steps 4] [--layers 8] [--out results/lora_memory.txt]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = [
    ("full fine-tuning, forward lmrl", {"forward": "auto"}),
    ("full fine-tuning, forward transformers", {"forward": "transformers"}),
    ("LoRA r=8 all-linear", {"lora_r": 8, "lora_target_modules": ("all-linear",)}),
    ("LoRA r=8 q_proj v_proj (peft's default)", {"lora_r": 8}),
]

CHILD = """
import json, resource, statistics, sys, time, torch
def rss_mb():  # resident now
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
def peak_mb():  # the process's high-water mark
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from lmrl.config import Config
from lmrl.state import build_policy, build_state
from lmrl.step import grpo_step
from lmrl.trainer import build_task
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
policy_cfg = {"model": args["model"], **args["policy"]}
if "lora_target_modules" in policy_cfg:
    policy_cfg["lora_target_modules"] = tuple(policy_cfg["lora_target_modules"])
cfg = Config().replace(task={"task": "sort_text", "n": 5},
                       train={"B": args["B"], "G": args["G"], "steps": 1000},
                       algo={"kl_weight": 0.1}, policy=policy_cfg)
task = build_task(cfg)
imported = rss_mb()
state = build_state(cfg, build_policy(cfg, task.max_new_tokens))
built = rss_mb()
nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
params = list(state.policy.parameters())
opt = [v for s in state.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
ref_model = getattr(state.reference, "model", None)
grpo_step(state, task, cfg)  # warm-up: allocator pools, AdamW's moments
times = []
for _ in range(args["steps"]):
    t = time.perf_counter(); grpo_step(state, task, cfg); times.append(time.perf_counter() - t)
opt = [v for s in state.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
print(json.dumps({
    "params_M": sum(p.numel() for p in params) / 1e6,
    "trainable_M": sum(p.numel() for p in params if p.requires_grad) / 1e6,
    "param_MB": nbytes(params) / 2**20, "optimizer_MB": nbytes(opt) / 2**20,
    "reference_MB": nbytes(ref_model.parameters()) / 2**20 if ref_model is not None else 0.0,
    "rss_imported_MB": imported, "rss_built_MB": built, "rss_peak_MB": peak_mb(),
    "step_s": statistics.median(times)}))
"""


def build_model(out: Path, layers: int) -> int:
    from lmrl.config import Config
    from lmrl.modelzoo import init_model, task_alphabet
    from lmrl.trainer import build_task

    task = build_task(Config().replace(task={"task": "sort_text", "n": 5}, policy={"model": "x"}))
    return init_model(out, task_alphabet(task), hidden_size=512, num_layers=layers, num_heads=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/lora_memory.txt"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        count = build_model(Path(tmp) / "model", args.layers)
        for name, policy in VARIANTS:
            child = {"model": str(Path(tmp) / "model"), "policy": policy, "steps": args.steps,
                     "B": args.B, "G": args.G}
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)],
                                  capture_output=True, text=True, check=True)
            rows.append((name, json.loads(done.stdout.strip().splitlines()[-1])))
            print(name, rows[-1][1], flush=True)
    text = report(rows, count, args)
    Path(args.out).write_text(text)
    print(text)


def report(rows: list[tuple[str, dict]], count: int, args) -> str:
    lines = [f"qwen2 from lmrl.modelzoo.init_model: hidden 512, {args.layers} layers, "
             f"{count / 1e6:.1f}M parameters; sort_text n=5, B={args.B} G={args.G}, "
             f"kl_weight 0.1, fp32, 1 thread; median of {args.steps} steps after 1 warm-up",
             "",
             "| variant | trainable | params MB | optimizer MB | reference MB | RSS built - "
             "imports MB | peak RSS - imports MB | step s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['trainable_M']:.2f}M | {r['param_MB']:.0f} | "
            f"{r['optimizer_MB']:.1f} | {r['reference_MB']:.0f} | "
            f"{r['rss_built_MB'] - r['rss_imported_MB']:.0f} | "
            f"{r['rss_peak_MB'] - r['rss_imported_MB']:.0f} | {r['step_s']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
