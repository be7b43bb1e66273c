"""Sampling and the log-prob pass with long prompts, transformers' forward against lmrl's.

lmrl's forward keeps each prompt's keys and values once for its G samples and reads them once
per group (lean.attend); transformers' repeats them G times. The difference grows with the
prompt: this measures it at 200-token prompts (B = 16 prompts x G = 8 samples, 10 new tokens),
alternating the two forwards in one process, median of 10 calls each.

    .venv/bin/python bench/long_prompt.py --model <a model directory> [--prompt-tokens 200]
"""

import argparse
import statistics
import time

import torch

from lmrl.policies.hf import HFPolicy


def median_ms(fn, reps: int = 10) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model whose vocabulary has digits")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    digits = args.prompt_tokens // 2
    prompts = [" ".join(str(x) for x in torch.randint(0, 10, (digits,), generator=g).tolist())
               for _ in range(16)]
    policies = {f: HFPolicy.from_pretrained(args.model, max_new_tokens=10, device="cpu",
                                            dtype="float32", forward=f)
                for f in ("transformers", "lmrl")}
    batch = policies["lmrl"].encode(prompts)
    rollout = policies["lmrl"].sample(batch, 8, torch.Generator().manual_seed(0))
    print(f"{len(prompts)} prompts of {batch.input_ids.shape[1]} tokens x 8 samples, "
          f"{rollout.responses.shape[-1]} new tokens; median ms")
    for _ in range(args.rounds):
        for name, policy in policies.items():
            def update(policy=policy):
                logp, _ = policy.logprobs(batch, rollout.responses, rollout.response_mask)
                logp.sum().backward()
            sample = median_ms(lambda policy=policy: policy.sample(
                batch, 8, torch.Generator().manual_seed(0)))
            print(f"{name:>13}: sample {sample:7.1f}   log-prob pass + backward "
                  f"{median_ms(update):7.1f}")


if __name__ == "__main__":
    main()
