"""Tier 1-2 tests of lmrl.deltas: every delta against hand-computed numbers, plus equivalences.

Hand computations used below, for rewards R = [1, 2, 3, 6] (one group, G = 4):
  mean = 12 / 4 = 3                          -> centered = [-2, -1, 0, 3]
  unbiased var = (4 + 1 + 0 + 9) / 3 = 14/3  -> std = sqrt(14/3) = 2.160246899...
  normalized = centered / (std + 1e-6)       =  [-0.925820, -0.462910, 0, 1.388730]
  (the biased std sqrt(14/4) = 1.870829 would give [-1.069045, -0.534522, 0, 1.603567])
  rloo_i = R_i - mean of the other three     =  [1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3]
                                             =  [-8/3, -4/3, 0, 4]
  max_only                                   =  [0, 0, 0, 6]
  dr_grpo = centered                         =  [-2, -1, 0, 3]
  reinforce_pp, one batch of N = 4 (any B, G): biased var = 14/4 = 3.5, std = 1.8708287
    -> [-2, -1, 0, 3] / (1.8708287 + 1e-6)   =  [-1.0690444, -0.5345222, 0, 1.6035666]
"""

import pytest
import torch

from lmrl.deltas import (
    DELTAS,
    GROUP_BASELINE,
    centered,
    compute_deltas,
    dr_grpo,
    max_only,
    normalized,
    raw,
    reinforce_pp,
    rloo,
)

R = torch.tensor([[1.0, 2.0, 3.0, 6.0]])


def assert_close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0,
                               atol=atol)


# ---------------------------------------------------------------- hand-computed values


def test_raw_is_the_reward_and_a_copy():
    out = raw(R)
    assert_close(out, [[1.0, 2.0, 3.0, 6.0]], atol=0)
    out[0, 0] = 100.0
    assert R[0, 0].item() == 1.0  # raw must not alias its input


def test_centered_hand_values():
    assert_close(centered(R), [[-2.0, -1.0, 0.0, 3.0]], atol=0)


def test_centered_groups_are_independent():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 0.0, 0.0]])
    assert_close(centered(rewards), [[-2.0, -1.0, 0.0, 3.0], [5.0, 5.0, -5.0, -5.0]], atol=0)


def test_normalized_uses_unbiased_std_and_default_eps():
    # sqrt(14/3) = 2.1602468995; -2 / (2.1602468995 + 1e-6) = -0.9258197, etc.
    assert_close(normalized(R), [[-0.9258197, -0.4629098, 0.0, 1.3887296]], atol=2e-7)
    # and *not* the biased (G) std:
    assert not torch.allclose(normalized(R), torch.tensor([[-1.069045, -0.534522, 0.0, 1.603567]]),
                              atol=1e-3)


def test_normalized_round_numbers():
    # [1, 3, 5]: mean 3, centered [-2, 0, 2], unbiased var (4 + 0 + 4) / 2 = 4, std = 2.
    rewards = torch.tensor([[1.0, 3.0, 5.0]])
    assert_close(normalized(rewards, eps=0.0), [[-1.0, 0.0, 1.0]], atol=0)
    assert_close(normalized(rewards, eps=1.0), [[-2 / 3, 0.0, 2 / 3]])  # 2 / (2 + 1)
    assert_close(normalized(rewards), [[-0.9999995, 0.0, 0.9999995]], atol=1e-7)  # 2 / 2.000001


def test_compute_deltas_passes_eps_only_to_normalized():
    rewards = torch.tensor([[1.0, 3.0, 5.0]])
    assert_close(compute_deltas("normalized", rewards, eps=2.0), [[-0.5, 0.0, 0.5]])  # 2/(2+2)
    assert_close(compute_deltas("centered", rewards, eps=2.0), [[-2.0, 0.0, 2.0]], atol=0)


def test_rloo_hand_values():
    assert_close(rloo(R), [[-8 / 3, -4 / 3, 0.0, 4.0]])


def test_rloo_matches_explicit_leave_one_out_loop():
    rewards = torch.rand(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    B, G = rewards.shape
    expected = torch.empty_like(rewards)
    for b in range(B):
        for i in range(G):
            others = [rewards[b, j].item() for j in range(G) if j != i]
            expected[b, i] = rewards[b, i].item() - sum(others) / len(others)
    torch.testing.assert_close(rloo(rewards), expected, rtol=0, atol=1e-12)


def test_max_only_hand_values():
    assert_close(max_only(R), [[0.0, 0.0, 0.0, 6.0]], atol=0)


def test_max_only_ties_all_keep_raw_reward():
    rewards = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.5, 4.0, 4.0, 4.0]])
    assert_close(max_only(rewards), [[0.0, 3.0, 3.0, 0.0], [0.0, 4.0, 4.0, 4.0]], atol=0)


def test_max_only_all_equal_group_keeps_R_no_baseline():
    """max_only has no baseline: a group whose rewards are all equal keeps R for every sample
    (like raw), unlike centered/normalized/rloo, which give 0 for such a group."""
    rewards = torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    assert_close(max_only(rewards), [[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]], atol=0)
    assert_close(centered(rewards), [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=0)


def test_max_only_negative_rewards_keep_the_max_value():
    assert_close(max_only(torch.tensor([[-1.0, -3.0]])), [[-1.0, 0.0]], atol=0)


def test_dr_grpo_is_the_group_mean_baseline_without_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    # group 1: mean 0.5 -> [-0.5, -0.5, 0.5, 0.5]; normalized would divide by std 0.57735
    assert_close(dr_grpo(rewards), [[-2.0, -1.0, 0.0, 3.0], [-0.5, -0.5, 0.5, 0.5]], atol=0)
    assert DELTAS["dr_grpo"].needs_group and not DELTAS["dr_grpo"].reads_eps


def test_reinforce_pp_normalises_over_the_whole_batch_not_the_group():
    # The same four rewards as two groups of 2: batch mean 3, biased batch std sqrt(3.5).
    rewards = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert_close(reinforce_pp(rewards), [[-1.0690444, -0.5345222], [0.0, 1.6035666]], atol=2e-7)
    # per group it would be [[-0.707, 0.707], [-0.707, 0.707]] (normalized): not that
    assert not torch.allclose(reinforce_pp(rewards), normalized(rewards), atol=1e-2)
    # and not the unbiased std sqrt(14/3): -2 / 2.1602469 = -0.9258201
    assert abs(reinforce_pp(rewards)[0, 0].item() + 0.9258201) > 0.1


def test_reinforce_pp_works_with_one_sample_per_prompt():
    rewards = torch.tensor([[1.0], [2.0], [3.0], [6.0]])  # G = 1: a group baseline would be 0
    assert_close(compute_deltas("reinforce_pp", rewards),
                 [[-1.0690444], [-0.5345222], [0.0], [1.6035666]], atol=2e-7)
    spec = DELTAS["reinforce_pp"]
    assert not spec.needs_group and spec.reads_eps and spec.batch_stats


def test_reinforce_pp_eps_round_numbers():
    # [0, 0, 2, 2]: mean 1, biased std 1 -> ±1 / (1 + eps)
    rewards = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert_close(compute_deltas("reinforce_pp", rewards, eps=0.0), [[-1.0, -1.0], [1.0, 1.0]],
                 atol=0)
    assert_close(compute_deltas("reinforce_pp", rewards, eps=1.0), [[-0.5, -0.5], [0.5, 0.5]],
                 atol=0)


@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.0, -1.5])
def test_reinforce_pp_equal_batch_gives_exact_zero(value):
    out = compute_deltas("reinforce_pp", torch.full((3, 2), value), eps=0.0)
    assert not torch.isnan(out).any() and (out == 0).all()
    # one group constant but not the batch: the batch baseline still moves that group
    # [1, 1, 2, 4]: mean 2, biased var (1 + 1 + 0 + 4) / 4 = 1.5 -> -1 / 1.2247449 = -0.8164966
    out = compute_deltas("reinforce_pp", torch.tensor([[1.0, 1.0], [2.0, 4.0]]), eps=0.0)
    assert_close(out, [[-0.8164966, -0.8164966], [0.0, 1.6329932]], atol=2e-7)


def test_reinforce_pp_unscored_samples_leave_the_batch_statistics():
    # scored: 1, 3, 6, 2 -> mean 3, deviations [-2, 0, 3, -1], biased var 14/4 as above
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan], [3.0, 6.0], [nan, 2.0]])
    assert_close(compute_deltas("reinforce_pp", rewards),
                 [[-1.0690444, 0.0], [0.0, 1.6035666], [0.0, -0.5345222]], atol=2e-7)
    all_nan = torch.full((2, 2), nan)
    assert (compute_deltas("reinforce_pp", all_nan) == 0).all()


def test_dr_grpo_unscored_samples_leave_their_group():
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan, 3.0], [nan, nan, 5.0]])
    # group 0: scored 1, 3 -> mean 2 -> [-1, 0, 1]; group 1: one scored sample -> 0
    assert_close(compute_deltas("dr_grpo", rewards), [[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], atol=0)


# ---------------------------------------------------------------- equivalences and edge cases


def test_centered_sums_to_zero_per_group():
    rewards = torch.rand(16, 8, generator=torch.Generator().manual_seed(1)) * 10
    sums = centered(rewards).sum(dim=-1)
    torch.testing.assert_close(sums, torch.zeros(16), rtol=0, atol=1e-5)


def test_rloo_is_scaled_centered():
    rewards = torch.rand(4, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rloo(rewards), centered(rewards) * 5 / 4)


@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.7, 2.0, 0.0, -1.5, 1e-8])
@pytest.mark.parametrize("name", sorted(GROUP_BASELINE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_rewards_give_exact_zero(name, value, dtype):
    # a second, non-constant group checks that the zeroing is per group
    rewards = torch.tensor([[value] * 3, [0.0, 1.0, 2.0]], dtype=dtype)
    out = compute_deltas(name, rewards)
    assert not torch.isnan(out).any()
    assert (out[0] == 0).all(), out[0].tolist()  # exactly 0, not 1 ulp of noise
    assert out[1, 0].item() < 0 < out[1, 2].item()


@pytest.mark.parametrize("G", [2, 3, 5, 10])
def test_equal_awkward_floats_exact_zero_various_G(G):
    rewards = torch.full((1, G), 0.1)
    for name in GROUP_BASELINE:
        assert (compute_deltas(name, rewards) == 0).all(), name


def test_normalized_eps_zero_constant_group_is_zero_not_nan():
    out = normalized(torch.tensor([[2.0, 2.0, 2.0]]), eps=0.0)
    assert not torch.isnan(out).any()
    assert (out == 0).all()


def test_seed_two_state_baseline_example():
    """Seed: B(S1)=10, B(S2)=1 turn rewards 11, 9 (S1) and 0, 2 (S2) into 1, -1, -1, 1.
    With both actions sampled once per state the group mean is exactly that baseline."""
    rewards = torch.tensor([[11.0, 9.0], [0.0, 2.0]])
    baselines = torch.tensor([[10.0], [1.0]])
    assert_close(rewards - baselines, [[1.0, -1.0], [-1.0, 1.0]], atol=0)
    assert_close(centered(rewards), [[1.0, -1.0], [-1.0, 1.0]], atol=0)
    # rloo with G=2: 11 - 9 = 2, 9 - 11 = -2, 0 - 2 = -2, 2 - 0 = 2
    assert_close(rloo(rewards), [[2.0, -2.0], [-2.0, 2.0]], atol=0)


@pytest.mark.parametrize("name", list(DELTAS))
def test_shape_preserved_and_input_untouched(name):
    rewards = torch.rand(3, 4, generator=torch.Generator().manual_seed(3))
    before = rewards.clone()
    out = compute_deltas(name, rewards, baseline=torch.full((3, 1), 0.5))  # B(S): value, ...
    assert out.shape == (3, 4)
    assert torch.equal(rewards, before)


def test_compute_deltas_dispatches_each_name():
    expected = {
        "raw": [[1.0, 2.0, 3.0, 6.0]],
        "centered": [[-2.0, -1.0, 0.0, 3.0]],
        "normalized": [[-0.9258197, -0.4629098, 0.0, 1.3887296]],
        "max_only": [[0.0, 0.0, 0.0, 6.0]],
        "rloo": [[-8 / 3, -4 / 3, 0.0, 4.0]],
        "dr_grpo": [[-2.0, -1.0, 0.0, 3.0]],
        "reinforce_pp": [[-1.0690444, -0.5345222, 0.0, 1.6035666]],
        "value": [[-1.0, 0.0, 1.0, 4.0]],  # R - B(S), B(S) = 2
        "running_mean": [[-1.0, 0.0, 1.0, 4.0]],
    }
    assert set(expected) == set(DELTAS)
    for name, values in expected.items():  # only a learned-baseline delta reads the baseline
        assert_close(compute_deltas(name, R, baseline=torch.tensor([[2.0]])), values, atol=2e-7)


def test_compute_deltas_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="nope") as err:
        compute_deltas("nope", R)
    for name in ("raw", "centered", "normalized", "max_only", "rloo", "dr_grpo", "reinforce_pp"):
        assert name in str(err.value)


# ---------------------------------------------------------------- the registry's metadata


@pytest.mark.parametrize("name", list(DELTAS))
def test_each_delta_takes_eps_exactly_when_its_spec_says_so(name):
    import inspect
    spec = DELTAS[name]
    assert list(inspect.signature(spec.fn).parameters) == (
        ["rewards", "eps"] if spec.reads_eps else
        ["rewards", "baseline"] if spec.learned_baseline else ["rewards"])
    assert (name in GROUP_BASELINE) == spec.needs_group


def test_compute_deltas_follows_the_metadata_not_the_name(monkeypatch):
    from lmrl.deltas import DeltaSpec
    rewards = torch.tensor([[1.0, 3.0, 5.0]])
    monkeypatch.setitem(DELTAS, "scaled", DeltaSpec(normalized, "test", reads_eps=True))
    assert_close(compute_deltas("scaled", rewards, eps=2.0), [[-0.5, 0.0, 0.5]])
    monkeypatch.setitem(DELTAS, "unscaled", DeltaSpec(normalized, "test"))  # eps not passed
    assert_close(compute_deltas("unscaled", rewards, eps=2.0), normalized(rewards).tolist())
