"""Tier 1-2 tests of lmrl.advantages: token rewards, GAE, whitening, value loss.

The trajectory used for the hand numbers: 3 real tokens and 1 padding token,
  outcome reward R = 1 on the last real token: r = [0, 0, 1 | pad]
  values V(s_t) = [0.5, 0.6, 0.8 | 9 (padding garbage)], V after token 2 = 0 (terminal)
  δ_t = r_t + γ V_{t+1} - V_t
  γ = 1:   δ = [0.6-0.5, 0.8-0.6, 1-0.8]             = [0.1, 0.2, 0.2]
  γ = 0.9: δ = [0.54-0.5, 0.72-0.6, 1-0.8]           = [0.04, 0.12, 0.2]
  A_2 = δ_2, A_1 = δ_1 + γλ A_2, A_0 = δ_0 + γλ A_1:
  γ=1,   λ=1:   [0.5, 0.4, 0.2]  (= R - V_t)        returns [1, 1, 1]
  γ=1,   λ=0:   [0.1, 0.2, 0.2]  (one-step TD)      returns [0.6, 0.8, 1]
  γ=1,   λ=0.5: A_1 = 0.2 + 0.5·0.2 = 0.3, A_0 = 0.1 + 0.5·0.3 = 0.25     returns [0.75, 0.9, 1]
  γ=0.9, λ=1:   A_1 = 0.12 + 0.9·0.2 = 0.3, A_0 = 0.04 + 0.9·0.3 = 0.31
                (= 0.9^(2-t) - V_t: 0.81 - 0.5, 0.9 - 0.6, 1 - 0.8)      returns [0.81, 0.9, 1]
  γ=0.9, λ=0.5: A_1 = 0.12 + 0.45·0.2 = 0.21, A_0 = 0.04 + 0.45·0.21 = 0.1345
                                                                       returns [0.6345, 0.81, 1]
"""

import pytest
import torch

from lmrl.advantages import (
    gae,
    kl_penalized_rewards,
    outcome_token_rewards,
    value_clip_frac,
    value_loss,
    whiten,
)
from lmrl.losses import aggregate


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def assert_close(actual, expected, atol=1e-12):
    torch.testing.assert_close(actual, t(expected), rtol=0, atol=atol)


MASK = t([[1.0, 1.0, 1.0, 0.0]])
VALUES = t([[0.5, 0.6, 0.8, 9.0]])
REWARDS = t([[0.0, 0.0, 1.0, 0.0]])


# ---------------------------------------------------------------- token rewards


def test_outcome_reward_goes_on_the_last_real_token():
    reward = t([[2.0, -1.0, 5.0]])  # (B, G) = (1, 3)
    lengths = torch.tensor([[3, 1, 0]])
    mask = (torch.arange(4) < lengths.unsqueeze(-1)).double()
    out = outcome_token_rewards(reward, mask)
    assert out.shape == (1, 3, 4)
    assert_close(out, [[[0.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])


def test_kl_penalty_per_token_and_padding():
    kl = t([[0.1, -0.2, 0.3, 5.0]])
    # r - 0.5 kl = [-0.05, 0.1, 1 - 0.15, (padding) 0]
    out = kl_penalized_rewards(REWARDS, kl, 0.5, MASK)
    assert_close(out, [[-0.05, 0.1, 0.85, 0.0]])
    # γ = λ = 1: A_t = Σ_{l≥t} r_l - V_t: 0.9 - 0.5, 0.95 - 0.6, 0.85 - 0.8
    adv, _ = gae(out, VALUES, MASK, 1.0, 1.0)
    assert_close(adv, [[0.4, 0.35, 0.05, 0.0]])


def test_kl_penalty_is_a_constant_of_the_update():
    kl = t([[0.1, 0.2, 0.3, 0.0]]).requires_grad_()
    assert not kl_penalized_rewards(REWARDS, kl, 0.5, MASK).requires_grad


# ---------------------------------------------------------------- GAE


@pytest.mark.parametrize("gamma, lam, advantages, returns", [
    (1.0, 1.0, [0.5, 0.4, 0.2], [1.0, 1.0, 1.0]),
    (1.0, 0.0, [0.1, 0.2, 0.2], [0.6, 0.8, 1.0]),
    (1.0, 0.5, [0.25, 0.3, 0.2], [0.75, 0.9, 1.0]),
    (0.9, 1.0, [0.31, 0.3, 0.2], [0.81, 0.9, 1.0]),
    (0.9, 0.0, [0.04, 0.12, 0.2], [0.54, 0.72, 1.0]),
    (0.9, 0.5, [0.1345, 0.21, 0.2], [0.6345, 0.81, 1.0]),
])
def test_gae_hand_values(gamma, lam, advantages, returns):
    adv, ret = gae(REWARDS, VALUES, MASK, gamma, lam)
    assert_close(adv, [advantages + [0.0]])
    assert_close(ret, [returns + [0.0]])


def test_gae_lambda_one_gamma_one_is_outcome_minus_value():
    # the seed's R - V(S), at every token: R = 3, V = [1, 2, 4, 0.5]
    reward = t([3.0])
    mask = t([[1.0, 1.0, 1.0, 1.0]])
    adv, ret = gae(outcome_token_rewards(reward, mask), t([[1.0, 2.0, 4.0, 0.5]]), mask, 1.0, 1.0)
    assert_close(adv, [[2.0, 1.0, -1.0, 2.5]])
    assert_close(ret, [[3.0, 3.0, 3.0, 3.0]])


def test_gae_ignores_padding_values_and_rewards():
    adv, ret = gae(REWARDS, VALUES, MASK, 0.9, 0.5)
    garbage_r, garbage_v = REWARDS.clone(), VALUES.clone()
    garbage_r[0, 3], garbage_v[0, 3] = 7.0, float("nan")
    adv2, ret2 = gae(garbage_r, garbage_v, MASK, 0.9, 0.5)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    # and an empty response is all zeros
    adv, ret = gae(t([[1.0, 2.0]]), t([[3.0, 4.0]]), t([[0.0, 0.0]]), 1.0, 1.0)
    assert torch.equal(adv, torch.zeros(1, 2, dtype=adv.dtype)) and torch.equal(ret, adv)


def test_gae_batch_shape_b_g_t():
    # (B, G, T) = (2, 2, 4): the hand trajectory, a 1-token response, a full one, an empty one
    mask = t([[[1, 1, 1, 0], [1, 0, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0]]])
    reward = t([[1.0, 2.0], [1.0, 5.0]])
    values = t([[[0.5, 0.6, 0.8, 9.0], [0.5, 0, 0, 0]], [[0.5, 0.5, 0.5, 0.5], [1, 1, 1, 1]]])
    adv, ret = gae(outcome_token_rewards(reward, mask), values, mask, 1.0, 0.0)
    assert adv.shape == ret.shape == (2, 2, 4)
    # λ = 0: δ_t; 1 token: 2 - 0.5 = 1.5; full: [0, 0, 0, 1 - 0.5]
    assert_close(adv, [[[0.1, 0.2, 0.2, 0.0], [1.5, 0.0, 0.0, 0.0]],
                       [[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]])
    assert_close(ret, [[[0.6, 0.8, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]],
                       [[0.5, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]]])


def test_gae_does_not_differentiate_into_the_value_model():
    values = VALUES.clone().requires_grad_()
    adv, ret = gae(REWARDS, values, MASK, 1.0, 0.5)
    assert not adv.requires_grad and not ret.requires_grad


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_perfect_critic_gives_zero_mean_advantage(lam):
    """V(s_t) = E[R | s_t] under the data itself: the mean of R over the responses that share
    the prefix s_t. Four 2-token responses: (a, x) R=1, (a, y) R=0, (b, x) R=1, (b, x) R=1.
    V(s_0) = 3/4 for all; V(s_1) = 1/2 after a, 1 after b. Then E[δ_t] = 0 at every t, so the
    mean advantage over the data is 0 at every position for any λ (γ = 1)."""
    reward = t([1.0, 0.0, 1.0, 1.0])
    mask = torch.ones(4, 2, dtype=torch.float64)
    values = t([[0.75, 0.5], [0.75, 0.5], [0.75, 1.0], [0.75, 1.0]])
    adv, _ = gae(outcome_token_rewards(reward, mask), values, mask, 1.0, lam)
    assert_close(adv.mean(dim=0), [0.0, 0.0])
    assert adv.abs().sum() > 0  # individual advantages are not 0
    # a wrong critic (V = 0) does not: the mean advantage is then E[R] = 3/4
    adv, _ = gae(outcome_token_rewards(reward, mask), torch.zeros_like(values), mask, 1.0, lam)
    assert adv.mean(dim=0)[1].item() == pytest.approx(0.75)


# ---------------------------------------------------------------- whitening


def test_whiten_hand_values():
    # real tokens [1, 2, 3]: mean 2, biased var 2/3 -> ±1 / sqrt(2/3) = ±1.2247449
    x, mask = t([[1.0, 2.0, 3.0, 100.0]]), MASK
    assert_close(whiten(x, mask), [[-1.2247449, 0.0, 1.2247449, 0.0]], atol=1e-7)
    # scale only: + mean back
    assert_close(whiten(x, mask, shift_mean=False), [[0.7752551, 2.0, 3.2247449, 0.0]], atol=1e-7)


def test_whiten_masked_mean_zero_std_one_over_the_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, generator=g, dtype=torch.float64) * 5 + 2
    mask = (torch.arange(6) < torch.randint(1, 7, (3, 4, 1), generator=g)).double()
    out = whiten(x, mask)
    real = out[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-8)
    assert (out[~mask.bool()] == 0).all()


# ---------------------------------------------------------------- value loss


@pytest.mark.parametrize("v, v_old, ret, loss, grad", [
    # V = 1.5, V_old = 1, R = 0: unclipped 1.5² = 2.25 > clipped (1.2)² = 1.44 -> ½·2.25, dV = 1.5
    (1.5, 1.0, 0.0, 1.125, 1.5),
    # V = 0.5, V_old = 1, R = 0: unclipped 0.25 < clipped (0.8)² = 0.64 -> 0.32, gradient 0
    (0.5, 1.0, 0.0, 0.32, 0.0),
    # V = 1.5, V_old = 1, R = 2: unclipped 0.25 < clipped (1.2 - 2)² = 0.64 -> 0.32, gradient 0
    (1.5, 1.0, 2.0, 0.32, 0.0),
    # V = 0.5, V_old = 1, R = 2: unclipped 2.25 > clipped (0.8 - 2)² = 1.44 -> 1.125, dV = -1.5
    (0.5, 1.0, 2.0, 1.125, -1.5),
    # V = 1.1 inside [0.8, 1.2]: both branches equal, ½·1.21 = 0.605, dV = 1.1
    (1.1, 1.0, 0.0, 0.605, 1.1),
])
def test_clipped_value_loss_values_and_gradients(v, v_old, ret, loss, grad):
    values = t([[v]]).requires_grad_()
    out = value_loss(values, t([[v_old]]), t([[ret]]), t([[1.0]]), clip_eps=0.2)
    (g,) = torch.autograd.grad(out.sum(), values)
    assert_close(out.detach(), [[loss]])
    assert_close(g, [[grad]])


def test_unclipped_value_loss_and_padding():
    values = t([[1.5, 0.5, 7.0]]).requires_grad_()
    mask = t([[1.0, 1.0, 0.0]])
    out = value_loss(values, t([[1.0, 1.0, float("nan")]]), t([[0.0, 0.0, 0.0]]), mask, None)
    assert_close(out.detach(), [[1.125, 0.125, 0.0]])  # ½ (V - R)², padding 0 (not nan)
    (g,) = torch.autograd.grad(aggregate(out, mask, "token_mean"), values)
    assert_close(g, [[0.75, 0.25, 0.0]])  # (V - R) / 2 tokens


def test_value_loss_does_not_differentiate_targets():
    ret, old = t([[0.0]]).requires_grad_(), t([[1.0]]).requires_grad_()
    out = value_loss(t([[1.5]]), old, ret, t([[1.0]]), clip_eps=0.2)
    assert not out.requires_grad


def test_value_clip_frac():
    # the five cases above: the clipped branch is strictly larger in cases 2 and 3 only;
    # a sixth, padding token where it would be larger, is not counted
    values = t([[1.5, 0.5, 1.5, 0.5, 1.1, 0.5]])
    values_old = t([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    returns = t([[0.0, 0.0, 2.0, 2.0, 0.0, 0.0]])
    mask = t([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    assert value_clip_frac(values, values_old, returns, mask, 0.2) == pytest.approx(2 / 5)
    assert value_clip_frac(values, values_old, returns, mask, 1.0) == 0.0  # nothing clipped
