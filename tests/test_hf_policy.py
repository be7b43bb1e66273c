"""Tiers 4 and 5 for HFPolicy: parity with a manual log_softmax + gather, invariance to left
padding, masks, greedy decoding and a GRPO step, on tiny models built and saved locally."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from lmrl.config import Config  # noqa: E402
from lmrl.policies.hf import HFPolicy, batch_decode, choose_tokens  # noqa: E402
from lmrl.state import build_state  # noqa: E402
from lmrl.step import grpo_step  # noqa: E402

VOCAB = ["<pad>", "<eos>"] + [str(d) for d in range(10)] + [" ", "+", "="]
PAD, EOS = 0, 1
SHORT, LONG = "1 2", "3 4 5 6 7 8 9 0 1"
PROMPTS = [SHORT, LONG, "5 5"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, spaces included; decoding concatenates them back."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_model(arch: str) -> torch.nn.Module:
    """A large init makes the next-token distribution peaked, so that a position or padding bug
    moves it measurably. GPT-2 has absolute position embeddings: wrong position ids change its
    output, whereas RoPE (Llama) is blind to a constant shift of all positions."""
    torch.manual_seed(0)
    common = {"vocab_size": len(VOCAB), "pad_token_id": PAD, "eos_token_id": EOS,
              "bos_token_id": None, "initializer_range": 0.3}
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64,
                                            max_position_embeddings=64, **common))
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common))


pytestmark = pytest.mark.usefixtures("one_thread")


# Llama runs through lmrl's own forward (the CPU default) and through transformers'; GPT-2 only
# through transformers' (lmrl's does not support it).
@pytest.fixture(scope="module", params=[("llama", "lmrl"), ("llama", "transformers"),
                                        ("gpt2", "auto")], ids=lambda p: "-".join(p))
def policy(request, tmp_path_factory) -> HFPolicy:
    arch, forward = request.param
    path = tmp_path_factory.mktemp(arch)
    tiny_model(arch).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return HFPolicy.from_pretrained(str(path), max_new_tokens=8, forward=forward)


def manual_logprobs(policy: HFPolicy, prompt: str, response: list[int]) -> torch.Tensor:
    """log_softmax(model(prompt + response).logits).gather(response), one unpadded sequence."""
    ids = policy.tokenizer(prompt)["input_ids"]
    full = torch.tensor([ids + response])
    with torch.no_grad():
        logits = policy.model(full).logits[0, len(ids) - 1:-1]
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def greedy_alone(policy: HFPolicy, prompt: str, max_new: int) -> list[int]:
    """Argmax continuation without cache or padding: one full forward pass per token."""
    ids = policy.tokenizer(prompt)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        while len(out) < max_new and (not out or out[-1] != EOS):
            out.append(int(policy.model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def test_tokenizer_and_model_load_from_a_local_directory(policy):
    text = "3 1 2 0 + 9 = 12"
    ids = policy.tokenizer(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character: no space was dropped or merged
    assert policy.tokenizer.decode(ids) == text
    assert policy.pad_id == PAD and policy.eos_ids.tolist() == [EOS]
    assert not policy.model.training


def test_logprobs_match_manual_log_softmax_gather(policy):
    g = torch.Generator().manual_seed(0)
    rollout = policy.sample(PROMPTS, 4, generator=g)
    logp, entropy = policy.logprobs(PROMPTS, rollout.responses, rollout.response_mask,
                                    with_entropy=True)
    assert logp.shape == entropy.shape == rollout.responses.shape
    for b, prompt in enumerate(PROMPTS):
        for s in range(4):
            n = int(rollout.response_mask[b, s].sum())
            expected = manual_logprobs(policy, prompt, rollout.responses[b, s, :n].tolist())
            torch.testing.assert_close(logp[b, s, :n], expected, atol=1e-5, rtol=0)
            assert (logp[b, s, n:] == 0).all()


def test_logprobs_unchanged_by_extra_left_padding(policy):
    """SHORT batched with LONG is left-padded by 7 columns; its log-probs must not move."""
    g = torch.Generator().manual_seed(1)
    rollout = policy.sample([SHORT], 6, generator=g)
    alone, h_alone = policy.logprobs([SHORT], rollout.responses, rollout.response_mask, True)
    other = policy.sample([LONG], 6, generator=g)
    T = max(rollout.responses.shape[-1], other.responses.shape[-1])

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, T - x.shape[-1]), value=value)

    responses = torch.cat([pad(other.responses, PAD), pad(rollout.responses, PAD)])
    mask = torch.cat([pad(other.response_mask, 0.0), pad(rollout.response_mask, 0.0)])
    batched, h_batched = policy.logprobs([LONG, SHORT], responses, mask, True)
    n = rollout.responses.shape[-1]
    torch.testing.assert_close(batched[1, :, :n], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(h_batched[1, :, :n], h_alone[0], atol=1e-5, rtol=0)


def test_greedy_is_the_argmax_continuation_whatever_the_batch_mates(policy):
    alone = policy.sample([SHORT], 3, temperature=0.0)
    batched = policy.sample(PROMPTS, 3, temperature=0.0)
    for b, prompt in enumerate(PROMPTS):
        expected = greedy_alone(policy, prompt, 8)
        for s in range(3):  # every sample of a greedy group is the same
            n = int(batched.response_mask[b, s].sum())
            assert batched.responses[b, s, :n].tolist() == expected
    n = alone.responses.shape[-1]
    assert torch.equal(batched.responses[0, :, :n], alone.responses[0])
    assert (batched.responses[0, :, n:] == PAD).all()


def test_sampled_logp_equal_logprobs_of_the_prompt_alone(policy):
    """The tokens SHORT drew next to LONG, scored for SHORT alone without padding: the sampling
    distribution of each step was the unpadded one."""
    rollout = policy.sample([LONG, SHORT], 16, generator=torch.Generator().manual_seed(2))
    alone, _ = policy.logprobs([SHORT], rollout.responses[1:], rollout.response_mask[1:])
    torch.testing.assert_close(rollout.logp[1:], alone, atol=1e-5, rtol=0)
    whole, _ = policy.logprobs([LONG, SHORT], rollout.responses, rollout.response_mask)
    torch.testing.assert_close(rollout.logp, whole, atol=1e-5, rtol=0)


def test_sampling_frequencies_do_not_depend_on_batch_mates(policy):
    G = 3000
    alone = policy.sample([SHORT], G, generator=torch.Generator().manual_seed(3),
                          max_new_tokens=1)
    batched = policy.sample([LONG, SHORT, "7"], G, generator=torch.Generator().manual_seed(4),
                            max_new_tokens=1)
    with torch.no_grad():
        ids = torch.tensor([policy.tokenizer(SHORT)["input_ids"]])
        exact = torch.softmax(policy.model(ids).logits[0, -1], dim=-1)
    V = len(VOCAB)
    for r in (alone.responses[0, :, 0], batched.responses[1, :, 0]):
        freq = torch.bincount(r, minlength=V).float() / G
        assert 0.5 * (freq - exact).abs().sum() < 0.04  # ~0.015 expected from sampling noise


def test_response_mask_covers_up_to_and_including_eos(policy):
    rollout = policy.sample(PROMPTS * 4, 8, generator=torch.Generator().manual_seed(5),
                            temperature=2.0)
    responses = rollout.responses.flatten(0, 1)
    mask = rollout.response_mask.flatten(0, 1)
    truncated = rollout.truncated.flatten()
    assert truncated.any() and (~truncated).any()  # both cases are exercised
    for row, m, cut in zip(responses, mask, truncated, strict=True):
        eos = (row == EOS).nonzero()
        if cut:
            assert len(eos) == 0 and (m == 1).all() and len(row) == 8
        else:
            first = int(eos[0])
            assert (m[:first + 1] == 1).all() and (m[first + 1:] == 0).all()
            assert (row[first + 1:] == PAD).all()
    texts = [t for group in rollout.texts for t in group]
    for row, m, text in zip(responses, mask, texts, strict=True):
        kept = row[(m == 1) & (row != EOS)].tolist()
        assert text == policy.tokenizer.decode(kept)


def test_min_new_tokens_keeps_eos_out_of_the_first_tokens_and_logp_the_policys(policy):
    """EOS is never chosen before min_new_tokens (at temperature 2 it would be, often: see the
    test above), and the stored logp is π's own, what logprobs recomputes."""
    policy.min_new_tokens = 5
    try:
        rollout = policy.sample(PROMPTS * 4, 8, generator=torch.Generator().manual_seed(5),
                                temperature=2.0)
    finally:
        policy.min_new_tokens = 0
    assert not (rollout.responses[..., :5] == EOS).any()
    assert (rollout.response_mask[..., :5] == 1).all()
    assert (rollout.responses[..., 5:] == EOS).any()  # allowed again after
    whole, _ = policy.logprobs(PROMPTS * 4, rollout.responses, rollout.response_mask)
    torch.testing.assert_close(rollout.logp, whole, atol=1e-5, rtol=0)


def test_top_k_and_top_p_keep_only_the_head_of_the_distribution():
    logits = torch.tensor([[0.0, 3.0, 2.0, -1.0]]).expand(500, 4)
    g = torch.Generator().manual_seed(0)
    assert (choose_tokens(logits, 1.0, 1, 1.0, g) == 1).all()
    assert (choose_tokens(logits, 1.0, 0, 0.01, g) == 1).all()
    assert set(choose_tokens(logits, 1.0, 2, 1.0, g).tolist()) == {1, 2}
    # p(1) ≈ 0.705 and p(2) ≈ 0.259: top_p = 0.8 keeps exactly those two.
    assert set(choose_tokens(logits, 1.0, 0, 0.8, g).tolist()) == {1, 2}
    assert len(set(choose_tokens(logits, 1.0, 0, 1.0, g).tolist())) == 4
    assert (choose_tokens(logits, 0.0, 0, 1.0, g) == 1).all()


def test_prompt_batch_splits_like_tensor_chunk(policy):
    batch = policy.encode(["1", "2 3", "4 5 6", "7", "8 9"])
    parts = batch.chunk(2)
    assert [p.texts for p in parts] == [["1", "2 3", "4 5 6"], ["7", "8 9"]]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), batch.input_ids)
    assert batch.attention_mask.sum(-1).tolist() == [1, 3, 5, 1, 3]
    assert (batch.input_ids[batch.attention_mask == 0] == PAD).all()


class DigitSumTask:
    """Reward: the sum of the digits in the response, which varies within a group from the start.

    prompts_as="text" gives list[str] prompts; "batch" gives the policy's PromptBatch, which
    splits into micro-batches like a tensor.
    """

    def __init__(self, policy: HFPolicy, prompts_as: str) -> None:
        self.policy, self.prompts_as = policy, prompts_as

    def sample_prompts(self, B: int, generator: torch.Generator):
        digits = torch.randint(0, 10, (B, 3), generator=generator)
        texts = [" ".join(map(str, row.tolist())) for row in digits]
        return texts if self.prompts_as == "text" else self.policy.encode(texts)

    correctness = None  # no notion of a right answer: train/exact_match is not logged

    def score_rollout(self, prompts, rollout) -> tuple[torch.Tensor, dict]:
        """(B, G) digit sums of the decoded responses, and the one-entry reward table."""
        decoded = self.policy.decode(rollout.responses, rollout.response_mask)
        assert decoded == rollout.texts
        sums = torch.tensor([[float(sum(int(c) for c in r if c.isdigit())) for r in group]
                             for group in decoded])
        return sums, {"digit_sum": sums}


def run_step(prompts_as: str) -> dict[str, float]:
    """One step with KL (so a reference copy of the HFPolicy) and 2 micro-batches."""
    cfg = Config().replace(train={"B": 4, "G": 4, "grad_accum": 2, "lr": 1e-2},
                           algo={"kl_weight": 0.1})
    policy = HFPolicy(tiny_model("llama"), tiny_tokenizer(), max_new_tokens=4)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    metrics = grpo_step(build_state(cfg, policy), DigitSumTask(policy, prompts_as), cfg)
    assert metrics["train/flat_group_frac"] < 1.0  # some delta is nonzero, so a gradient
    assert any(not torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
    return metrics


def test_grpo_step_runs_with_an_hf_policy_on_prompt_batches():
    metrics = run_step("batch")
    assert metrics["loss/ratio_min"] == 1.0 == metrics["loss/ratio_max"]
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_grpo_step_runs_with_an_hf_policy_on_text_prompts():
    run_step("text")


def test_shared_prompt_pass_equals_full_pass_in_value_and_gradient(policy):
    """The log-prob pass runs each prompt once per group; it must match running every row."""
    g = torch.Generator().manual_seed(5)
    rollout = policy.sample(PROMPTS, 4, generator=g)
    results = []
    for share in (True, False):
        policy.share_prompt = share
        policy.zero_grad(set_to_none=True)
        logp, entropy = policy.logprobs(PROMPTS, rollout.responses, rollout.response_mask, True)
        (logp * torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)).sum().backward()
        results.append((logp.detach(), entropy, [p.grad.clone() for p in policy.parameters()]))
    policy.share_prompt = True
    (lp_a, h_a, g_a), (lp_b, h_b, g_b) = results
    torch.testing.assert_close(lp_a, lp_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_a, h_b, atol=1e-5, rtol=0)
    # float32 rounding: the shared pass sums the G rows' prompt gradients in another order
    # (test_lean checks the same comparison in float64 to 1e-10).
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_sampling_writes_into_a_preallocated_cache(policy, monkeypatch):
    """The decode loop must not re-concatenate the KV cache each token (BufferLayer for
    transformers' cache, LeanCache.reserve for lmrl's), and the result must equal the plain
    concatenating cache's."""
    import lmrl.policies.hf as hf
    from lmrl.policies.lean import LeanCache

    kinds = []
    if policy.lean is None:
        real = hf.preallocate

        def spy(cache, capacity):
            real(cache, capacity)
            kinds.append({type(layer).__name__ for layer in cache.layers})

        monkeypatch.setattr(hf, "preallocate", spy)
        expected, off = [{"BufferLayer"}], (hf, "preallocate", lambda cache, capacity: None)
    else:
        real = LeanCache.reserve

        def spy(cache, capacity):
            real(cache, capacity)
            prefix = [pk.shape[2] for pk, _ in cache.prefix or []] or [0] * len(cache.keys)
            kinds.append({kb.shape[2] + p for (kb, _), p in zip(cache._buffers, prefix,
                                                                      strict=True)})

        monkeypatch.setattr(LeanCache, "reserve", spy)
        prompt_columns = policy.encode(PROMPTS).input_ids.shape[1]
        expected = [{prompt_columns + policy.max_new_tokens}]  # every layer's buffer: full length
        off = (LeanCache, "reserve", lambda cache, capacity: None)
    fast = policy.sample(PROMPTS, 3, generator=torch.Generator().manual_seed(2))
    assert kinds == expected
    monkeypatch.setattr(*off)
    plain = policy.sample(PROMPTS, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(fast.responses, plain.responses)
    torch.testing.assert_close(fast.logp, plain.logp, atol=1e-5, rtol=0)


def test_eager_attention_gives_the_same_logprobs(policy, tmp_path):
    """--attn-implementation reaches the model, and the kernel does not change the math."""
    policy.save_pretrained(tmp_path)
    eager = HFPolicy.from_pretrained(str(tmp_path), max_new_tokens=8, attn_implementation="eager")
    assert eager.model.config._attn_implementation == "eager"
    rollout = policy.sample(PROMPTS, 3, generator=torch.Generator().manual_seed(4))
    a, _ = policy.logprobs(PROMPTS, rollout.responses, rollout.response_mask)
    b, _ = eager.logprobs(PROMPTS, rollout.responses, rollout.response_mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


class ShoutingTokenizer(PreTrainedTokenizerFast):
    """Overrides `_decode`: batch_decode must go through it, not the Rust backend."""

    def _decode(self, token_ids, **kwargs) -> str:
        return super()._decode(token_ids, **kwargs).upper() + "!"


def test_batch_decode_equals_the_tokenizers_own_and_respects_an_override():
    rows = [[], [PAD, EOS], [2, 12, 3, 13, 4, 14, 5], [EOS, 7]]
    tok = tiny_tokenizer()
    reference = tok.batch_decode(rows, skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
    assert batch_decode(tok, rows) == reference == ["", "<pad><eos>", "0 1+2=3", "<eos>5"]
    shouting = ShoutingTokenizer(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>",
                                 eos_token="<eos>")
    assert batch_decode(shouting, rows) == [t.upper() + "!" for t in reference]
