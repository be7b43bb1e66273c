"""The sampling stage alone, variants alternating in one process (issue 17).

Rollouts of B×G completions of exactly `--new` tokens (min_new_tokens = max_new_tokens) from
`--prompt`-token prompts, on a randomly initialised model of a given shape; every variant
samples in turn (A B C A B C ...), so a slow phase of the machine hits all alike, and the
medians and ratios to the first variant are printed. Variants:

  eager      lmrl's forward, eager, cache preallocated per rollout
  full       compiled decoding, attention over every column of the cache buffer with the
             unwritten ones masked (lmrl before issue 17), buffers zeroed per rollout
  written    compiled decoding, attention over the columns written so far, buffers reused
             (lmrl now)
  bf16       written, under bf16 autocast (policy.dtype=autocast: bf16 matmuls, fp32 weights)

It also prints the bounds of the measured shape: decoding FLOPs against the matmul ceiling
(bench/flops.py), and bytes each decoding step must read (the weights once, the key/value
cache's written columns) against this machine's memory bandwidth (a large copy, same threads).

    .venv/bin/python bench/sampling.py --size 20M --threads 2 --repeats 3
    .venv/bin/python bench/sampling.py --size tiny --new 64 --repeats 5 --variants eager written

--profile N then profiles one more rollout of the first variant (torch.profiler, compiled
kernels named by inductor) and prints its N ops with the most time of their own.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import ModelShape, decode_flops, matmul_gflops  # noqa: E402

import lmrl.policies.lean as lean  # noqa: E402
from lmrl.modelzoo import init_model  # noqa: E402
from lmrl.policies.hf import HFPolicy  # noqa: E402

SIZES = {"tiny": (4, 128, 4), "20M": (8, 512, 8), "100M": (12, 768, 12), "smoke": (1, 32, 2)}
ALPHABET = "0123456789 abcdefghijklmnopqrstuvwxyz=+-*/,.;:()"


def full_width(self, layer: int, k, v):
    """lmrl before: write column t, attend over all C columns (the bias masks the rest)."""
    self.keys[layer].index_copy_(2, self.column, k)
    self.values[layer].index_copy_(2, self.column, v)
    return self.keys[layer], self.values[layer]


class ZeroedPool(lean.BufferPool):
    """Fresh zeroed buffers every rollout (masked columns must be finite: -inf + NaN is NaN)."""

    def take(self, shape, dtype, device, count):
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(count)]


WRITTEN = (lean.StaticCache.update, lean.StaticCache.visible_bias)


def use(variant: str, policy: HFPolicy) -> None:
    policy.compile = variant != "eager"
    policy.autocast = torch.bfloat16 if variant == "bf16" else None
    if variant == "full":
        lean.StaticCache.update, lean.StaticCache.visible_bias = full_width, lambda s: s.bias
        policy._kv_pool = ZeroedPool()
    else:
        lean.StaticCache.update, lean.StaticCache.visible_bias = WRITTEN
        if isinstance(policy._kv_pool, ZeroedPool):
            policy._kv_pool = lean.BufferPool()


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of the best of `repeats` copies of a large tensor (read + write counted)."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def decode_bounds(shape: ModelShape, N: int, B: int, prompt: int, new: int,
                  ceiling: float, bandwidth: float) -> dict:
    """Seconds the decoding steps of one rollout need at best: by FLOPs (flops.decode_flops
    per row) and by bytes read (per step: every weight once, fp32, and the key/value columns
    written so far: each row's own, each group's prompt once)."""
    flops = N * decode_flops(shape, prompt, new)
    weights = 4 * (shape.body_weights + shape.hidden * shape.vocab)
    kv_column = 2 * shape.layers * shape.kv_heads * shape.head_dim * 4
    bytes_ = sum(weights + kv_column * (N * t + B * prompt) for t in range(1, new))
    return {"flop_seconds": flops / ceiling, "byte_seconds": bytes_ / bandwidth,
            "gflop": flops / 1e9, "gbyte": bytes_ / 1e9}


def profile(policy: HFPolicy, variant: str, prompts: list[str], G: int,
            generator: torch.Generator, top: int) -> None:
    """Where one rollout's time goes: its `top` ops by time of their own."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    use(variant, policy)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        policy.sample(prompts, G, generator=generator)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top,
                                    max_name_column_width=60))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="20M")
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["eager", "full", "written"],
                   choices=["eager", "full", "written", "bf16"])
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile one more rollout of the first variant: its top N ops")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.profile:  # inductor's kernels show in the profile under their own names
        torch._inductor.config.cpp.enable_kernel_profile = True
    layers, hidden, heads = SIZES[a.size]
    with tempfile.TemporaryDirectory() as tmp:
        params = init_model(tmp, ALPHABET, hidden_size=hidden, num_layers=layers,
                            num_heads=heads, max_position_embeddings=a.prompt + a.new + 8)
        policy = HFPolicy.from_pretrained(tmp, dtype="float32", device="cpu", forward="lmrl",
                                          max_new_tokens=a.new, min_new_tokens=a.new)
    g = torch.Generator().manual_seed(0)
    prompts = ["".join(ALPHABET[int(i)] for i in torch.randint(len(ALPHABET), (a.prompt,),
                                                                generator=g))
               for _ in range(a.B)]
    times: dict[str, list[float]] = {v: [] for v in a.variants}
    for v in a.variants:  # warm-up: compiles each variant's graph once
        use(v, policy)
        policy.sample(prompts, a.G, generator=g)
    for _ in range(a.repeats):
        for v in a.variants:
            use(v, policy)
            start = time.perf_counter()
            rollout = policy.sample(prompts, a.G, generator=g)
            times[v].append(time.perf_counter() - start)
            assert rollout.responses.shape[-1] == a.new
    if a.profile:
        profile(policy, a.variants[0], prompts, a.G, g, a.profile)
    use("written", policy)
    shape = ModelShape.from_hf_config(policy.model.config.to_dict())
    ceiling, bandwidth = max(matmul_gflops([256, 512, 1024]).values()) * 1e9, memory_bandwidth()
    bounds = decode_bounds(shape, a.B * a.G, a.B, a.prompt, a.new, ceiling, bandwidth)
    tokens = a.B * a.G * a.new
    base = statistics.median(times[a.variants[0]])
    print(f"{a.size} ({params / 1e6:.1f}M parameters), {a.B}x{a.G} rows, prompt {a.prompt}, "
          f"{a.new} new tokens, {a.threads} threads, {a.repeats} repeats")
    print(f"matmul ceiling {ceiling / 1e9:.0f} GFLOP/s, memory bandwidth (copy) "
          f"{bandwidth / 1e9:.1f} GB/s; decoding needs {bounds['gflop']:.0f} GFLOP "
          f"(>= {bounds['flop_seconds']:.2f} s) and reads {bounds['gbyte']:.0f} GB "
          f"(>= {bounds['byte_seconds']:.2f} s)")
    bound = max(bounds["flop_seconds"], bounds["byte_seconds"])
    which = "matmul" if bounds["flop_seconds"] >= bounds["byte_seconds"] else "memory"
    print("| variant | median s per rollout | tokens/s | vs first | share of the bound "
          f"({which}) |\n|---|---|---|---|---|")
    result = {"size": a.size, "params": params, "bounds": bounds, "ceiling": ceiling,
              "bandwidth": bandwidth, "times": times}
    for v in a.variants:
        med = statistics.median(times[v])
        print(f"| {v} | {med:.3f} | {tokens / med:,.0f} | {base / med:.2f}x | "
              f"{bound / med:.0%} |")
    return result


if __name__ == "__main__":
    main()
