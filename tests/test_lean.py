"""lmrl's own forward (policies/lean.py) computes transformers' function: logits, cached decoding,
gradients and samples agree with the model's own forward on tiny random models of every
supported architecture, with left padding, grouped-query attention and qwen3's q/k norms."""

import copy

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from test_hf_policy import EOS, PAD, VOCAB, tiny_tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from lmrl.config import Config, ConfigError  # noqa: E402
from lmrl.policies.hf import HFPolicy, position_ids  # noqa: E402
from lmrl.policies.lean import LeanCache, LeanForward, unsupported_reason  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = {"vocab_size": len(VOCAB), "pad_token_id": PAD, "eos_token_id": EOS,
          "bos_token_id": None, "initializer_range": 0.3, "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
          "max_position_embeddings": 64}
ARCHS = {
    # qwen2: q/k/v biases; llama: grouped-query attention (4 query heads share 2 k/v heads)
    # and rope scaling; qwen3: per-head q/k RMSNorm and an explicit head_dim.
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=4, **COMMON)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(
        num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 2.0}, **COMMON)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(num_key_value_heads=2, head_dim=16,
                                                  **COMMON)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(num_key_value_heads=2,
                                                        sliding_window=None, **COMMON)),
}


def model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = ARCHS[arch]().eval()
    with torch.no_grad():  # random biases, so that a dropped bias shows
        for p in m.parameters():
            if p.ndim == 1 and not torch.all(p == 1):
                p.normal_(0, 0.3)
    return m


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 2, 7 and 4 tokens, left-padded to 7."""
    lengths, L = [2, 7, 4], 7
    ids = torch.full((3, L), PAD)
    mask = torch.zeros((3, L), dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for i, n in enumerate(lengths):
        ids[i, L - n:] = torch.randint(2, len(VOCAB), (n,), generator=g)
        mask[i, L - n:] = 1
    return ids, mask


def reference_logits(m, ids, mask) -> torch.Tensor:
    return m(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_full_pass_matches_transformers_on_real_tokens(arch):
    m = model(arch)
    assert unsupported_reason(m) is None
    ids, mask = left_padded()
    want = reference_logits(m, ids, mask)
    got = LeanForward(m)(ids, mask, position_ids(mask), None, ids.shape[1])
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    assert torch.isfinite(got).all()  # padded queries see themselves: no NaN anywhere


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_cached_decoding_matches_one_full_pass(arch):
    """Prompt prefill, cache repeated per sample, then one token at a time (buffered cache)."""
    m, G = model(arch), 2
    ids, mask = left_padded()
    lean = LeanForward(m)
    new = torch.randint(2, len(VOCAB), (3 * G, 3), generator=torch.Generator().manual_seed(2))
    full_ids = torch.cat([ids.repeat_interleave(G, 0), new], dim=1)
    full_mask = torch.cat([mask.repeat_interleave(G, 0), torch.ones_like(new)], dim=1)
    want = reference_logits(m, full_ids, full_mask)[:, -4:]  # last prompt column + 3 new
    with torch.no_grad():
        cache = LeanCache()
        steps = [lean(ids, mask, position_ids(mask), cache, 1).repeat_interleave(G, 0)]
        cache.batch_repeat_interleave(G)
        cache.reserve(ids.shape[1] + 3)
        for t in range(3):
            cols = ids.shape[1] + t + 1
            pos = position_ids(full_mask[:, :cols])[:, -1:]
            steps.append(lean(new[:, t:t + 1], full_mask[:, :cols], pos, cache, 1))
    assert torch.allclose(torch.cat(steps, dim=1), want, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_gradients_match_transformers(arch):
    m = model(arch)
    ids, mask = left_padded()
    weights = torch.randn(3, ids.shape[1], len(VOCAB), generator=torch.Generator().manual_seed(3))
    weights = weights * mask[..., None]  # a loss on the real positions only, as GRPO's is
    grads = []
    for logits_fn in (lambda: reference_logits(m, ids, mask),
                      lambda: LeanForward(m)(ids, mask, position_ids(mask), None, ids.shape[1])):
        m.zero_grad()
        (logits_fn().log_softmax(-1) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name, want in grads[0].items():
        assert torch.allclose(grads[1][name], want, atol=1e-4, rtol=1e-4), name


def save(tmp_path, m) -> str:
    m.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_policy_samples_and_scores_the_same_with_either_forward(tmp_path, arch):
    path = save(tmp_path, model(arch))
    ours = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="lmrl")
    theirs = HFPolicy.from_pretrained(path, max_new_tokens=6, forward="transformers")
    assert ours.lean is not None and theirs.lean is None
    prompts = ["1 2", "3 4 5 6 7 8 9", "5 5"]
    a = ours.sample(prompts, 4, torch.Generator().manual_seed(0))
    b = theirs.sample(prompts, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a.responses, b.responses)
    assert torch.allclose(a.logp, b.logp, atol=1e-5)
    for share in (True, False):
        ours.share_prompt = theirs.share_prompt = share
        lp_ours, _ = ours.logprobs(prompts, a.responses, a.response_mask)
        lp_theirs, _ = theirs.logprobs(prompts, a.responses, a.response_mask)
        assert torch.allclose(lp_ours, lp_theirs, atol=1e-5)
        assert torch.allclose(lp_ours, a.logp, atol=1e-5)  # μ = 1: sampling's log-probs


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_shared_prompt_pass_matches_transformers_in_float64(tmp_path, arch):
    """lmrl's grouped prefix attention (a prompt's keys read once for its G samples) against
    transformers' forward on a G-times repeated cache: the same log-probs and gradients up to
    float64 rounding, with grouped-query attention (llama) and q/k norms (qwen3)."""
    path = save(tmp_path, model(arch))
    prompts = ["1 2", "3 4 5 6 7 8 9", "5 5"]
    results = []
    for forward in ("lmrl", "transformers"):
        policy = HFPolicy.from_pretrained(path, max_new_tokens=6, forward=forward)
        policy.model.double()
        if not results:
            rollout = policy.sample(prompts, 4, torch.Generator().manual_seed(0))
        logp, _ = policy.logprobs(prompts, rollout.responses, rollout.response_mask)
        assert logp.dtype == torch.float64
        (logp * torch.linspace(-1, 1, logp.numel(), dtype=torch.float64).reshape(logp.shape)
         ).sum().backward()
        results.append((logp.detach(), [p.grad for p in policy.parameters()]))
    (lp_a, g_a), (lp_b, g_b) = results
    assert torch.allclose(lp_a, lp_b, atol=1e-12, rtol=0)
    for a, b in zip(g_a, g_b, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), (a - b).abs().max()


def test_auto_falls_back_for_unsupported_models_and_lmrl_refuses_them(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32,
                                      vocab_size=len(VOCAB), eos_token_id=EOS, pad_token_id=PAD))
    path = save(tmp_path, gpt2)
    assert "gpt2" in unsupported_reason(gpt2)
    assert HFPolicy.from_pretrained(path, forward="auto").lean is None
    with pytest.raises(ValueError, match="forward=lmrl does not support"):
        HFPolicy.from_pretrained(path, forward="lmrl")
    sliding = MistralForCausalLM(MistralConfig(sliding_window=4, **COMMON))
    assert "sliding" in unsupported_reason(sliding)


def test_deepcopy_points_the_copy_at_its_own_model(tmp_path):
    """The reference policy is a deep copy: its forward must read the copy's weights."""
    policy = HFPolicy.from_pretrained(save(tmp_path, model("qwen2")), forward="lmrl")
    ref = copy.deepcopy(policy)
    assert ref.lean.model is ref.model and policy.lean.model is policy.model
    assert sum(1 for _ in ref.parameters()) == sum(1 for _ in policy.model.parameters())


def test_forward_is_validated():
    with pytest.raises(ConfigError, match="forward"):
        Config().replace(policy={"model": "some/model", "forward": "fast"})
    with pytest.raises(ConfigError, match="forward"):
        Config().replace(policy={"forward": "lmrl"})  # the toy model has no such choice


@pytest.mark.parametrize("variant", ["small", "fused"])
@pytest.mark.parametrize("with_prefix", [False, True])
def test_small_and_fused_attention_equal_the_matmul_one_in_value_and_gradient(with_prefix,
                                                                              variant):
    """attend(small=True), the broadcast form compiled code uses for tiny tiles, and
    attend(fused=True), torch's fused attention for long ones, are the same function as the
    matmul form, masked columns and the shared prefix included (float64)."""
    from lmrl.policies.lean import attend, attention_bias

    g = torch.Generator().manual_seed(0)
    B, G, h, S, L, d = 3, 2, 2, 4, 5, 8

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    q, k, v = rand(B * G, h, S, d), rand(B * G, h, S, d), rand(B * G, h, S, d)
    prefix = (rand(B, h, L, d), rand(B, h, L, d)) if with_prefix else None
    mask = torch.ones(B * G, (L if with_prefix else 0) + S, dtype=torch.long)
    mask[0, :2] = 0  # padding: masked key columns for row 0
    bias = attention_bias(mask, S, torch.float64)
    inputs = [q, k, v, *(prefix or ())]
    outs = []
    for other in (False, True):
        out = attend(q, k, v, bias, prefix, small=other and variant == "small",
                     fused=other and variant == "fused")
        outs.append((out, torch.autograd.grad(out.square().sum(), inputs)))
    (ref, ref_grads), (got, got_grads) = outs
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_long_tiles_take_the_fused_kernel_in_float32_with_the_same_values_and_gradients():
    """At FUSED_TILE and beyond, the forward uses torch's fused attention (the CPU flash
    kernel in float32): same values and gradients as the matmul form, within float32 rounding."""
    from lmrl.policies.lean import FUSED_TILE, attend, attention_bias

    g = torch.Generator().manual_seed(1)
    B, G, h, S, L, d = 2, 3, 2, 60, 20, 16
    assert S * (S + L) >= FUSED_TILE

    def rand(*shape):
        return torch.randn(*shape, generator=g, requires_grad=True)

    q, k, v = rand(B * G, h, S, d), rand(B * G, h, S, d), rand(B * G, h, S, d)
    prefix = rand(B, h, L, d), rand(B, h, L, d)
    mask = torch.ones(B * G, L + S, dtype=torch.long)
    mask[1, :7] = 0
    bias = attention_bias(mask, S, torch.float32)
    outs = []
    for fused in (False, True):
        out = attend(q, k, v, bias, prefix, fused=fused)
        outs.append((out, torch.autograd.grad(out.square().sum(), [q, k, v, *prefix])))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
