"""A HuggingFace causal LM behind the policy protocol: KV-cache sampling, one-pass log-probs.

The state is the prompt plus every token so far, the action the next token. Prompts are either a
list of B prompts, tokenized here (strings, or TRL's conversational prompts, lists of
{"role", "content"} messages, rendered by the tokenizer's chat template), or a `PromptBatch`
(left-padded ids + attention mask, as `HFPolicy.encode` makes them), which a task can build once
per step so that sampling and every log-prob pass reuse one tokenization.

Left padding: prompts of different lengths are padded on the left, so that all of them end at the
same column and new tokens are appended in one column for the whole batch. Padded columns are
masked out of attention, and position ids count real tokens only (0 at a prompt's first token),
so a prompt's distribution does not depend on how long its batch mates are.

Shapes: B prompts, G samples each, N = B*G rows, L prompt columns, T response tokens, V vocab.
Responses are padded with the pad id after EOS; response_mask is 1 up to and including EOS (or
the token that completed a stop string).
"""

import contextlib
import functools
import inspect
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.utils import logging as hf_logging

from lmrl import distributed, files
from lmrl.compiling import use_disk_cache
from lmrl.errors import ConfigError
from lmrl.policies.base import Rollout, entropy_from_logits
from lmrl.policies.lean import (
    FORWARDS,
    BufferPool,
    LeanCache,
    LeanForward,
    StaticCache,
    unsupported_reason,
)
from lmrl.policies.loading import check_tokenizer, load_errors, model_source
from lmrl.policies.lora import LoraSpec, is_lora, merged_copy, set_dropout, wrap

# A prompt: a string, or a conversational prompt (a list of {"role", "content"} messages).
Prompt = str | list[dict]

# Loading and saving a small model is instant; transformers' own progress bars would only clutter
# the run's console output (lmrl draws its own).
hf_logging.disable_progress_bar()


@dataclass
class PromptBatch:
    """B tokenized prompts, left-padded."""

    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L) 1 on prompt tokens, 0 on left padding
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: Tensor) -> "PromptBatch":
        """The prompts at rows (B',), as `Tensor.__getitem__` would select them."""
        on = rows.to(self.input_ids.device)
        return PromptBatch(self.input_ids[on], self.attention_mask[on],
                           [self.texts[i] for i in rows.tolist()])

    def chunk(self, k: int) -> list["PromptBatch"]:
        """Split by prompt as `Tensor.chunk` does, so step.Batch.split can split a PromptBatch."""
        ids, masks = self.input_ids.chunk(k), self.attention_mask.chunk(k)
        starts = [0]
        for part in ids:
            starts.append(starts[-1] + len(part))
        return [PromptBatch(i, m, self.texts[a:b])
                for i, m, a, b in zip(ids, masks, starts[:-1], starts[1:], strict=True)]


@dataclass
class TextRollout(Rollout):
    """A Rollout plus what only a text policy knows."""

    logp: Tensor  # (B, G, T) log π(token) at the policy temperature, before top-k/top-p; 0 on pad
    truncated: Tensor  # (B, G) bool: no EOS within max_new_tokens
    texts: list[list[str]]  # B lists of G decoded responses, EOS and padding removed


def position_ids(attention_mask: Tensor) -> Tensor:
    """0 at each row's first real token, counting real tokens only. (N, S) -> (N, S)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def choose_tokens(logits: Tensor, temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None, noise_rows: tuple[int, slice] | None = None
                  ) -> Tensor:
    """One token per row. (N, V) -> (N,).

    Sampling is by inverse CDF with one uniform per row drawn from `generator` on its own device,
    so a CPU generator also drives a model on GPU. noise_rows (total, rows): these N rows are
    rows of a batch of `total`; draw that batch's uniforms and use theirs (data parallel).
    """
    u = uniforms(len(logits), temperature, generator, noise_rows, logits.device)
    return pick(logits, u, temperature, top_k, top_p)


def uniforms(N: int, temperature: float, generator: torch.Generator | None,
             noise_rows: tuple[int, slice] | None, device: torch.device) -> Tensor:
    """The (N, 1) uniforms one token's choice draws (none at temperature 0: zeros)."""
    if temperature == 0.0:
        return torch.zeros((N, 1), device=device)
    source = generator.device if generator is not None else device
    if noise_rows is None:
        return torch.rand((N, 1), generator=generator, device=source).to(device)
    total, rows = noise_rows
    return torch.rand((total, 1), generator=generator, device=source)[rows].to(device)


def pick(logits: Tensor, u: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """choose_tokens given the uniforms u (N, 1): pure, so it can run inside a compiled step."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is below top_p, so the top token is always kept.
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    # First index whose cdf exceeds u·total: never a zero-probability token.
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=cdf.shape[-1] - 1)
    return token.squeeze(-1) if order is None else order.gather(-1, token).squeeze(-1)


@dataclass(frozen=True)
class Choice:
    """How a rollout chooses its tokens: temperature (relative to the policy's), top-k, top-p,
    and what ends a row (EOS ids) or fills it after it ended (pad)."""

    temperature: float
    top_k: int
    top_p: float
    eos_ids: Tensor
    pad_id: int


def choose_and_track(logits: Tensor, u: Tensor, done: Tensor, eos_mask: Tensor, c: Choice
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One decoding step's token choice and stop bookkeeping. logits (N, V) already divided by
    the policy's temperature; eos_mask (V,) 0, or -inf at the EOS ids before min_new_tokens
    (masked for the choice only: logp stays π's own). -> token (pad where the row had ended),
    logp (0 there), alive (the row had not ended), done after this token."""
    token = pick(logits + eos_mask, u, c.temperature, c.top_k, c.top_p)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, token[:, None]).squeeze(-1)
    return (token.masked_fill(done, c.pad_id), logp.masked_fill(done, 0.0), ~done,
            done | torch.isin(token, c.eos_ids))


def decode_and_choose(lean: LeanForward, token: Tensor, position: Tensor, cache: StaticCache,
                      temperature: float, u: Tensor, done: Tensor, eos_mask: Tensor,
                      c: Choice) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Feed each row's last token, then choose the next one: what policy.compile compiles as
    one graph per rollout (the forward, the temperature, the choice, the bookkeeping)."""
    logits = lean.decode(token, position, cache)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return choose_and_track(logits, u, done, eos_mask, c)


class BufferLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in a buffer preallocated for the whole rollout:
    each new token is written in place instead of re-concatenating the cache (which copies
    O(T²) per rollout). `keys` / `values` are views of the filled part."""

    def __init__(self, layer: DynamicLayer, capacity: int) -> None:
        super().__init__()
        k, v = layer.keys, layer.values  # (N, H, S, D)
        self._k = k.new_empty(*k.shape[:2], capacity, k.shape[-1])
        self._v = v.new_empty(*v.shape[:2], capacity, v.shape[-1])
        self._k[:, :, :k.shape[2]] = k
        self._v[:, :, :v.shape[2]] = v
        self.length, self.device, self.is_initialized = k.shape[2], k.device, True
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs
               ) -> tuple[Tensor, Tensor]:
        end = self.length + key_states.shape[2]
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def preallocate(cache: "DynamicCache | LeanCache", capacity: int) -> None:
    """Room for `capacity` positions: LeanCache reserves its own buffers; a DynamicCache's plain
    layers become BufferLayers (no-op for caches of another kind, e.g. sliding-window layers,
    or older transformers)."""
    if isinstance(cache, LeanCache):
        cache.reserve(capacity)
        return
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized
                         for layer in layers):
        return
    cache.layers = [BufferLayer(layer, capacity) for layer in layers]


def batch_decode(tokenizer, rows: list[list[int]]) -> list[str]:
    """tokenizer.batch_decode(rows) with special tokens kept and no clean-up.

    A fast tokenizer that does not override `_decode` decodes with its Rust backend directly,
    which is what batch_decode ends up calling, without its conversion walk over the rows
    (measured in bench/README.md). Anything else goes through batch_decode."""
    owner = next(c for c in type(tokenizer).__mro__ if "_decode" in c.__dict__)
    if "backend_tokenizer" in owner.__dict__:
        return tokenizer.backend_tokenizer.decode_batch(rows, skip_special_tokens=False)
    return tokenizer.batch_decode(rows, skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)


@functools.cache
def compiled(fn):
    """torch.compile(fn), made once per function: its callers pass the policy (or forward) as
    an argument, so a deep copy (the reference policy) gets its own graph, never the
    original's (a compiled bound method kept on the object would be copied by reference).

    inplace_buffers off: with it, inductor (torch 2.13, CPU) writes a wrong gradient for the
    first layer's prompt values in the shared-prompt pass (tests/test_compile.py compares the
    compiled gradients with eager ones). The graphs go to lmrl's disk cache (compiling.py)."""
    use_disk_cache()
    return torch.compile(fn, options={"inplace_buffers": False})


class HFPolicy(nn.Module):
    """An AutoModelForCausalLM and its tokenizer, with sample(...) and logprobs(...).

    π is the model's distribution at `temperature`: sampling and log-probs use the same scaled
    logits, so the ratio and the KL compare the distribution that actually sampled (top-k and
    top-p truncate sampling only). The wrapped model always stays in eval mode: RL ratios assume
    a deterministic forward pass, and dropout would make π_old and π differ at equal weights.

    forward: which code computes the model's function. lmrl: `lean.LeanForward`, lmrl's own pass
    with fused projections over the model's parameters (Llama-family models; faster on a CPU,
    most at long prompts: bench/README.md);
    transformers: the model's own forward; auto: lmrl's on a CPU when the architecture is
    supported, else transformers' (on a GPU transformers' fused attention kernels win, and
    lmrl's would hold a second copy of the projection weights during each pass).

    compile: torch.compile lmrl's forward (`compiled`): decoding runs one graph per rollout on
    a StaticCache, each log-prob pass one graph forward and one backward, with the elementwise
    ops fused; the first step compiles (seconds to a minute: bench/README.md).

    sharded: the model is split over the ranks by FSDP (sharding.shard), which makes every
    forward a collective: sampling then decodes until every rank's responses are done.
    """

    sharded = False

    def __init__(self, model: nn.Module, tokenizer, max_new_tokens: int = 64, top_k: int = 0,
                 top_p: float = 1.0, temperature: float = 1.0, stop: Sequence[str] = (),
                 add_special_tokens: bool = True, autocast: torch.dtype | None = None,
                 forward: str = "auto", compile: bool = False, min_new_tokens: int = 0) -> None:
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.top_k, self.top_p = max_new_tokens, top_k, top_p
        self.min_new_tokens = min_new_tokens
        self.temperature, self.stop = temperature, tuple(stop)
        # Log-prob passes run each prompt once per group and share its KV cache (set False to
        # run every row's prompt, e.g. for models whose cache cannot be repeated).
        self.share_prompt = True
        self.add_special_tokens, self.autocast = add_special_tokens, autocast
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        if not eos:
            raise ValueError("neither the tokenizer nor the generation config names an EOS token")
        self.register_buffer("eos_ids", torch.tensor(sorted(eos), device=self.device),
                             persistent=False)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(eos)
        # transformers 5 renamed past_key_values to cache; accept either version. A peft model
        # passes keyword arguments through to the transformers model it wraps.
        inner = model.get_base_model() if is_lora(model) else model
        params = inspect.signature(inner.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.lean = self._lean_forward(forward)
        self._kv_pool = BufferPool()  # compiled decoding's key/value buffers, reused
        if compile and self.lean is None:
            raise ValueError("compile compiles lmrl's forward; this policy runs transformers' "
                             "(use forward=lmrl, or compile=False)")
        self.compile = compile

    def _lean_forward(self, forward: str) -> LeanForward | None:
        if forward not in FORWARDS:
            raise ValueError(f"forward must be one of {', '.join(FORWARDS)}, got {forward!r}")
        reason = unsupported_reason(self.model)
        if forward == "lmrl" and reason is not None:
            raise ValueError(f"forward=lmrl does not support this model: {reason}; "
                             "use forward=transformers")
        use = forward == "lmrl" or (forward == "auto" and reason is None
                                    and self.device.type == "cpu")
        return LeanForward(self.model) if use else None

    def train(self, mode: bool = True) -> "HFPolicy":
        super().train(mode)
        self.model.eval()  # dropout stays off (see the class docstring)
        return self

    @contextlib.contextmanager
    def adapters_disabled(self):
        """The base model: LoRA adapters off inside the block (the LoRA reference policy)."""
        with self.model.disable_adapter():
            yield

    @property
    def lora(self) -> bool:
        return is_lora(self.model)

    @classmethod
    def from_pretrained(cls, path_or_name: str, dtype: str = "auto", device: str = "auto",
                        trust_remote_code: bool = False, attn_implementation: str = "auto",
                        lora: LoraSpec | None = None, seed: int = 0, **kwargs) -> "HFPolicy":
        """Load a local directory or hub name; kwargs are HFPolicy's sampling settings.

        dtype auto: float32 weights, with bfloat16 autocast on a GPU (the optimizer keeps fp32
        master weights); autocast: the same on any device, a CPU included (CPUs with AVX512-BF16
        or AMX multiply in bfloat16 several times faster); bfloat16: bfloat16 weights;
        float32: no autocast anywhere. attn_implementation (sdpa, eager, ...; auto: the
        model's default) is passed to transformers. lora: wrap the model in LoRA adapters
        (policies/lora.py), initialised from `seed`.
        """
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        local_only = model_source(path_or_name)
        hub = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
        attn = {} if attn_implementation == "auto" else \
            {"attn_implementation": attn_implementation}
        with load_errors(path_or_name, "its tokenizer (tokenizer.json, tokenizer_config.json)"):
            tokenizer = AutoTokenizer.from_pretrained(path_or_name, **hub)
        with load_errors(path_or_name, "its config or weights (config.json, model.safetensors)"):
            model = AutoModelForCausalLM.from_pretrained(
                path_or_name, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32,
                **hub, **attn)
        check_tokenizer(tokenizer, path_or_name)
        if lora is not None:
            model = wrap(model, lora, seed)
        on_gpu = str(device).startswith("cuda")
        autocast = torch.bfloat16 if dtype == "autocast" or (dtype == "auto" and on_gpu) else None
        return cls(model.to(device), tokenizer, autocast=autocast, **kwargs)

    def prepare(self, examples: "list[dict] | list[Prompt] | PromptBatch") -> PromptBatch:
        """A text task's examples (dicts with a "prompt", or the prompts themselves),
        tokenized once for the step."""
        if isinstance(examples, PromptBatch):
            return self.encode(examples)
        return self.encode([ex["prompt"] if isinstance(ex, dict) else ex for ex in examples])

    def render(self, prompts: "list[Prompt]") -> tuple[list[str], bool]:
        """(prompt texts, whether they came from the chat template). A string is its own text;
        a conversational prompt (a list of {"role", "content"} messages, TRL's format) is
        rendered by the tokenizer's chat template with the assistant's turn opened."""
        if all(isinstance(p, str) for p in prompts):
            return list(prompts), False
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("the prompts are conversational (lists of role/content messages), "
                              "but the model's tokenizer has no chat template to render them; "
                              "use a chat model, build one with `lmrl init-model "
                              "--chat-template`, or give the prompts as strings")
        texts = [p if isinstance(p, str) else self.tokenizer.apply_chat_template(
            list(p), add_generation_prompt=True, tokenize=False) for p in prompts]
        return texts, True

    def lost_characters(self, chars: str | set[str]) -> str:
        """Those of `chars` (whitespace aside) that do not survive encode -> decode on their own:
        a tokenizer drops, changes or reads as its unk token a character it cannot encode.
        Whether a character survives does not depend on its neighbours, so a whole data set is
        checked by its distinct characters, in one batched call."""
        chars = sorted(c for c in set(chars) if not c.isspace())
        if not chars:
            return ""
        ids = self.tokenizer(chars, add_special_tokens=False)["input_ids"]
        back = batch_decode(self.tokenizer, ids)
        unk = self.tokenizer.unk_token_id
        return "".join(c for c, row, text in zip(chars, ids, back, strict=True)
                       if unicodedata.normalize("NFC", c) not in text or unk in row)

    @property
    def token_budget(self) -> int:
        return self.max_new_tokens

    def save_to(self, run_dir: Path, weights: dict[str, Tensor] | None = None) -> None:
        """run_dir/model/ (save_pretrained: weights and tokenizer), swapped in atomically; with
        LoRA also run_dir/adapter/ (the adapters alone, peft's format). weights: this policy's
        state dict, whole (a sharded model's, gathered: sharding.full); None: the model's own."""
        with files.atomic_dir(Path(run_dir) / "model") as tmp:
            self.save_pretrained(tmp, weights)
        if self.lora:
            with files.atomic_dir(Path(run_dir) / "adapter") as tmp:
                self.model.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)

    def save_pretrained(self, out_dir, weights: dict[str, Tensor] | None = None) -> None:
        """Model (safetensors) and tokenizer, loadable with from_pretrained; with LoRA the
        adapters merged into the weights, a plain transformers model. weights: as in save_to."""
        model = merged_copy(self.model) if self.lora else self.model
        # The policy's keys are the model's under "model.".
        tensors = None if weights is None else {k.removeprefix("model."): v
                                                 for k, v in weights.items()}
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=tensors)
        self.tokenizer.save_pretrained(out_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: "list[Prompt] | PromptBatch") -> PromptBatch:
        """Render (conversational prompts), tokenize and left-pad (a PromptBatch passes through,
        moved to the model's device)."""
        if isinstance(prompts, PromptBatch):
            return PromptBatch(prompts.input_ids.to(self.device),
                               prompts.attention_mask.to(self.device), prompts.texts)
        texts, chat = self.render(prompts)
        # A chat template writes the special tokens (BOS, turn markers) itself, as in TRL.
        special = self.add_special_tokens and not chat
        ids = self.tokenizer(texts, add_special_tokens=special)["input_ids"]
        if any(len(row) == 0 for row in ids):
            raise ValueError("a prompt tokenizes to no tokens; there is nothing to condition on")
        L = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), L), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), L), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, L - len(row):] = torch.tensor(row)
            attention_mask[i, L - len(row):] = 1
        return PromptBatch(input_ids.to(self.device), attention_mask.to(self.device), texts)

    def _new_cache(self) -> "LeanCache | DynamicCache":
        return LeanCache() if self.lean is not None else DynamicCache(config=self.model.config)

    def _forward(self, input_ids: Tensor, attention_mask: Tensor, cache, logits_to_keep: int,
                 rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Logits of the last `logits_to_keep` columns; position ids are those of input_ids.
        rope: lmrl's forward's `rope_table` (None: computed in the pass)."""
        positions = position_ids(attention_mask)[:, -input_ids.shape[1]:]
        with self._autocast():
            if self.lean is not None:
                logits = self.lean(input_ids, attention_mask, positions, cache, logits_to_keep,
                                   rope)
            else:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=positions, use_cache=cache is not None,
                                    logits_to_keep=logits_to_keep,
                                    **{self._cache_kwarg: cache}).logits
        return self._scaled(logits)

    def _autocast(self) -> "torch.autocast | contextlib.nullcontext":
        """bf16 autocast when set; else no context at all: even a disabled autocast inside a
        compiled pass makes AOTAutograd bypass its disk cache (torch 2.13), which costs a
        warm start ~8 s of re-tracing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _scaled(self, logits: Tensor) -> Tensor:
        """At least float32 (bf16 logits would round log-probs; a float64 model stays float64),
        divided by the temperature."""
        return logits.to(torch.promote_types(logits.dtype, torch.float32)) / self.temperature

    @torch.no_grad()
    def sample(self, prompts: "list[str] | PromptBatch", num_samples: int,
               generator: torch.Generator | None = None, temperature: float | None = None,
               max_new_tokens: int | None = None, top_k: int | None = None,
               top_p: float | None = None, rows: slice | None = None) -> TextRollout:
        """G = num_samples responses per prompt. -> (B, G, T).

        rows: sample only prompts[rows] (-> (B', G, T)), with the random draws that a call on
        all B prompts gives them (data parallel, distributed.py): each token draws all B·G
        uniforms and keeps these rows' ones, and afterwards the ranks agree on the longest
        response and draw the uniforms of the tokens this rank did not need, so that the
        generator ends where one process's would (it draws the next step's prompts). Every rank
        must then call sample alike.

        temperature None samples π (the policy's own temperature), 0 is greedy, any other value
        samples at that temperature. The prompt is encoded once per prompt and its KV cache
        repeated G times; then one forward pass per new token over all N rows, until every row
        has emitted EOS, completed a stop string, or reached max_new_tokens.
        """
        batch = self.encode(prompts)  # all B: the padded width is one process's
        total = len(batch) * num_samples
        if rows is not None:
            batch = batch.select(torch.arange(rows.start, rows.stop))
            noise_rows = (total, slice(rows.start * num_samples, rows.stop * num_samples))
        B, G = len(batch), num_samples
        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        top_k = self.top_k if top_k is None else top_k
        top_p = self.top_p if top_p is None else top_p
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new}")
        # The logits are already divided by the policy's temperature.
        scale = 1.0 if temperature is None else temperature / self.temperature
        cache = self._new_cache()
        logits = self._forward(batch.input_ids, batch.attention_mask, cache, 1)[:, -1]  # (B, V)
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, dim=0)  # (N, V)
        choice = Choice(scale, top_k, top_p, self.eos_ids, self.pad_id)
        any_token = torch.zeros(logits.shape[-1], device=self.device)
        no_eos = any_token.index_fill(0, self.eos_ids, float("-inf"))
        step = self._decoder(cache, batch.attention_mask.repeat_interleave(G, dim=0), max_new,
                             choice)
        done = torch.zeros(B * G, dtype=torch.bool, device=self.device)
        tokens, logps, alive = [], [], []
        for t in range(max_new):
            u = uniforms(B * G, scale, generator, None if rows is None else noise_rows,
                         self.device)
            eos_mask = no_eos if t < self.min_new_tokens else any_token
            if t == 0:  # from the prompts' logits
                token, logp, live, done = choose_and_track(logits, u, done, eos_mask, choice)
            else:
                token, logp, live, done = step(tokens[-1], t - 1, u, done, eos_mask)
            tokens.append(token)
            logps.append(logp)
            alive.append(live)
            if self.stop:
                done = done | self._completes_stop(tokens, done)
            finished = bool(done.all())
            if self.sharded:  # one rank stopping early would leave the others' forwards waiting
                finished = not distributed.any_rank(not finished)
            if t == max_new - 1 or finished:
                break
        if rows is not None and scale != 0.0:
            longest = int(distributed.all_reduce([len(tokens)], "max")[0])
            for _ in range(longest - len(tokens)):  # as choose_tokens draws: one call per token
                torch.rand((total, 1), generator=generator,
                           device=generator.device if generator is not None else self.device)
        responses = torch.stack(tokens, dim=1).reshape(B, G, -1)  # (B, G, T)
        response_mask = torch.stack(alive, dim=1).float().reshape(B, G, -1)
        return TextRollout(
            responses=responses, response_mask=response_mask,
            logp=torch.stack(logps, dim=1).reshape(B, G, -1),
            truncated=~done.reshape(B, G),
            texts=self.decode(responses, response_mask),
        )

    def _decoder(self, cache, prompt_mask: Tensor, max_new: int, choice: Choice):
        """-> step(token (N,), t, u, done, eos_mask): append each row's t-th token, then
        `choose_and_track` the next one from the new logits.

        Compiled: `decode_and_choose` on a StaticCache, one graph for the whole rollout's
        decoding steps, token choice included. Eager: the model's forward on its cache,
        preallocated for the rollout, then the choice.
        """
        if self.compile:
            first_position = prompt_mask.sum(-1)  # real tokens before the first new one
            rope = self.lean.rope_table(int(first_position.max()) + max_new)
            static = StaticCache(cache, prompt_mask, max_new, rope, self._kv_pool)
            fused = compiled(decode_and_choose)

            def step(token: Tensor, t: int, u: Tensor, done: Tensor, eos_mask: Tensor):
                static.advance(t)
                with self._autocast():
                    return fused(self.lean, token, first_position + t, static,
                                 self.temperature, u, done, eos_mask, choice)
            return step
        preallocate(cache, prompt_mask.shape[1] + max_new)
        mask = prompt_mask  # (N, L + t): grows by one column per token

        def step(token: Tensor, t: int, u: Tensor, done: Tensor, eos_mask: Tensor):
            nonlocal mask
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = self._forward(token[:, None], mask, cache, 1)[:, -1]
            return choose_and_track(logits, u, done, eos_mask, choice)
        return step

    def _completes_stop(self, tokens: list[Tensor], done: Tensor) -> Tensor:
        """Rows still running whose text now contains a stop string. (N,) bool."""
        running = (~done).nonzero().squeeze(-1)
        hit = torch.zeros_like(done)
        if len(running) == 0:
            return hit
        rows = torch.stack(tokens, dim=1)[running].tolist()
        # Special tokens are kept, as in `decode`, so "<|im_end|>" can be a stop string.
        texts = batch_decode(self.tokenizer, rows)
        hits = [i for i, text in zip(running.tolist(), texts, strict=True)
                if any(s in text for s in self.stop)]
        hit[hits] = True
        return hit

    def decode(self, responses: Tensor, response_mask: Tensor) -> list[list[str]]:
        """Text of each response without its EOS and padding. (B, G, T) -> B lists of G."""
        keep = response_mask.bool() & ~torch.isin(responses, self.eos_ids)
        # One tolist per tensor, then plain Python: a boolean index per row is one tensor op each.
        rows = [[token for token, kept in zip(r, k, strict=True) if kept] for r, k in
                zip(responses.flatten(0, 1).tolist(), keep.flatten(0, 1).tolist(), strict=True)]
        texts = batch_decode(self.tokenizer, rows)
        G = responses.shape[1]
        return [texts[i:i + G] for i in range(0, len(texts), G)]

    def logprobs(self, prompts: "list[str] | PromptBatch", responses: Tensor,
                 response_mask: Tensor, with_entropy: bool = False
                 ) -> tuple[Tensor, Tensor | None]:
        """log π(token | prompt, tokens before it), one forward pass over prompt + response.

        Shapes: B prompts, responses and response_mask (B, G, T) -> (B, G, T) [, entropy].
        Only the logits that predict response tokens are computed, never the prompt's.
        """
        batch = self.encode(prompts)
        args = (batch.input_ids, batch.attention_mask, responses.to(self.device),
                response_mask.to(self.device), with_entropy)
        if self.lora:
            return self._lora_logprobs(*args)
        if not self.compile:
            return self._logprobs(*args)
        rope = self.lean.rope_table(batch.input_ids.shape[1] + responses.shape[-1])
        return compiled(HFPolicy._logprobs)(self, *args, rope)

    def _lora_logprobs(self, *args) -> tuple[Tensor, Tensor | None]:
        """`_logprobs` with the adapters' dropout on in training passes that carry gradients
        only: sampling, the reference and evaluation stay deterministic."""
        dropout = self.training and torch.is_grad_enabled()
        set_dropout(self.model, dropout)
        try:
            return self._logprobs(*args)
        finally:
            if dropout:
                set_dropout(self.model, False)

    def _logprobs(self, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor,
                  response_mask: Tensor, with_entropy: bool,
                  rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        """`logprobs` on tensors (what `compile` compiles)."""
        B, G, T = responses.shape
        responses = responses.reshape(B * G, T)
        mask = response_mask.reshape(B * G, T)
        if self.share_prompt and G > 1:
            logits = self._logits_shared_prompt(prompt_ids, prompt_mask, responses, mask, G,
                                                rope)
        else:
            logits = self._logits_full(prompt_ids, prompt_mask, responses, mask, G, rope)
        logp = logits.gather(-1, responses[..., None]).squeeze(-1) - logits.logsumexp(dim=-1)
        logp = (logp * mask).reshape(B, G, T)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = (entropy_from_logits(logits) * mask).reshape(B, G, T)
        return logp, entropy

    def _logits_full(self, prompt_ids: Tensor, prompt_mask: Tensor, responses: Tensor,
                     mask: Tensor, G: int, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """One pass over prompt + response for each of the N rows. -> (N, T, V)."""
        T = responses.shape[1]
        input_ids = torch.cat([prompt_ids.repeat_interleave(G, dim=0), responses], dim=1)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(G, dim=0), mask.long()], dim=1)
        # Column j predicts token j+1: the response's T tokens are predicted by the T columns
        # ending one before the last.
        return self._forward(input_ids, attention_mask, None, T + 1, rope)[:, :-1]

    def _logits_shared_prompt(self, prompt_ids: Tensor, prompt_mask: Tensor,
                              responses: Tensor, mask: Tensor, G: int,
                              rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The prompt once per group, its KV cache shared by the group's G responses.

        Same logits as `_logits_full` (tested), with B instead of N = B·G rows through the
        prompt's columns; gradients flow through the shared cache into the prompt pass, where
        autograd sums the G rows' contributions, as separate passes would. -> (N, T, V).
        """
        cache = self._new_cache()
        first = self._forward(prompt_ids, prompt_mask, cache, 1, rope)  # (B, 1, V)
        cache.batch_repeat_interleave(G)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(G, dim=0), mask.long()],
                                   dim=1)  # (N, L + T)
        T = responses.shape[1]
        first = first.repeat_interleave(G, dim=0)  # (N, 1, V): predicts response token 0
        if T == 1:
            return first
        # Response column j predicts token j+1; the last column predicts nothing we score.
        rest = self._forward(responses[:, :-1], attention_mask[:, :-1], cache, T - 1, rope)
        return torch.cat([first, rest], dim=1)
