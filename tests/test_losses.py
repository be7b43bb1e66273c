"""Tier 1-2 tests of lmrl.losses: per-token losses, ratios, KL estimators, aggregation.

Hand numbers used throughout: log(2) = 0.6931472.
  logp = log 0.5, logp_old = log 0.25  -> r = 0.5 / 0.25 = 2
  logp = log 0.25, logp_old = log 0.5  -> r = 0.5
"""

import math

import pytest
import torch

from lmrl.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LOSSES,
    aggregate,
    bind_loss,
    clipped_loss,
    importance_ratio,
    kl_k1,
    kl_k2,
    kl_k3,
    loss_denominator,
    loss_numerator,
    masked_mean,
    naive_loss,
    ratio_diagnostics,
    unclipped_loss,
)

LOG2 = 0.6931471805599453
HALF, QUARTER = math.log(0.5), math.log(0.25)


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def assert_close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, t(expected, actual.dtype), rtol=0, atol=atol)


# ---------------------------------------------------------------- importance ratios


def test_token_ratio_hand_values_and_mask():
    logp = t([[HALF, QUARTER, HALF]])
    logp_old = t([[QUARTER, HALF, QUARTER]])
    mask = t([[1.0, 1.0, 0.0]])
    # masked positions get ratio exp(0) = 1
    assert_close(importance_ratio(logp, logp_old, mask), [[2.0, 0.5, 1.0]], atol=1e-12)


def test_sequence_ratio_is_exp_of_masked_sum_broadcast():
    # response 0: log-ratios log2, log2, (masked: log 4) -> r = exp(2 log 2) = 4 on all 3 tokens
    # response 1: log-ratios log2, -log2, (masked) -> r = 1
    logp = t([[HALF, HALF, math.log(0.8)], [HALF, QUARTER, 0.0]])
    logp_old = t([[QUARTER, QUARTER, math.log(0.2)], [QUARTER, HALF, -5.0]])
    mask = t([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    r = importance_ratio(logp, logp_old, mask, level="sequence")
    assert_close(r, [[4.0, 4.0, 4.0], [1.0, 1.0, 1.0]], atol=1e-12)


def test_ratio_unknown_level_raises():
    x = t([[0.0]])
    with pytest.raises(ValueError, match="token, sequence"):
        importance_ratio(x, x, x, level="nope")


# ---------------------------------------------------------------- per-token losses


def test_naive_loss_hand_values():
    # -Δ · logp: Δ = 2, logp = log 0.5 -> 2 log 2 = 1.3862944; Δ = -1, logp = log .25 -> -2 log 2
    logp = t([[HALF, HALF], [QUARTER, QUARTER]])
    delta = t([2.0, -1.0])
    out = naive_loss(logp, logp * 0, delta, torch.ones_like(logp))
    assert_close(out, [[2 * LOG2, 2 * LOG2], [-2 * LOG2, -2 * LOG2]], atol=1e-12)


@pytest.mark.parametrize("delta, expected", [(1.0, -2.0), (-1.0, 2.0), (0.5, -1.0)])
def test_unclipped_loss_is_minus_r_delta(delta, expected):
    logp, logp_old, mask = t([[HALF]]), t([[QUARTER]]), t([[1.0]])  # r = 2
    assert_close(unclipped_loss(logp, logp_old, t([delta]), mask), [[expected]], atol=1e-12)


@pytest.mark.parametrize(
    "logp, logp_old, delta, expected",
    [
        # r = 2, Δ > 0: min(2, 1.2) -> -1.2 (clipped: no incentive to push r higher)
        (HALF, QUARTER, 1.0, -1.2),
        # r = 2, Δ < 0: min(-2, -1.2) = -2 -> 2 (unclipped: the pessimistic branch)
        (HALF, QUARTER, -1.0, 2.0),
        # r = 0.5, Δ > 0: min(0.5, 0.8) = 0.5 -> -0.5
        (QUARTER, HALF, 1.0, -0.5),
        # r = 0.5, Δ < 0: min(-0.5, -0.8) = -0.8 -> 0.8 (clipped at 1 - ε)
        (QUARTER, HALF, -1.0, 0.8),
        # r = 2, Δ = 3: min(6, 3.6) -> -3.6
        (HALF, QUARTER, 3.0, -3.6),
        # r = 1.1 inside the range: -r Δ
        (math.log(0.55), HALF, 2.0, -2.2),
    ],
)
def test_clipped_loss_hand_values(logp, logp_old, delta, expected):
    out = clipped_loss(t([[logp]]), t([[logp_old]]), t([delta]), t([[1.0]]))
    assert_close(out, [[expected]], atol=1e-12)


def test_clipped_loss_separate_eps_low_high():
    kw = {"clip_eps_low": 0.1, "clip_eps_high": 0.3}
    one = t([[1.0]])
    # r = 2, Δ = 1: clip at 1 + 0.3 -> -1.3
    assert_close(clipped_loss(t([[HALF]]), t([[QUARTER]]), t([1.0]), one, **kw), [[-1.3]])
    # r = 0.5, Δ = -1: clip at 1 - 0.1 = 0.9 -> min(-0.5, -0.9) = -0.9 -> 0.9
    assert_close(clipped_loss(t([[QUARTER]]), t([[HALF]]), t([-1.0]), one, **kw), [[0.9]])


def test_delta_broadcast_to_every_token():
    logp = torch.zeros(2, 3, 4, dtype=torch.float64)
    delta = t([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]])  # (B, G)
    out = unclipped_loss(logp, logp, delta, torch.ones_like(logp))  # r = 1
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, -delta.unsqueeze(-1).expand(2, 3, 4))


def test_sequence_level_clipped_loss_hand_values():
    # r = 4 on both tokens; Δ = 1 -> clip to 1.2 -> -1.2 per token
    logp, logp_old = t([[HALF, HALF]]), t([[QUARTER, QUARTER]])
    out = clipped_loss(logp, logp_old, t([1.0]), torch.ones_like(logp), ratio_level="sequence")
    assert_close(out, [[-1.2, -1.2]], atol=1e-12)


# ---------------------------------------------------------------- gradient equivalence


def _logp_from(logits, tokens):
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, G, T, V = 2, 3, 4, 5
    logits = torch.randn(B, G, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (B, G, T), generator=g)
    delta = torch.randn(B, G, generator=g, dtype=torch.float64)
    lengths = torch.tensor([[4, 2, 1], [3, 4, 2]])
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).double()
    return logits, tokens, delta, mask


def _grad(loss_fn, mode, logp_old_of=lambda logp: logp.detach(), **kw):
    logits, tokens, delta, mask = _setup()
    logp = _logp_from(logits, tokens)
    loss = aggregate(loss_fn(logp, logp_old_of(logp), delta, mask, **kw), mask, mode)
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("loss_name", ["unclipped", "clipped"])
def test_ratio_one_has_the_naive_gradient(loss_name, mode):
    naive = _grad(naive_loss, mode)
    assert naive.abs().sum() > 0
    torch.testing.assert_close(_grad(LOSSES[loss_name], mode), naive, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss_name", ["unclipped", "clipped"])
def test_logp_old_is_detached_inside_the_loss(loss_name):
    """logp_old = logp with its graph attached: if the loss backpropagated through logp_old, r
    would be identically 1 and the gradient 0. The ratio must treat it as a constant."""
    naive = _grad(naive_loss, "token_mean")
    attached = _grad(LOSSES[loss_name], "token_mean", logp_old_of=lambda logp: logp)
    assert attached.abs().sum() > 0
    torch.testing.assert_close(attached, naive, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss_name", ["unclipped", "clipped"])
def test_sequence_ratio_one_has_the_naive_gradient(loss_name):
    naive = _grad(naive_loss, "token_mean")
    seq = _grad(LOSSES[loss_name], "token_mean", ratio_level="sequence")
    torch.testing.assert_close(seq, naive, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ratio_level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_every_loss_has_zero_gradient_where_delta_is_zero(loss_name, ratio_level):
    """What lets the update skip groups whose Δ are all 0 (step.Batch.groups_with_gradient):
    their rows add nothing to any loss's gradient, whatever the ratio."""
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    logp_old = logp.detach() + 0.3 * torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    delta = torch.randn(2, 3, generator=g, dtype=torch.float64)
    delta[1] = 0.0
    mask = torch.ones(2, 3, 4, dtype=torch.float64)
    loss = bind_loss(loss_name, ratio_level=ratio_level)(logp, logp_old, delta, mask)
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "token_mean"), logp)
    assert grad[0].abs().sum() > 0 and torch.equal(grad[1], torch.zeros_like(grad[1]))


def test_clipped_gradient_is_zero_where_clipped():
    # r = 2 > 1.2 with Δ > 0: the clipped branch wins and the gradient vanishes;
    # r = 2 with Δ < 0: the unclipped branch wins, d(-rΔ)/dlogp = -rΔ = 2
    logp = t([[HALF], [HALF]]).requires_grad_()
    out = clipped_loss(logp, t([[QUARTER], [QUARTER]]), t([1.0, -1.0]), torch.ones(2, 1))
    (grad,) = torch.autograd.grad(out.sum(), logp)
    assert_close(grad, [[0.0], [2.0]], atol=1e-12)


# ---------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values():
    logp, logp_ref = t([HALF, QUARTER]), t([QUARTER, HALF])
    # P/Q = 2:   k1 = log 2, k2 = (log 2)^2 / 2 = 0.2402265, k3 = 0.5 - log 0.5 - 1 = 0.1931472
    # P/Q = 0.5: k1 = -log 2, k2 = 0.2402265,               k3 = 2 - log 2 - 1 = 0.3068528
    assert_close(kl_k1(logp, logp_ref), [LOG2, -LOG2], atol=1e-12)
    assert_close(kl_k2(logp, logp_ref), [0.2402265, 0.2402265], atol=1e-7)
    assert_close(kl_k3(logp, logp_ref), [0.1931472, 0.3068528], atol=1e-7)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k3_zero_when_ref_equals_policy():
    logp = torch.log_softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), -1)
    for name in ("k1", "k2", "k3"):
        assert (KL_ESTIMATORS[name](logp, logp.clone()) == 0).all(), name


def test_k2_k3_never_negative_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(10_000, generator=g) * 3
    logp_ref = torch.randn(10_000, generator=g) * 3
    assert (kl_k3(logp, logp_ref) >= 0).all()
    assert (kl_k2(logp, logp_ref) >= 0).all()
    assert (kl_k1(logp, logp_ref) < 0).any()  # k1 per sample can be negative


P_PROBS = [0.5, 0.3, 0.2]
Q_PROBS = [0.2, 0.3, 0.5]
# KL(P || Q) = 0.5 log 2.5 + 0.3 log 1 + 0.2 log 0.4 = 0.3 log 2.5 = 0.2748872
KL_PQ = 0.2748872


def test_k3_exact_expectation_under_policy_is_kl():
    logp, logq = t(P_PROBS).log(), t(Q_PROBS).log()
    exact = (t(P_PROBS) * (logp - logq)).sum()
    assert exact.item() == pytest.approx(KL_PQ, abs=1e-7)
    assert (t(P_PROBS) * kl_k1(logp, logq)).sum().item() == pytest.approx(KL_PQ, abs=1e-7)
    assert (t(P_PROBS) * kl_k3(logp, logq)).sum().item() == pytest.approx(KL_PQ, abs=1e-7)
    # k2 is biased: E_P[(log P/Q)^2 / 2] = 0.5 * 0.7 * (log 2.5)^2 = 0.2938560
    assert (t(P_PROBS) * kl_k2(logp, logq)).sum().item() == pytest.approx(0.2938560, abs=1e-7)


def test_kl_monte_carlo_under_policy_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(t(P_PROBS), 200_000, replacement=True, generator=g)  # x ~ P
    logp, logq = t(P_PROBS).log()[x], t(Q_PROBS).log()[x]
    # standard errors: k1 ~ 0.0016, k3 ~ 0.0005; tolerance 0.006 is > 3.5 standard errors
    assert kl_k1(logp, logq).mean().item() == pytest.approx(KL_PQ, abs=0.006)
    assert kl_k3(logp, logq).mean().item() == pytest.approx(KL_PQ, abs=0.006)
    k2 = kl_k2(logp, logq)
    assert (k2 >= 0).all()
    assert k2.mean().item() == pytest.approx(0.2938560, abs=0.006)


# ---------------------------------------------------------------- aggregation

LOSS = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_mean():
    assert masked_mean(LOSS, MASK).item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    assert masked_mean(LOSS, torch.zeros_like(MASK)).item() == 0.0


@pytest.mark.parametrize(
    "mode, numerator, denominator, value",
    [
        ("token_mean", 7.0, 3.0, 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("sequence_mean", 5.5, 2.0, 2.75),  # ((1 + 2) / 2 + 4 / 1) / 2 responses
        ("constant", 7.0, 6.0, 7 / 6),  # (1 + 2 + 4) / (2 responses x T=3)
    ],
)
def test_aggregation_hand_values(mode, numerator, denominator, value):
    assert loss_numerator(LOSS, MASK, mode).item() == pytest.approx(numerator)
    assert loss_denominator(MASK, mode) == denominator
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(value)


def test_constant_aggregation_with_explicit_length():
    assert loss_denominator(MASK, "constant", constant=4) == 8.0
    assert aggregate(LOSS, MASK, "constant", constant=4).item() == pytest.approx(7 / 8)


def test_aggregation_over_b_g_t():
    loss = LOSS.reshape(1, 2, 3)
    mask = MASK.reshape(1, 2, 3)
    assert loss_denominator(mask, "sequence_mean") == 2.0
    assert aggregate(loss, mask, "sequence_mean").item() == pytest.approx(2.75)


def _ragged_batch():
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)  # (B, G, T)
    lengths = torch.randint(1, 6, (6, 3), generator=g)
    mask = (torch.arange(5) < lengths.unsqueeze(-1)).double()
    return loss, mask


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("num_micro", [2, 3])
def test_gradient_accumulation_equivalence(mode, num_micro):
    loss, mask = _ragged_batch()
    full = aggregate(loss, mask, mode)
    denominator = loss_denominator(mask, mode)
    summed = sum(aggregate(lm, mm, mode, denominator=denominator)
                 for lm, mm in zip(loss.chunk(num_micro), mask.chunk(num_micro), strict=True))
    torch.testing.assert_close(summed, full, rtol=1e-12, atol=1e-12)


def test_gradient_accumulation_with_local_denominators_differs():
    """Shows the test above can fail: averaging per-micro token means is another objective."""
    loss, mask = _ragged_batch()
    full = aggregate(loss, mask, "token_mean")
    local = sum(aggregate(lm, mm, "token_mean") for lm, mm in zip(loss.chunk(2), mask.chunk(2),
                                                                   strict=True)) / 2
    assert abs(local.item() - full.item()) > 1e-3


@pytest.mark.parametrize("fn", [
    lambda mode: loss_numerator(LOSS, MASK, mode),
    lambda mode: loss_denominator(MASK, mode),
    lambda mode: aggregate(LOSS, MASK, mode),
])
def test_unknown_aggregation_lists_valid_names(fn):
    with pytest.raises(ValueError, match="nope") as err:
        fn("nope")
    for name in ("token_mean", "sequence_mean", "constant"):
        assert name in str(err.value)


# ---------------------------------------------------------------- ratio diagnostics


def test_ratio_diagnostics_hand_example():
    # response 0: Δ = +1, ratios [2, 1, 0.5];  response 1: Δ = -1, ratios [0.5, 2, (masked)]
    logp = t([[HALF, HALF, QUARTER], [QUARTER, HALF, 0.0]])
    logp_old = t([[QUARTER, HALF, HALF], [HALF, QUARTER, math.log(0.01)]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    d = ratio_diagnostics(logp, logp_old, t([1.0, -1.0]), mask)
    # high: Δ>0 & r>1.2 -> token (0,0) only; low: Δ<0 & r<0.8 -> token (1,0) only; 5 tokens
    assert d["clip_frac_high"] == pytest.approx(0.2)
    assert d["clip_frac_low"] == pytest.approx(0.2)
    assert d["ratio_mean"] == pytest.approx((2 + 1 + 0.5 + 0.5 + 2) / 5)  # 1.2
    assert d["ratio_min"] == pytest.approx(0.5)
    assert d["ratio_max"] == pytest.approx(2.0)  # the masked log-ratio log(100) is ignored
    # k3 of KL(old || θ) per token: r - 1 - log r = 0.3068528 (r=2), 0.1931472 (r=.5), 0 (r=1)
    # sum = 2 * 0.3068528 + 2 * 0.1931472 = 1.0, mean over 5 tokens = 0.2
    assert d["approx_kl_old"] == pytest.approx(0.2, abs=1e-7)


def test_ratio_diagnostics_separate_eps_and_masked_min():
    # all unmasked ratios are above 1; the masked token (ratio 1 after masking) must not be min
    logp = t([[HALF, math.log(0.55), 0.0]])
    logp_old = t([[QUARTER, HALF, 0.0]])  # ratios 2, 1.1, (masked)
    mask = t([[1.0, 1.0, 0.0]])
    d = ratio_diagnostics(logp, logp_old, t([1.0]), mask, clip_eps_low=0.5, clip_eps_high=1.5)
    assert d["clip_frac_high"] == 0.0  # 2 < 1 + 1.5
    d = ratio_diagnostics(logp, logp_old, t([1.0]), mask, clip_eps_low=0.5, clip_eps_high=0.05)
    assert d["clip_frac_high"] == pytest.approx(1.0)  # 2 and 1.1 both > 1.05
    assert d["clip_frac_low"] == 0.0
    assert d["ratio_min"] == pytest.approx(1.1)
    assert d["ratio_max"] == pytest.approx(2.0)


def test_ratio_diagnostics_at_ratio_one():
    logp = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    d = ratio_diagnostics(logp, logp.clone(), torch.randn(2, 3), torch.ones_like(logp))
    assert d == {"clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 1.0,
                 "ratio_min": 1.0, "ratio_max": 1.0, "approx_kl_old": 0.0}


def test_estimator_gradients_through_sampled_logp_are_reverse_and_forward_kl():
    """Expected gradient of k(logp(a), logq(a)) over a ~ P (samples fixed, grad through logp):
    k2 gives ∇KL(P‖Q), k3 gives ∇KL(Q‖P), k1 gives 0. Exact sums over a 4-token vocabulary."""
    from lmrl.losses import kl_k1, kl_k2, kl_k3

    logits = torch.tensor([0.3, -1.0, 0.8, 0.1], requires_grad=True)
    logq = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, 0.0]), dim=-1)

    def expected_grad(estimator):
        logp = torch.log_softmax(logits, dim=-1)
        weights = logp.exp().detach()  # the sampling distribution is not differentiated
        (g,) = torch.autograd.grad((weights * estimator(logp, logq)).sum(), logits)
        return g

    logp = torch.log_softmax(logits, dim=-1)
    (reverse,) = torch.autograd.grad((logp.exp() * (logp - logq)).sum(), logits)
    logp = torch.log_softmax(logits, dim=-1)
    (forward,) = torch.autograd.grad((logq.exp() * (logq - logp)).sum(), logits)
    assert torch.allclose(expected_grad(kl_k2), reverse, atol=1e-6)
    assert torch.allclose(expected_grad(kl_k3), forward, atol=1e-6)
    assert torch.allclose(expected_grad(kl_k1), torch.zeros(4), atol=1e-6)
    assert not torch.allclose(reverse, forward, atol=1e-3)


# ---------------------------------------------------------------- the registry and bind_loss


def test_a_misspelt_keyword_to_a_loss_is_a_type_error():
    x, one = t([[HALF]]), t([[1.0]])
    with pytest.raises(TypeError, match="clip_esp_low"):
        clipped_loss(x, x, t([1.0]), one, clip_esp_low=0.1)
    with pytest.raises(TypeError, match="ratio_level"):
        LOSSES["naive"](x, x, t([1.0]), one, ratio_level="token")  # naive has no ratio
    with pytest.raises(TypeError, match="clip_eps"):
        bind_loss("clipped", clip_eps=0.1)  # the config's clip_eps is split into low/high


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_declares_exactly_the_settings_its_spec_says_it_reads(name):
    import inspect
    spec = LOSSES[name]
    declared = list(inspect.signature(spec.fn).parameters)
    assert declared[:4] == ["logp", "logp_old", "delta", "mask"]
    expected = (["ratio_level"] if spec.uses_ratio else []) + (
        ["clip_eps_low", "clip_eps_high"] if spec.clips else [])
    assert declared[4:] == expected
    assert not spec.clips or spec.uses_ratio  # clipping is of the ratio


def test_bind_loss_is_the_loss_with_its_settings():
    g = torch.Generator().manual_seed(1)
    logp, logp_old = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    delta, mask = torch.randn(2, 3, generator=g), (torch.rand(2, 3, 4, generator=g) > 0.3).float()
    kw = {"ratio_level": "sequence", "clip_eps_low": 0.1, "clip_eps_high": 0.3}
    bound = bind_loss("clipped", **kw)(logp, logp_old, delta, mask)
    assert torch.equal(bound, clipped_loss(logp, logp_old, delta, mask, **kw))
    assert not torch.equal(bound, clipped_loss(logp, logp_old, delta, mask))  # kw took effect
    # settings a loss does not read are not passed to it
    assert torch.equal(bind_loss("naive", **kw)(logp, logp_old, delta, mask),
                       naive_loss(logp, logp_old, delta, mask))
    assert torch.equal(bind_loss("unclipped", **kw)(logp, logp_old, delta, mask),
                       unclipped_loss(logp, logp_old, delta, mask, ratio_level="sequence"))


def test_bind_loss_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="naive, unclipped, clipped"):
        bind_loss("nope")


# ---------------------------------------------------------------- per-token Δ (advantages)


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("ratio_level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_token_level_delta_equal_to_its_response_delta_changes_nothing(loss_name, ratio_level,
                                                                       mode):
    """A (B, G, T) Δ whose every token carries its response's Δ is the (B, G) Δ: same per-token
    loss, same aggregated loss, same gradient. logp_old is off the policy so ratios and clipping
    are really exercised."""
    logits, tokens, delta, mask = _setup()
    loss_fn = bind_loss(loss_name, ratio_level=ratio_level)
    results = []
    for d in (delta, delta.unsqueeze(-1).expand_as(mask).clone()):
        logp = _logp_from(logits, tokens)
        logp_old = logp.detach() + 0.4 * torch.sin(torch.arange(logp.numel(), dtype=logp.dtype)
                                                   ).reshape(logp.shape)
        per_token_loss = loss_fn(logp, logp_old, d, mask)
        loss = aggregate(per_token_loss, mask, mode)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((per_token_loss, loss, grad))
    (l1, a1, g1), (l2, a2, g2) = results
    assert g1.abs().sum() > 0
    assert torch.equal(l1, l2) and torch.equal(a1, a2) and torch.equal(g1, g2)


def test_token_level_delta_weights_each_token_by_its_own_delta():
    # -Δ_t · logp_t with logp = log 0.5 on every token: Δ = [1, -2, 3] -> [log2, -2 log2, 3 log2]
    logp = t([[HALF, HALF, HALF]])
    out = naive_loss(logp, logp, t([[1.0, -2.0, 3.0]]), torch.ones_like(logp))
    assert_close(out, [[LOG2, -2 * LOG2, 3 * LOG2]], atol=1e-12)
    # clipped, r = 2 on every token, ε = 0.2: Δ > 0 -> -1.2 Δ, Δ < 0 -> -2 Δ
    out = clipped_loss(t([[HALF] * 3]), t([[QUARTER] * 3]), t([[1.0, -2.0, 3.0]]), t([[1.0] * 3]))
    assert_close(out, [[-1.2, 4.0, -3.6]], atol=1e-12)


def test_ratio_diagnostics_with_token_level_delta():
    # ratios [2, 2, 0.5, 0.5] with Δ = [1, -1, -1, 1]: high only at token 0, low only at token 2
    logp = t([[HALF, HALF, QUARTER, QUARTER]])
    logp_old = t([[QUARTER, QUARTER, HALF, HALF]])
    d = ratio_diagnostics(logp, logp_old, t([[1.0, -1.0, -1.0, 1.0]]), torch.ones_like(logp))
    assert d["clip_frac_high"] == pytest.approx(0.25)
    assert d["clip_frac_low"] == pytest.approx(0.25)
    same = ratio_diagnostics(logp, logp_old, t([1.0]), torch.ones_like(logp))
    assert same["clip_frac_high"] == pytest.approx(0.5) and same["clip_frac_low"] == 0.0


# ---------------------------------------------------------------- GSPO's geometric-mean ratio


def test_geometric_ratio_is_exp_of_the_mean_token_log_ratio():
    # response 0: log-ratios log2, log2, (masked: log 4) -> s = exp(mean) = 2 (sequence: 4)
    # response 1: log-ratios log2, log2, -log2 -> mean log2 / 3 -> s = 2^(1/3) (sequence: 2)
    logp = t([[HALF, HALF, math.log(0.8)], [HALF, HALF, QUARTER]])
    logp_old = t([[QUARTER, QUARTER, math.log(0.2)], [QUARTER, QUARTER, HALF]])
    mask = t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = importance_ratio(logp, logp_old, mask, level="geometric")
    cube_root_2 = 2 ** (1 / 3)  # 1.2599210
    assert_close(r, [[2.0, 2.0, 2.0], [cube_root_2] * 3], atol=1e-12)
    assert_close(importance_ratio(logp, logp_old, mask, level="sequence")[:, 0], [4.0, 2.0],
                 atol=1e-12)


def test_gspo_gradient_with_sequence_mean_is_the_gradient_of_s():
    """GSPO's objective per response is s·Δ with s = exp(mean_t log-ratio): its gradient is
    s·Δ·mean_t ∇logp_t. lmrl's per-token geometric ratio with sequence_mean aggregation gives
    exactly that (the unclipped loss, and the clipped one inside [1-ε, 1+ε])."""
    logits, tokens, delta, mask = _setup()
    logp = _logp_from(logits, tokens)
    logp_old = logp.detach() + 0.05 * torch.cos(torch.arange(logp.numel(), dtype=logp.dtype)
                                                ).reshape(logp.shape)
    ours = aggregate(unclipped_loss(logp, logp_old, delta, mask, "geometric"), mask,
                     "sequence_mean")
    (g_ours,) = torch.autograd.grad(ours, logits)
    logp = _logp_from(logits, tokens)
    s = torch.exp(((logp - logp_old) * mask).sum(-1) / mask.sum(-1))  # (B, G), differentiable
    (g_gspo,) = torch.autograd.grad(-(s * delta).mean(), logits)
    torch.testing.assert_close(g_ours, g_gspo, rtol=1e-10, atol=1e-13)
    assert g_gspo.abs().sum() > 0
    logp = _logp_from(logits, tokens)
    clipped = aggregate(clipped_loss(logp, logp_old, delta, mask, "geometric", 0.5, 0.5), mask,
                        "sequence_mean")
    (g_clipped,) = torch.autograd.grad(clipped, logits)
    torch.testing.assert_close(g_clipped, g_gspo, rtol=1e-10, atol=1e-13)


def test_geometric_clipped_loss_clips_the_whole_response():
    # s = 2 on both tokens (log-ratios log 4 and 0): Δ = 1 clips at 1.2 -> -1.2, gradient 0
    logp = t([[0.0, HALF]]).requires_grad_()
    out = clipped_loss(logp, t([[math.log(0.25), HALF]]), t([1.0]), torch.ones(1, 2),
                       ratio_level="geometric")
    assert_close(out.detach(), [[-1.2, -1.2]], atol=1e-12)
    (grad,) = torch.autograd.grad(out.sum(), logp)
    assert_close(grad, [[0.0, 0.0]], atol=0)
