"""The GRPO step on a causal LM: gradient accumulation, padding invariance of the loss, no extra
forward passes (μ = 1 and no KL), a reference built in memory, stop strings and temperature."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from test_hf_policy import EOS, PAD, tiny_model, tiny_tokenizer  # noqa: E402

from lmrl.config import Config  # noqa: E402
from lmrl.policies.hf import HFPolicy  # noqa: E402
from lmrl.state import build_state  # noqa: E402
from lmrl.step import Batch, grpo_step, update  # noqa: E402

PROMPTS = ["1 2", "3 4 5 6 7", "8", "9 0 1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_policy(**kwargs) -> HFPolicy:
    return HFPolicy(tiny_model("llama"), tiny_tokenizer(), max_new_tokens=kwargs.pop("max_new", 6),
                    **kwargs)


def cfg_with(**groups) -> Config:
    base = {"train": {"B": 4, "G": 4, "grad_clip": 0.0, "lr": 1e-2}, "algo": {"kl_weight": 0.1}}
    for group, values in groups.items():
        base.setdefault(group, {}).update(values)
    return Config().replace(**base)


def fixed_batch(policy: HFPolicy, state, extra_pad: int = 0) -> Batch:
    """A sampled batch with deltas that vary within groups; optionally `extra_pad` more masked
    columns on the right of every response."""
    g = torch.Generator().manual_seed(0)
    inputs = policy.encode(PROMPTS)
    rollout = policy.sample(inputs, 4, generator=g)
    responses, mask = rollout.responses, rollout.response_mask
    if extra_pad:
        responses = torch.nn.functional.pad(responses, (0, extra_pad), value=PAD)
        mask = torch.nn.functional.pad(mask, (0, extra_pad), value=0.0)
    delta = torch.linspace(-1.0, 1.0, 16).reshape(4, 4)
    logp_ref = state.reference.logprobs(inputs, responses, mask) if state.reference else None
    return Batch(inputs, responses, mask, delta, logp_ref)


class EveryGroup(Batch):
    """A batch whose update runs every group, flat ones too: what the skip must equal."""

    def groups_with_gradient(self) -> Batch:
        return self


def gradients(cfg: Config, k: int, extra_pad: int = 0, flat: tuple[int, ...] = (),
              skip: bool = False) -> tuple[list[torch.Tensor], float]:
    """The gradients and loss of one update in k micro-batches. flat: groups given Δ = 0; skip:
    the update leaves them out (`Batch.groups_with_gradient`), else it runs them."""
    policy = make_policy()
    state = build_state(cfg, policy)
    batch = fixed_batch(policy, state, extra_pad)
    batch.delta[list(flat)] = 0.0
    if skip:
        kept = batch.groups_with_gradient()
        assert len(kept.delta) == 4 - len(flat) and len(kept.prompts) == len(kept.delta)
    metrics = update(state, cfg.replace(train={"grad_accum": k}),
                     batch if skip else EveryGroup(**vars(batch)))
    # μ = 1: the gradients stay after the optimizer step.
    return [p.grad.clone() for p in policy.parameters()], metrics["loss/total"]


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_gradient_accumulation_equals_one_big_batch(aggregation):
    cfg = cfg_with(algo={"aggregation": aggregation})
    full, loss = gradients(cfg, 1)
    for k in (2, 4):
        grads, loss_k = gradients(cfg, k)
        assert loss_k == pytest.approx(loss, abs=1e-6)
        for a, b in zip(full, grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_skipping_zero_delta_groups_keeps_a_causal_lms_loss_and_gradient():
    """The PromptBatch of the kept groups is selected with them: same loss and gradient."""
    cfg = cfg_with(algo={"kl_weight": 0.0})
    full, full_loss = gradients(cfg, 1, flat=(0, 2))
    for k in (1, 2):
        grads, loss = gradients(cfg, k, flat=(0, 2), skip=True)
        assert loss == pytest.approx(full_loss, abs=1e-6)
        for a, b in zip(full, grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_loss_and_gradient_unchanged_by_extra_response_padding(aggregation):
    cfg = cfg_with(algo={"aggregation": aggregation})
    grads, loss = gradients(cfg, 1)
    padded, loss_padded = gradients(cfg, 1, extra_pad=3)
    assert loss_padded == pytest.approx(loss, abs=1e-6)
    for a, b in zip(grads, padded, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_step_normalises_constant_aggregation_by_the_token_budget(monkeypatch):
    import lmrl.step

    seen = []
    real = lmrl.step.loss_denominator
    monkeypatch.setattr(lmrl.step, "loss_denominator",
                        lambda mask, mode, constant=None: seen.append(constant) or
                        real(mask, mode, constant))
    cfg = cfg_with(algo={"aggregation": "constant"})
    policy = make_policy(max_new=5)
    grpo_step(build_state(cfg, policy), CountingTask(), cfg)
    assert seen == [5]


class CountingTask:
    """Digit-sum reward over text prompts; counts nothing itself (the model is hooked)."""

    correctness = None

    def sample_prompts(self, B, generator):
        return [{"prompt": p} for p in PROMPTS[:B]]

    def score_rollout(self, examples, rollout):
        sums = torch.tensor([[float(sum(int(c) for c in t if c.isdigit())) for t in row]
                             for row in rollout.texts])
        return sums, {"digit_sum": sums}


def count_forwards(policy: HFPolicy) -> list[tuple[int, int, bool]]:
    """Record (rows, columns, grad enabled) of every forward pass of the policy's model, by the
    token embedding, which either forward (lmrl's or transformers') calls once per pass."""
    calls: list[tuple[int, int, bool]] = []
    policy.model.get_input_embeddings().register_forward_pre_hook(
        lambda _m, args: calls.append((*args[0].shape, torch.is_grad_enabled())))
    return calls


def test_mu_one_without_kl_makes_one_logprob_pass_and_no_reference():
    """Sampling: one prefill of the B prompts, then one call per further token (no grad). The
    log-prob pass: the B prompts once, then the N responses on their shared cache (with grad).
    Nothing else: no pass for logp_old (μ = 1) and none for a reference (λ = 0)."""
    cfg = cfg_with(algo={"kl_weight": 0.0})
    policy = make_policy()
    state = build_state(cfg, policy)
    assert state.reference is None  # no model copy without a KL term
    calls = count_forwards(policy)
    metrics = grpo_step(state, CountingTask(), cfg)
    sampling = [c for c in calls if not c[2]]
    logprob_pass = [c for c in calls if c[2]]
    T = len(sampling)  # prefill + (T - 1) decode steps
    assert sampling[0][0] == 4 and all(c[:2] == (16, 1) for c in sampling[1:])
    assert [c[0] for c in logprob_pass] == [4, 16]
    assert logprob_pass[1][1] == T - 1  # response columns 0..T-2 predict tokens 1..T-1
    # μ = 1: logp_old is the detached current log-probs, so the ratio is exactly 1.
    assert metrics["loss/ratio_min"] == 1.0 == metrics["loss/ratio_max"]


def test_reference_is_a_frozen_in_memory_copy_and_costs_one_pass(monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_reload(*args, **kwargs):
        raise AssertionError("the reference must not be re-read from disk")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_reload)
    cfg = cfg_with(algo={"kl_weight": 0.1, "ref_refresh": 2})
    policy = make_policy()
    state = build_state(cfg, policy)
    ref = state.reference.model
    assert ref is not policy and not any(p.requires_grad for p in ref.parameters())
    for a, b in zip(ref.parameters(), policy.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    ref_calls = count_forwards(ref)
    grpo_step(state, CountingTask(), cfg)
    assert [c[0] for c in ref_calls] == [4, 16]  # one log-prob pass (prompts, then responses)
    assert not all(torch.equal(a, b) for a, b in zip(ref.parameters(), policy.parameters(),
                                                     strict=True))
    grpo_step(state, CountingTask(), cfg)  # step 2: refreshed
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), policy.parameters(),
                                                 strict=True))


def test_stop_string_ends_a_completion_and_its_mask():
    policy = make_policy(max_new=8)
    free = policy.sample(PROMPTS, 1, temperature=0.0)
    # A digit that some greedy completion emits after its first token.
    texts = [row[0] for row in free.texts]
    stop = next(c for t in texts for c in t[1:] if c.isdigit())
    stopped = make_policy(max_new=8, stop=(stop,))
    stopped.model.load_state_dict(policy.model.state_dict())
    out = stopped.sample(PROMPTS, 1, temperature=0.0)
    for b, text in enumerate(texts):
        new = out.texts[b][0]
        if stop in text:
            assert new == text[:text.index(stop) + 1]  # ends at the stop string, kept
            k = free.responses[b, 0].tolist().index(policy.tokenizer.convert_tokens_to_ids(stop))
            assert int(out.response_mask[b, 0].sum()) == k + 1
            assert torch.equal(out.responses[b, 0, :k + 1], free.responses[b, 0, :k + 1])
            assert not out.truncated[b, 0]
        else:
            assert new == text


def test_logprobs_use_the_policy_temperature():
    hot = make_policy(temperature=2.0)
    cold = make_policy()
    cold.model.load_state_dict(hot.model.state_dict())
    rollout = hot.sample(PROMPTS, 2, generator=torch.Generator().manual_seed(0))
    logp_hot, _ = hot.logprobs(PROMPTS, rollout.responses, rollout.response_mask)
    # Sampling recorded log π at the same temperature that logprobs computes.
    torch.testing.assert_close(rollout.logp, logp_hot, atol=1e-5, rtol=0)
    logp_cold, _ = cold.logprobs(PROMPTS, rollout.responses, rollout.response_mask)
    assert not torch.allclose(logp_hot, logp_cold)
    assert EOS != PAD  # so the mask, not the pad id, ends each response
