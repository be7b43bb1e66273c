"""lmrl's attention as two matmuls against torch's fused attention (scaled_dot_product_attention,
the CPU flash kernel) on the tiles lmrl's forward meets, alternated in one process: the
crossover behind lean.FUSED_TILE (issue 17).

Each tile is a log-prob pass's attention of one layer: N = B·G rows of S completion columns over
a shared L-column prompt prefix, h heads of d dims; timed without gradients (the reference and
old-policy passes) and with the backward (the update's pass). Median of the repeats.

--model-pass adds the whole pass at long_rollouts.py's ~20M shape: the log-prob pass and its
backward over one micro-batch of 32 completions (4 prompts × 8) of 256 tokens after 64-token
prompts, through HFPolicy.logprobs (eager), with lean.FUSED_TILE at its value and disabled.

    .venv/bin/python bench/fused_attention.py [--threads 2] [--repeats 7] [--model-pass]
"""

import argparse
import statistics
import tempfile
import time

import torch

import lmrl.policies.lean as lean
from lmrl.policies.lean import FUSED_TILE, attend, attention_bias

# (label, N, G, h, S, L, d): the tiny sort5 model's, vs_trl's short cells at ~20M, and
# long_rollouts.py's 256-token completions (a micro-batch of 32 rows, grad_accum 4).
TILES = [("tiny sort5, 32x16", 512, 16, 4, 10, 12, 32),
         ("~20M sort_text n=5, 16x8", 128, 8, 8, 10, 12, 64),
         ("~20M, 32 completion tokens", 128, 8, 8, 32, 32, 64),
         ("~20M, 64 completion tokens", 128, 8, 8, 64, 64, 64),
         ("~20M long rollouts, 256 tokens", 32, 8, 8, 256, 64, 64)]


def tile(N: int, G: int, h: int, S: int, L: int, d: int):
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, requires_grad=True)

    q, k, v = rand(N, h, S, d), rand(N, h, S, d), rand(N, h, S, d)
    prefix = rand(N // G, h, L, d), rand(N // G, h, L, d)
    bias = attention_bias(torch.ones(N, L + S, dtype=torch.long), S, torch.float32)
    return lambda fused: attend(q, k, v, bias, prefix, fused=fused)


def seconds(run, fused: bool, grad: bool) -> float:
    t0 = time.perf_counter()
    if grad:
        run(fused).sum().backward()
    else:
        with torch.no_grad():
            run(fused)
    return time.perf_counter() - t0


def model_pass(repeats: int) -> None:
    """The log-prob pass + backward of the ~20M long-rollout micro-batch, FUSED_TILE on / off."""
    from lmrl.modelzoo import init_model
    from lmrl.policies.hf import HFPolicy

    B, G, prompt_len, T = 4, 8, 64, 256
    with tempfile.TemporaryDirectory() as tmp:
        init_model(tmp, "0123456789 ,", hidden_size=512, num_layers=8, num_heads=8,
                   intermediate_size=1024, max_position_embeddings=512)
        policy = HFPolicy.from_pretrained(tmp, max_new_tokens=T)
    g = torch.Generator().manual_seed(0)
    prompts = ["".join(str(d) for d in torch.randint(0, 10, (prompt_len,), generator=g).tolist())
               for _ in range(B)]
    responses = torch.randint(3, policy.tokenizer.vocab_size, (B, G, T), generator=g)
    mask = torch.ones(B, G, T)
    times = {"fused": [], "matmuls": []}
    for i in range(repeats + 1):
        for name in ("fused", "matmuls") if i % 2 == 0 else ("matmuls", "fused"):
            lean.FUSED_TILE = FUSED_TILE if name == "fused" else 10**12
            t0 = time.perf_counter()
            logp, _ = policy.logprobs(prompts, responses, mask)
            logp.sum().backward()
            times[name].append(time.perf_counter() - t0)
    lean.FUSED_TILE = FUSED_TILE
    m, f = (statistics.median(times[x][1:]) for x in ("matmuls", "fused"))
    print(f"\n~20M log-prob pass + backward, {B}x{G} completions of {T} tokens after {prompt_len}"
          f"-token prompts: matmuls {m:.2f} s, fused {f:.2f} s ({m / f:.2f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--model-pass", action="store_true",
                   help="also the ~20M long-rollout log-prob pass + backward")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"threads {a.threads}; FUSED_TILE = {FUSED_TILE} (query, key) pairs per head\n")
    print("| tile | N | h | S | L + S | S·(L+S) | pass | matmuls ms | fused ms | matmuls / fused |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, N, G, h, S, L, d in TILES:
        run = tile(N, G, h, S, L, d)
        for grad in (False, True):
            times = {False: [], True: []}
            for _ in range(a.repeats + 1):  # the first round warms up, untimed
                for fused in (False, True):  # alternated: this machine is noisy
                    times[fused].append(seconds(run, fused, grad))
            m, f = (statistics.median(times[x][1:]) for x in (False, True))
            print(f"| {label} | {N} | {h} | {S} | {L + S} | {S * (L + S)} | "
                  f"{'forward + backward' if grad else 'forward, no grad'} | {1e3 * m:.1f} | "
                  f"{1e3 * f:.1f} | {m / f:.2f}x |", flush=True)
    if a.model_pass:
        model_pass(max(a.repeats // 2, 2))


if __name__ == "__main__":
    main()
