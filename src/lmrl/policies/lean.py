"""lmrl's own forward pass for Llama-family decoders, run on the transformers model's parameters.

Why: on a small model on a CPU, transformers' per-layer machinery (mask construction, three
projection matmuls, the attention-interface dispatch, cache bookkeeping) costs more than the
arithmetic, and the CPU flash-attention kernel is slow for one-token queries with small heads.
This forward computes the same function (tests compare it with transformers' logits) with fewer,
bigger ops:

- q, k, v in one matmul and gate, up in one: the weights are concatenated once per pass (once
  per rollout when sampling), so gradients still land in the model's own parameters and the
  optimizer, checkpoints and save_pretrained are unchanged;
- rotary embedding applied to q and k together, cos/sin computed once per pass (by the model's
  own rotary module, so every rope scaling type it knows is honoured);
- attention as two batched matmuls and a softmax, with one additive mask built once per pass,
  up to FUSED_TILE (query, key) pairs per head; longer tiles (log-prob passes over long
  completions, long prompts) go to torch's fused attention kernel;
- final norm and LM head only at the positions whose logits are kept;
- a KV cache that keeps a prompt's keys and values once for its G samples (attention reads
  them once per group, as one matmul with G query rows) and appends each sample's own
  columns by concatenation (autograd-friendly) or, after `reserve`, in place into
  preallocated buffers (sampling);
- for `torch.compile` (policy.compile): `StaticCache`, the sampling cache in fixed shapes (one
  graph serves every decoding step), and RoPE looked up in a table computed outside the graph.

Supported: llama, qwen2, qwen3 and mistral configs with SiLU MLPs and full attention in every
layer. `unsupported_reason` says why anything else falls back to transformers' forward.

Shapes: N rows, S new columns, K = past + S key columns, h query heads, h_kv key/value heads,
d head dim.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
# policy.forward: "lmrl" is this module's pass, "transformers" the model's own, "auto" picks
# (HFPolicy's docstring says how). Here, below config.py, which imports it for validation.
FORWARDS = ("auto", "lmrl", "transformers")


def unsupported_reason(model: nn.Module) -> str | None:
    """None if `LeanForward` computes this model's function, else why not."""
    if hasattr(model, "peft_config"):
        return "LoRA adapters (peft): lmrl's forward reads the base weights only"
    cfg = model.config
    if cfg.model_type not in MODEL_TYPES:
        return f"model type {cfg.model_type!r} (lmrl's forward knows {', '.join(MODEL_TYPES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    layer_types = getattr(cfg, "layer_types", None) or ["full_attention"]
    sliding = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
    if sliding or any(t != "full_attention" for t in layer_types):
        return "sliding-window attention"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "rotary_emb") or not hasattr(model, "lm_head"):
        return "not a <Arch>ForCausalLM with .model.rotary_emb and .lm_head"
    for layer in base.layers:
        a, m = layer.self_attn, layer.mlp
        if len({p.bias is None for p in (a.q_proj, a.k_proj, a.v_proj)}) > 1 or \
                (m.gate_proj.bias is None) != (m.up_proj.bias is None):
            return "projections with and without bias in one matmul group"
    return None


def rms_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """transformers' RMSNorm: normalise in float32, cast back, then scale."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    if x.dtype == norm.weight.dtype == torch.float32:
        return F.rms_norm(x, x.shape[-1:], norm.weight, eps)
    return F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype) * norm.weight


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention_bias(attention_mask: Tensor, S: int, dtype: torch.dtype) -> Tensor:
    """Additive mask (N, 1, S, K): 0 where query i (column K - S + i) may see key j, else -inf.

    A key is visible if it is a real token (mask 1) at or before the query's column. A padded
    query also sees itself, so that no row is all -inf: its softmax stays finite and no NaN can
    reach the real rows through its keys or the backward pass. Real rows never see padding.
    """
    K = attention_mask.shape[1]
    keys = torch.arange(K, device=attention_mask.device)
    queries = keys[K - S:, None]  # (S, 1)
    keep = (attention_mask.bool()[:, None, :] & (keys <= queries)) | (keys == queries)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(
        ~keep, float("-inf"))[:, None]


class LeanCache:
    """Keys and values per layer, and the pass's concatenated weights.

    After `batch_repeat_interleave(G)` the cached columns become a shared prefix: kept once per
    prompt, (B, h_kv, L, d), while each of the N = B·G rows appends its own columns,
    (N, h_kv, t, d). Attention then reads a prompt's keys once for its G queries (one matmul
    with G rows instead of G matmuls with one), rather than G copies of them.
    """

    def __init__(self) -> None:
        self.keys: list[Tensor] = []  # per layer (rows, h_kv, columns, d), after the prefix
        self.values: list[Tensor] = []
        self.prefix: list[tuple[Tensor, Tensor]] | None = None  # per layer (B, h_kv, L, d)
        self.weights: list[tuple] | None = None
        self._buffers: list[tuple[Tensor, Tensor]] | None = None

    def get_seq_length(self) -> int:
        own = self.keys[0].shape[2] if self.keys else 0
        return own + (self.prefix[0][0].shape[2] if self.prefix else 0)

    def batch_repeat_interleave(self, G: int) -> None:
        """Each row G times in a row: what is cached so far becomes the prefix of G rows."""
        if G == 1:
            return
        if self.prefix is not None:
            raise ValueError("the cache already has a shared prefix")
        self.prefix = list(zip(self.keys, self.values, strict=True))
        self.keys = [k.new_empty(len(k) * G, k.shape[1], 0, k.shape[3]) for k in self.keys]
        self.values = [v.new_empty(len(v) * G, v.shape[1], 0, v.shape[3]) for v in self.values]

    def reserve(self, capacity: int) -> None:
        """Preallocate room for `capacity` columns in all (prefix included): later updates
        write in place instead of re-concatenating (O(T) copies per token). No-grad use."""
        self._buffers = []
        room = capacity - (self.prefix[0][0].shape[2] if self.prefix else 0)
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            kb = k.new_empty(k.shape[0], k.shape[1], room, k.shape[3])
            vb = v.new_empty(v.shape[0], v.shape[1], room, v.shape[3])
            kb[:, :, :k.shape[2]], vb[:, :, :v.shape[2]] = k, v
            self._buffers.append((kb, vb))
            self.keys[i], self.values[i] = kb[:, :, :k.shape[2]], vb[:, :, :v.shape[2]]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append columns to `layer` -> its own keys and values (the prefix is separate)."""
        if self._buffers is not None:
            kb, vb = self._buffers[layer]
            start, end = self.keys[layer].shape[2], self.keys[layer].shape[2] + k.shape[2]
            kb[:, :, start:end], vb[:, :, start:end] = k, v
            self.keys[layer], self.values[layer] = kb[:, :, :end], vb[:, :, :end]
        elif layer == len(self.keys):  # first pass through this layer
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


class BufferPool:
    """Key/value buffers kept from one rollout to the next: a rollout of the same shape reuses
    them instead of allocating (and zeroing) the cache again, e.g. 1 GB per rollout for the
    ~20M model at 128 rows x 256 tokens. A deep copy of the policy starts with an empty pool."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.buffers: list[Tensor] = []

    def take(self, shape: tuple, dtype: torch.dtype, device: torch.device,
             count: int) -> list[Tensor]:
        key = (shape, dtype, device, count)
        if key != self.key:
            self.buffers = []  # the old ones are freed before the new ones are made
            self.buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(count)]
            self.key = key
        return self.buffers

    def __deepcopy__(self, memo) -> "BufferPool":
        return BufferPool()


class StaticCache:
    """A LeanCache in preallocated buffers for compiled decoding (no grad).

    Each row's own keys and values live in buffers of capacity + 1 columns, (N, h_kv, C + 1, d),
    allocated once and reused by later rollouts of the same shape (`BufferPool`); step t writes
    column t in place (`column` is a tensor) and attends over the first t + 2 columns, views of
    the buffers (no copies): the t + 1 written ones and the next, masked by `bias`
    (N, 1, 1, L + C + 1), which also masks the prompt's padding. Attending over all C columns
    would read the whole buffer at every step: for a 256-token budget twice the cache traffic
    of a full rollout, and budget / length times it when completions stop early.

    Why t + 2 and not t + 1: the length is carried as the size of `span`, marked dynamic, so
    torch.compile makes one graph for every length from the first call; an int would be
    specialised to its first value and recompiled at the second (a second compile of the
    decoding graph in every run), and a length of 1 is always specialised (it broadcasts).
    The extra column is masked, and finite: the buffers are zeroed when allocated and later
    hold only keys and values. The prompt's columns stay the shared prefix.
    """

    def __init__(self, cache: LeanCache, attention_mask: Tensor, capacity: int,
                 rope: tuple[Tensor, Tensor], pool: "BufferPool | None" = None) -> None:
        """From a cache holding the prompts' columns; attention_mask (N, L) of the prompts;
        rope: `LeanForward.rope_table` covering every position the rollout reaches; pool: where
        the buffers are taken from (reused across rollouts; None: new ones)."""
        # Without batch_repeat_interleave (G = 1) the cached columns are each row's own prefix.
        self.prefix = cache.prefix or list(zip(cache.keys, cache.values, strict=True))
        self.weights, self.rope = cache.weights, rope
        N, self.L = attention_mask.shape
        k = self.prefix[0][0]
        shape = (N, k.shape[1], capacity + 1, k.shape[3])
        buffers = (pool or BufferPool()).take(shape, k.dtype, k.device, 2 * len(self.prefix))
        # Columns past t + 1 are never read, and column t + 1 is masked: buffers from an
        # earlier rollout need no clearing.
        self.keys, self.values = buffers[:len(self.prefix)], buffers[len(self.prefix):]
        visible = torch.cat([attention_mask.bool(),
                             attention_mask.new_zeros(N, capacity + 1).bool()], dim=1)
        self.bias = torch.zeros(visible.shape, dtype=self.keys[0].dtype, device=visible.device
                                ).masked_fill_(~visible, float("-inf"))[:, None, None]
        self.column = torch.zeros(1, dtype=torch.long, device=visible.device)
        self.span = visible.new_empty(2)  # its size: the own columns the next step reads

    def advance(self, t: int) -> None:
        """The next decode step writes and may see own column t."""
        self.column.fill_(t)
        self.span = self.column.new_empty(t + 2)  # written columns and the next (class doc)
        torch._dynamo.mark_dynamic(self.span, 0)
        self.bias[..., self.L + t] = 0.0

    def visible_bias(self) -> Tensor:
        """The mask over the prompt's columns and the own columns written so far."""
        return self.bias[..., :self.L + self.span.shape[0]]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.keys[layer].index_copy_(2, self.column, k)
        self.values[layer].index_copy_(2, self.column, v)
        n = self.span.shape[0]
        return self.keys[layer][:, :, :n], self.values[layer][:, :, :n]


def softmax(scores: Tensor, dtype: torch.dtype) -> Tensor:
    """Over the last dim in at least float32 (as transformers does), returned in `dtype`."""
    return torch.softmax(scores, dim=-1, dtype=torch.promote_types(dtype, torch.float32)
                         ).to(dtype)


# Attention tiles up to this many (query, key) pairs per head are computed as broadcast
# products and sums inside torch.compile'd code (`attend(small=True)`; eager code would
# materialise the products): inductor fuses them into a few loops, where a batched matmul
# makes one tiny GEMM call per (row, head). Larger tiles keep the matmul, the right tool there
# (measured in bench/README.md, "Small attention tiles").
SMALL_TILE = 1024
# Tiles of at least this many (query, key) pairs per head go to torch's fused attention
# (scaled_dot_product_attention, the CPU flash kernel), which never holds the (S, K) scores:
# at 256-token completions its forward and backward take 1/2 to 1/3 of the two matmuls' time;
# at 10-token ones it is no faster (bench/fused_attention.py, bench/README.md "Fused attention").
FUSED_TILE = 4096


def _scores(q: Tensor, k: Tensor) -> Tensor:
    """q kᵀ as a product and a sum over d: (..., S, d), (..., K, d) -> (..., S, K)."""
    return (q[..., :, None, :] * k[..., None, :, :]).sum(-1)


def _mix(p: Tensor, v: Tensor) -> Tensor:
    """p v as a product and a sum over keys: (..., S, K), (..., K, d) -> (..., S, d)."""
    return (p[..., :, :, None] * v[..., None, :, :]).sum(-2)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
           prefix: tuple[Tensor, Tensor] | None, small: bool = False,
           fused: bool = False) -> Tensor:
    """softmax(q kᵀ + bias) v over [prefix, own] key columns. q (N, h, S, d) already scaled;
    k, v (N, h, t, d); prefix keys and values (B, h, L, d) shared by G = N / B rows each.
    small: broadcast products instead of matmuls (compiled code only: eager, they would
    materialise (..., S, K, d)). fused: torch's fused attention (long tiles, FUSED_TILE)."""
    if fused:
        return fused_attend(q, k, v, bias, prefix)
    scores = _scores if small else lambda a, b: torch.matmul(a, b.transpose(-1, -2))
    mix = _mix if small else torch.matmul
    if prefix is None:
        return mix(softmax(scores(q, k) + bias, v.dtype), v)
    pk, pv = prefix
    (N, h, S, _), (B, L) = q.shape, (pk.shape[0], pk.shape[2])
    G = N // B

    def grouped(x: Tensor) -> Tensor:  # (N, h, S, c) -> (B, h, G·S, c)
        return x.reshape(B, G, h, S, -1).transpose(1, 2).reshape(B, h, G * S, -1)

    def ungrouped(x: Tensor) -> Tensor:  # (B, h, G·S, c) -> (N, h, S, c)
        return x.reshape(B, h, G, S, -1).transpose(1, 2).reshape(N, h, S, -1)

    probs = softmax(torch.cat([ungrouped(scores(grouped(q), pk)), scores(q, k)], dim=-1) + bias,
                    v.dtype)
    on_prefix, on_own = probs.split([L, probs.shape[-1] - L], dim=-1)
    return ungrouped(mix(grouped(on_prefix), pv)) + mix(on_own, v)


def fused_attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                 prefix: tuple[Tensor, Tensor] | None) -> Tensor:
    """`attend` by scaled_dot_product_attention. A shared prefix is repeated for its G rows
    (a copy of L columns, small next to the (S, L + t) scores it saves); the additive bias
    lets every row see at least itself, so no row is all -inf."""
    if prefix is not None:
        G = q.shape[0] // prefix[0].shape[0]
        k = torch.cat([prefix[0].repeat_interleave(G, dim=0), k], dim=2)
        v = torch.cat([prefix[1].repeat_interleave(G, dim=0), v], dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)


def _cat_or_none(tensors: list[Tensor | None]) -> Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


class LeanForward:
    """The model's forward pass with fused projections (see the module docstring).

    Holds a reference to the model, not a copy: it is not an nn.Module, so the model's
    parameters are registered once (in HFPolicy.model), and copy.deepcopy of the policy copies
    this object along with the model it points to.
    """

    def __init__(self, model: nn.Module) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"lmrl's forward does not support this model: {reason}")
        cfg = model.config
        self.model = model
        self.h, self.h_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.h

    def weights(self) -> list[tuple]:
        """Per layer (w_qkv, b_qkv, w_gate_up, b_gate_up): one concatenation per pass."""
        out = []
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv, gu = (a.q_proj, a.k_proj, a.v_proj), (m.gate_proj, m.up_proj)
            out.append((torch.cat([p.weight for p in qkv]), _cat_or_none([p.bias for p in qkv]),
                        torch.cat([p.weight for p in gu]), _cat_or_none([p.bias for p in gu])))
        return out

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 cache: LeanCache | None, logits_to_keep: int,
                 rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Logits (N, logits_to_keep, V) of the last columns of input_ids (N, S).

        attention_mask (N, K) covers the cached columns and the new ones; position_ids (N, S)
        are the new columns' positions. rope: `rope_table` covering them (None: computed here).
        """
        base = self.model.model
        N, S = input_ids.shape
        if cache is None:
            cache_weights = self.weights()
        else:
            if cache.weights is None:
                cache.weights = self.weights()
            cache_weights = cache.weights
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask.shape[1] != past + S:
            raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns, expected "
                             f"{past} cached + {S} new")
        x = base.embed_tokens(input_ids)
        bias = attention_bias(attention_mask, S, x.dtype)
        if rope is None:
            cos, sin = base.rotary_emb(x, position_ids)
        else:
            cos, sin = rope[0][position_ids], rope[1][position_ids]
        return self._layers(x, cos, sin, bias, cache, cache_weights, logits_to_keep)

    def rope_table(self, positions: int) -> tuple[Tensor, Tensor]:
        """cos and sin (positions, d) of positions 0..positions-1 in the hidden states' dtype,
        by the model's own rotary module (every rope scaling type it knows; a dynamic type
        scales for the longest of them).

        Why: looked up inside a compiled graph they are loads; computed there, inductor fuses
        the cos/sin into every consumer and recomputes them per head and per key column."""
        base = self.model.model
        dummy = base.embed_tokens.weight.new_empty(0)
        cos, sin = base.rotary_emb(dummy, torch.arange(positions, device=dummy.device)[None])
        return cos[0], sin[0]

    def decode(self, token: Tensor, position: Tensor, cache: "StaticCache") -> Tensor:
        """Logits (N, V) for one new token per row, token and position (N,), written at
        `cache.column`. Every shape is fixed for a rollout: the step can be compiled once."""
        x = self.model.model.embed_tokens(token[:, None])
        cos, sin = cache.rope[0][position[:, None]], cache.rope[1][position[:, None]]
        return self._layers(x, cos, sin, cache.visible_bias(), cache, cache.weights, 1)[:, -1]

    def _layers(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor,
                cache: "LeanCache | StaticCache | None", weights: list[tuple],
                logits_to_keep: int) -> Tensor:
        base = self.model.model
        cos, sin = cos[:, None], sin[:, None]  # (N, 1, S, d): broadcast over heads
        for i, (layer, w) in enumerate(zip(base.layers, weights, strict=True)):
            x = x + self._attention(i, layer.self_attn, rms_norm(x, layer.input_layernorm), w,
                                    cos, sin, bias, cache)
            x = x + self._mlp(layer.mlp, rms_norm(x, layer.post_attention_layernorm), w)
        x = rms_norm(x[:, -logits_to_keep:], base.norm)
        return self.model.lm_head(x)

    def _attention(self, i: int, attn: nn.Module, x: Tensor, w: tuple, cos: Tensor,
                   sin: Tensor, bias: Tensor, cache: LeanCache | None) -> Tensor:
        N, S, _ = x.shape
        h, h_kv, d = self.h, self.h_kv, self.d
        qkv = F.linear(x, w[0], w[1]).view(N, S, h + 2 * h_kv, d).transpose(1, 2)
        q, k, v = qkv.split([h, h_kv, h_kv], dim=1)  # (N, heads, S, d)
        if hasattr(attn, "q_norm"):  # qwen3 normalises q and k per head before the rotation
            q, k = rms_norm(q, attn.q_norm), rms_norm(k, attn.k_norm)
            qk = torch.cat([q, k], dim=1)
        else:
            qk = qkv[:, :h + h_kv]
        qk = qk * cos + rotate_half(qk) * sin
        q, k = qk[:, :h], qk[:, h:]
        prefix = None
        if cache is not None:
            k, v = cache.update(i, k, v)
            prefix = cache.prefix[i] if cache.prefix else None
        if h_kv != h:
            k, v = (x.repeat_interleave(h // h_kv, dim=1) for x in (k, v))
            if prefix is not None:
                prefix = tuple(x.repeat_interleave(h // h_kv, dim=1) for x in prefix)
        columns = k.shape[2] + (prefix[0].shape[2] if prefix is not None else 0)
        small = torch.compiler.is_compiling() and S * columns <= SMALL_TILE
        fused = S * columns >= FUSED_TILE
        out = attend(q * attn.scaling, k, v, bias, prefix, small, fused)  # (N, h, S, d)
        return attn.o_proj(out.transpose(1, 2).reshape(N, S, h * d))

    @staticmethod
    def _mlp(mlp: nn.Module, x: Tensor, w: tuple) -> Tensor:
        gate, up = F.linear(x, w[2], w[3]).chunk(2, dim=-1)
        return mlp.down_proj(F.silu(gate) * up)
