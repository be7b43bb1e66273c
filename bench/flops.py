"""Model FLOPs of one GRPO step on a causal LM, and this machine's matrix-multiply ceiling.

The count is a pure function of the model's shape and the step's token counts: the FLOPs a
step *needs*, whatever an implementation actually executes. A FLOP is one multiply or one add,
so a (m, k) @ (k, n) matmul is 2·m·k·n. Counted:

  body      2 × (weights in the layers' matmuls) per token: q, k, v, o projections and the
            three MLP matrices (biases, norms, rotary and activations are ignored, < 1%)
  LM head   2 · hidden · vocab per position whose logits are needed, never the prompt's
  attention QKᵀ and A·V, 2 · heads · head_dim FLOPs each per (query, key) pair, causal pairs
            only: a query at position i (1-based) sees i keys

and per step (B prompts, G samples each, prompt length P, completion lengths t_i, EOS included):

  sampling  prefill of the B prompts (shared by their G samples through the KV cache), logits at
            the last prompt position; then tokens 1..t_i-1 of each completion fed back one at a
            time, each with its logits (the last token is never fed back)
  log-probs one pass over prompt + completion minus its last token, logits at the t_i positions
            that predict completion tokens
  reference one log-prob pass, only when the KL weight is > 0
  update    μ × (forward + backward) of the log-prob pass, backward ≈ 2 × forward, so 3×

With μ = 1 the old-policy log-probs are the detached current ones: no pass of their own.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf_config(cls, config: dict) -> "ModelShape":
        """From a Llama/Qwen2-style config.json as a dict."""
        heads = config["num_attention_heads"]
        return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                   kv_heads=config.get("num_key_value_heads") or heads,
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   intermediate=config["intermediate_size"], vocab=config["vocab_size"])

    @property
    def body_weights(self) -> int:
        """Weights one token is multiplied by in the layers (embedding and LM head excluded)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)


def forward_flops(m: ModelShape, new_tokens: float, context: float = 0, logits: float = 0
                  ) -> float:
    """A forward pass over `new_tokens` tokens appended after `context` cached ones, with logits
    at `logits` of them. Token i of the new ones (1-based) attends to context + i keys."""
    body = 2 * new_tokens * m.body_weights
    head = 2 * logits * m.hidden * m.vocab
    pairs = new_tokens * context + new_tokens * (new_tokens + 1) / 2
    return body + head + 4 * m.layers * m.heads * m.head_dim * pairs


def decode_flops(m: ModelShape, prompt_len: float, length: float) -> float:
    """Feeding completion tokens 1..length-1 back one at a time after a prompt of prompt_len:
    token j sees prompt_len + j keys. The closed form of Σ_j forward_flops(m, 1, P + j - 1, 1)."""
    fed = length - 1
    pairs = fed * prompt_len + fed * length / 2  # Σ_{j=1}^{t-1} (P + j)
    return 2 * fed * (m.body_weights + m.hidden * m.vocab) + \
        4 * m.layers * m.heads * m.head_dim * pairs


def logprob_flops(m: ModelShape, prompt_len: float, length: float) -> float:
    """One log-prob pass over one completion (forward only)."""
    return forward_flops(m, prompt_len + length - 1, 0, length)


def shared_logprob_flops(m: ModelShape, B: int, prompt_len: float, lengths: list[float]
                         ) -> float:
    """lmrl's log-prob pass: each of the B prompts once (logits at its last position), then
    each completion's tokens 0..t-2 on its group's cached prompt, with logits at all of them.
    With G = 1 this equals the standard pass (tested)."""
    prefix = B * forward_flops(m, prompt_len, 0, 1)
    return prefix + sum(forward_flops(m, t - 1, prompt_len, t - 1) for t in lengths)


def step_flops(m: ModelShape, B: int, G: int, prompt_len: float, lengths: list[float],
               kl: bool, mu: int = 1, shared_prompt: bool = False) -> dict[str, float]:
    """FLOPs of one GRPO step by stage; `lengths` holds the N = B·G completion lengths (a mean
    repeated N times is exact for every term but the small quadratic attention one).

    shared_prompt=False counts the step's standard model FLOPs (every completion's log-prob
    pass runs its own prompt, as TRL does); True counts what lmrl executes (the prompt once per
    group), for its actual share of the ceiling."""
    if len(lengths) != B * G:
        raise ValueError(f"need B*G = {B * G} completion lengths, got {len(lengths)}")
    sample = B * forward_flops(m, prompt_len, 0, 1) + \
        sum(decode_flops(m, prompt_len, t) for t in lengths)
    if shared_prompt:
        logprob = shared_logprob_flops(m, B, prompt_len, lengths)
    else:
        logprob = sum(logprob_flops(m, prompt_len, t) for t in lengths)
    stages = {"sample": sample, "ref": logprob if kl else 0.0, "update": 3 * mu * logprob}
    return {**stages, "total": sum(stages.values())}


def matmul_gflops(sizes: list[int], dtype: str = "float32", rep_seconds: float = 0.02,
                  reps: int = 5, max_seconds: float = 1.0) -> dict[int, float]:
    """Best-of-reps throughput of square (n, n) @ (n, n) matmuls in GFLOP/s, with torch's
    current thread setting. A rep runs the matmul k times (k so that a rep takes ~rep_seconds);
    a size stops after `reps` reps, or after max_seconds once it has two."""
    import time

    import torch

    out = {}
    for n in sizes:
        a, b = (torch.randn(n, n).to(getattr(torch, dtype)) for _ in range(2))
        t0 = time.perf_counter()
        torch.mm(a, b)  # warm-up, and a first estimate of one matmul's time
        k = max(1, int(rep_seconds / (time.perf_counter() - t0)))
        best, spent, done = float("inf"), 0.0, 0
        while done < reps and not (done >= 2 and spent >= max_seconds):
            t0 = time.perf_counter()
            for _ in range(k):
                torch.mm(a, b)
            dt = time.perf_counter() - t0
            best, spent, done = min(best, dt / k), spent + dt, done + 1
        out[n] = 2 * n ** 3 / best / 1e9
    return out


def sampling_bytes(m: ModelShape, B: int, G: int, prompt_len: float, length: float,
                   bytes_per_value: int = 4, shared_prompt: bool = True) -> float:
    """Bytes that sampling must read from memory, at least: the weights once per forward (the
    prefill, then each of the length - 1 tokens fed back, B·G rows at a time) plus, per fed-back
    token, its keys and values (token j of a completion attends to prompt_len + j positions, as
    decode_flops counts them). With shared_prompt (lmrl) a prompt's keys and values are read once
    per group, else once per completion. All completions of the same length (the long-rollout
    benchmark's); embedding lookups and writes are left out."""
    weights = bytes_per_value * (m.body_weights + m.hidden * m.vocab)
    kv = bytes_per_value * 2 * m.layers * m.kv_heads * m.head_dim  # one position, K and V
    fed, rows = length - 1, B * G
    prompt_reads = (B if shared_prompt else rows) * prompt_len * fed
    return (1 + fed) * weights + kv * (prompt_reads + rows * fed * length / 2)


def memory_gbps(mbytes: int = 512, reps: int = 5) -> dict[str, float]:
    """Best-of-reps memory bandwidth in GB/s with torch's current thread setting: "read" is a
    sum over an fp32 tensor of `mbytes` MB (bytes read / seconds), "copy" a copy into another
    (bytes read + written / seconds)."""
    import time

    import torch

    x = torch.rand(mbytes * 2 ** 20 // 4)
    y = torch.empty_like(x)
    nbytes = x.numel() * 4
    out = {}
    for name, fn, moved in (("read", lambda: x.sum(), nbytes),
                            ("copy", lambda: y.copy_(x), 2 * nbytes)):
        fn()  # warm-up: page faults of y
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = moved / best / 1e9
    return out
