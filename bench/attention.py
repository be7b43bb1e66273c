"""Sampling and log-prob + backward time of one batch (B=16 x G=8, sort_text n=5) under the
sdpa and eager attention kernels, alternated twice in one process (machines here are noisy).

    .venv/bin/python bench/attention.py MODEL_DIR [--threads 2]
"""

import argparse
import time

import torch

from lmrl.config import Config
from lmrl.policies.hf import HFPolicy
from lmrl.trainer import build_task


def seconds(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config().replace(policy={"model": args.model},
                           task={"task": "sort_text", "n": 5, "heldout_size": 500})
    task = build_task(cfg)
    policy = HFPolicy.from_pretrained(args.model, max_new_tokens=task.max_new_tokens)
    g = torch.Generator().manual_seed(0)
    prompts = policy.encode([ex["prompt"] for ex in task.sample_prompts(16, g)])
    rollout = policy.sample(prompts, 8, generator=g)

    def logprob_and_backward() -> None:
        policy.zero_grad()
        logp, _ = policy.logprobs(prompts, rollout.responses, rollout.response_mask, True)
        logp.sum().backward()

    for impl in ["sdpa", "eager", "sdpa", "eager"]:
        policy.model.set_attn_implementation(impl)
        sample = seconds(lambda: policy.sample(prompts, 8, generator=g))
        print(f"{impl:<6} sample {sample:.4f} s  log-prob + backward "
              f"{seconds(logprob_and_backward):.4f} s")


if __name__ == "__main__":
    main()
