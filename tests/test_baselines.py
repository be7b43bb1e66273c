"""Learned baselines B(S) (baselines.py, delta=value / running_mean): the pure Δ = R - B(S) by
hand, the running mean by hand over 3 steps, V's regression, the seed's two-state example with
a perfect baseline, their config rules, a G=1 run that learns, and a bit-identical resume.

Hand computation of running_mean over 3 steps, prompts p=(0,1), q=(2,3), r=(4,5), G=2:
  step 1: [p, q], rewards [[1, 3], [4, 4]]   B = [0, 0] (nothing seen)
          -> p 2 (2 rewards), q 4 (2), overall 12/4 = 3 (4)
  step 2: [p, r], rewards [[5, 5], [0, 4]]   B = [2, 3] (r unseen: the overall mean)
          exact:     p (4 + 10)/4 = 3.5, r 2, overall (12 + 14)/8 = 3.25
          decay 3/4: p 0.75·2 + 0.25·5 = 2.75, r 2 (first step: its mean),
                     overall 0.75·3 + 0.25·3.5 = 3.125
  step 3: [p, p], rewards [[0, 0], [1, 1]]   B = [3.5, 3.5] exact, [2.75, 2.75] decay
          exact:     p (14 + 2)/8 = 2, overall (26 + 2)/12 = 7/3
          decay 3/4: p 0.75·2.75 + 0.25·0.5 = 2.1875, overall 0.75·3.125 + 0.25·0.5 = 2.46875
"""

import shutil

import pytest
import torch

from lmrl import checkpoint
from lmrl.baselines import BASELINES, RunningMeanBaseline, ValueBaseline, fit_metrics
from lmrl.config import Config, ConfigError
from lmrl.deltas import DELTAS, baseline_subtracted, compute_deltas
from lmrl.logging import read_metrics
from lmrl.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: a second thread only contends

P, Q, R_, S_ = (0, 1), (2, 3), (4, 5), (1, 0)
STEPS = [  # (prompts, rewards (B, G))
    ([P, Q], [[1.0, 3.0], [4.0, 4.0]]),
    ([P, R_], [[5.0, 5.0], [0.0, 4.0]]),
    ([P, P], [[0.0, 0.0], [1.0, 1.0]]),
]


def prompts(*rows) -> torch.Tensor:
    return torch.tensor(rows)


# ---------------------------------------------------------------- the pure delta


def test_baseline_subtracted_is_the_seeds_two_state_example():
    # S1: A1 -> 11, A2 -> 9; S2: A1 -> 0, A2 -> 2; B(S1) = 10, B(S2) = 1.
    rewards = torch.tensor([[11.0, 9.0], [0.0, 2.0]])
    delta = baseline_subtracted(rewards, torch.tensor([[10.0], [1.0]]))
    assert delta.tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    per_sample = torch.tensor([[10.0, 8.0], [1.0, 3.0]])  # (B, G) baselines subtract elementwise
    assert baseline_subtracted(rewards, per_sample).tolist() == [[1.0, 1.0], [-1.0, -1.0]]


def test_compute_deltas_passes_the_baseline_and_zeroes_unscored_samples():
    rewards = torch.tensor([[1.0, float("nan"), 4.0]])  # G = 3, one sample unscored
    for name in ("value", "running_mean"):
        assert compute_deltas(name, rewards, baseline=torch.tensor([[2.0]])).tolist() == \
            [[-1.0, 0.0, 2.0]]
        with pytest.raises(ValueError, match="pass baseline"):
            compute_deltas(name, rewards)


def test_every_learned_baseline_delta_has_a_baseline():
    assert set(BASELINES) == {n for n, s in DELTAS.items() if s.learned_baseline}
    assert not any(DELTAS[name].needs_group for name in BASELINES)


def test_fit_metrics_by_hand():
    # values [1, 3]; rewards [[0, 2], [3, 5]]: residuals [-1, 1, 0, 2], mse 6/4; Var(R) of
    # [0, 2, 3, 5] = 13/3 (unbiased), Var(residual) = 5/3 -> explained 1 - 5/13 = 8/13.
    m = fit_metrics(torch.tensor([1.0, 3.0]), torch.tensor([[0.0, 2.0], [3.0, 5.0]]))
    assert m["baseline/mean"] == 2.0 and m["baseline/mse"] == 1.5
    assert m["baseline/explained_variance"] == pytest.approx(8 / 13)
    flat = fit_metrics(torch.tensor([1.0]), torch.tensor([[2.0, 2.0]]))
    assert "baseline/explained_variance" not in flat  # undefined when Var(R) = 0


# ---------------------------------------------------------------- running mean by hand


@pytest.mark.parametrize("decay, used, final", [
    (0.0, [[0.0, 0.0], [2.0, 3.0], [3.5, 3.5]], [2.0, 4.0, 2.0, 7 / 3]),
    (0.75, [[0.0, 0.0], [2.0, 3.0], [2.75, 2.75]], [2.1875, 4.0, 2.0, 2.46875]),
])
def test_running_mean_by_hand_over_three_steps(decay, used, final):
    baseline = RunningMeanBaseline(decay)
    seen = []
    for rows, rewards in STEPS:
        x = prompts(*rows)
        assert baseline.values(x).tolist() == pytest.approx(used.pop(0))
        seen.append(baseline.update(x, torch.tensor(rewards))["baseline/seen_frac"])
    assert seen == [0.0, 0.5, 1.0]
    assert baseline.values(prompts(P, Q, R_, S_)).tolist() == pytest.approx(final)


def test_running_mean_state_round_trips_through_a_checkpoint(tmp_path):
    baseline = RunningMeanBaseline(0.5)
    for rows, rewards in STEPS:
        baseline.update(prompts(*rows), torch.tensor(rewards))
    checkpoint.save(tmp_path, 3, {"baseline": baseline.state_dict()}, {}, keep=1)
    restored = RunningMeanBaseline(0.5)
    restored.load_state_dict(checkpoint.load(checkpoint.step_dir(tmp_path, 3))[0]["baseline"])
    assert restored.means == baseline.means and restored.overall == baseline.overall
    empty = RunningMeanBaseline()
    empty.load_state_dict(RunningMeanBaseline().state_dict())
    assert empty.values(prompts(P)).tolist() == [0.0]  # before any reward: no baseline


# ---------------------------------------------------------------- the value network


def test_value_regression_reduces_the_mse_on_a_fixed_reward_function():
    """R = E[R | S] + noise with E[R | S] = the number of prompt positions already in sorted
    place; V starts at 0 and must learn the prompt-dependent part."""
    gen = torch.Generator().manual_seed(0)
    value = ValueBaseline(V=6, n=4, dim=16, hidden=64, lr=1e-2, seed=0)

    def expected(x):  # (B, n) -> (B,)
        return (x == x.sort(dim=-1).values).sum(-1).float()

    heldout = torch.randint(0, 6, (500, 4), generator=gen)
    before = (value.values(heldout) - expected(heldout)).pow(2).mean().item()
    assert value.values(heldout).abs().max() == 0  # the output layer starts at 0
    for _ in range(300):
        x = torch.randint(0, 6, (32, 4), generator=gen)
        noise = torch.randn(32, 4, generator=gen) * 0.5
        value.update(x, expected(x)[:, None] + noise)  # G = 4
    after = (value.values(heldout) - expected(heldout)).pow(2).mean().item()
    best_constant = expected(heldout).var(unbiased=False).item()  # a V that ignores S: 1.198
    # Measured: before 3.43, after 0.232.
    assert after < 0.1 * before and after < 0.35 * best_constant, (before, after)


def test_value_update_sees_rewards_only_after_the_values_were_read():
    value = ValueBaseline(V=6, n=2, dim=4, hidden=8, lr=0.1, seed=0)
    x, rewards = prompts(P, Q), torch.tensor([[5.0], [5.0]])
    used = value.values(x)
    metrics = value.update(x, rewards)
    assert metrics["baseline/mean"] == used.mean().item() == 0.0  # pre-update V
    assert metrics["baseline/mse"] == 25.0
    assert (value.values(x) > used).all()  # and the step moved V towards R


# ---------------------------------------------------------------- a perfect baseline


def test_a_perfect_baseline_centres_delta_and_running_mean_finds_it():
    """The seed's two states under π(A1|S1) = 0.3, π(A1|S2) = 0.6: E[R|S1] = 0.3·11 + 0.7·9
    = 9.6 and E[R|S2] = 0.6·0 + 0.4·2 = 0.8. With B = E[R|S], E[Δ | S] = 0; a running mean of
    the rewards converges to it."""
    gen = torch.Generator().manual_seed(0)
    table = torch.tensor([[11.0, 9.0], [0.0, 2.0]])  # (state, action)
    p_a1 = torch.tensor([0.3, 0.6])

    def sample(G):  # -> states (2,), rewards (2, G): each state G times
        a2 = (torch.rand(2, G, generator=gen) >= p_a1[:, None]).long()
        return table.gather(1, a2)

    rewards = sample(50_000)
    perfect = torch.tensor([[9.6], [0.8]])
    assert baseline_subtracted(rewards, perfect).mean(dim=1).abs().max() < 0.02
    assert baseline_subtracted(rewards, perfect).var() < 0.3 * rewards.var()  # less noise
    learned = RunningMeanBaseline()
    states = torch.tensor([[0], [1]])
    for _ in range(100):
        learned.update(states, sample(100))
    assert learned.values(states).tolist() == pytest.approx([9.6, 0.8], abs=0.05)
    fresh = sample(50_000)
    delta = baseline_subtracted(fresh, learned.values(states)[:, None])
    assert delta.mean(dim=1).abs().max() < 0.05


# ---------------------------------------------------------------- config


def build(**groups) -> Config:
    return Config().replace(**groups)


@pytest.mark.parametrize("delta", ["value", "running_mean"])
def test_g1_is_accepted_with_a_learned_baseline(delta):
    assert build(algo={"delta": delta}, train={"G": 1}).train.G == 1


@pytest.mark.parametrize("delta", ["centered", "normalized", "rloo"])
def test_g1_is_still_refused_with_a_group_baseline(delta):
    with pytest.raises(ConfigError, match="needs G >= 2") as err:
        build(algo={"delta": delta}, train={"G": 1})
    assert "delta=value/running_mean" in str(err.value)


@pytest.mark.parametrize("algo, match", [
    ({"delta": "raw", "value_lr": 0.1}, "algo.value_lr=0.1 has no effect here .only delta=value"),
    ({"delta": "running_mean", "value_lr": 0.1}, "algo.value_lr=0.1 has no effect"),
    ({"delta": "value", "baseline_decay": 0.9},
     "algo.baseline_decay=0.9 has no effect here .only delta=running_mean"),
    ({"delta": "running_mean", "baseline_decay": 1.0}, "in .0, 1."),
    ({"delta": "value", "value_lr": 0.0}, "must be in .0, 1."),
])
def test_baseline_settings_are_refused_where_they_do_nothing_or_are_out_of_range(algo, match):
    with pytest.raises(ConfigError, match=match):
        build(algo=algo)


def test_baseline_settings_are_read_and_described():
    from lmrl.config import describe

    cfg = build(algo={"delta": "running_mean", "baseline_decay": 0.9})
    assert "delta: running_mean (R - the running mean of R for the prompt, baseline_decay=0.9)" \
        in describe(cfg)
    assert build(algo={"delta": "value", "value_lr": 0.05}).algo.value_lr == 0.05


@pytest.mark.parametrize("delta", ["value", "running_mean"])
def test_a_causal_lm_is_refused_with_a_learned_baseline(delta):
    with pytest.raises(ConfigError, match="toy sort task's prompts; with a causal LM use a group"):
        build(policy={"model": "some/model"}, task={"task": "sort_text"}, algo={"delta": delta})


# ---------------------------------------------------------------- whole runs

TOY = {"task": {"n": 4, "V": 6, "heldout_size": 200}, "policy": {"dim": 16, "hidden": 64}}


def toy(tmp_path, name: str, delta: str, **train_fields) -> Config:
    return Config().replace(
        **TOY, algo={"delta": delta},
        train={"G": 1, "B": 32, "threads": 1, **train_fields},
        log={"run_dir": str(tmp_path / name), "progress": False, "eval_every": 100,
             "save_every": 4, "keep_checkpoints": 5})


def comparable(run_dir) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")}
            for row in read_metrics(run_dir)]


def test_g1_run_with_a_value_baseline_learns_and_beats_no_baseline(tmp_path):
    """Measured (200 steps, B=32, G=1, seeds 0-5): held-out exact match 0.375-0.76 with
    delta=value against 0.115-0.27 with delta=raw (the same samples' Δ without B(S)); held-out
    positional reward 3.14-3.67 against 2.37-2.92, from 0.45-0.88 at the start."""
    summary = train(toy(tmp_path, "value", "value", steps=200), verbose=False)
    start = read_metrics(tmp_path / "value")[0]
    assert summary["eval/reward"] > start["eval/reward"] + 2.0
    assert summary["eval/exact_match"] > 0.35
    rows = read_metrics(tmp_path / "value")
    assert rows[-1]["baseline/mean"] > 2.0  # V followed the rising reward
    raw = train(toy(tmp_path, "raw", "raw", steps=200), verbose=False)
    assert summary["eval/exact_match"] > raw["eval/exact_match"] + 0.2


def test_toy_ppo_learns_in_seconds(tmp_path):
    """The toy task's PPO: Δ = R − V(S) from the learned value baseline, the clipped loss and
    μ = 4 updates per batch, G = 1. Measured: held-out exact match 0.915 after 200 steps (3.5 s)
    against 0.76 with μ = 1, from 0.0."""
    cfg = toy(tmp_path, "ppo", "value", steps=200).replace(algo={"loss": "clipped", "mu": 4})
    summary = train(cfg, verbose=False)
    rows = read_metrics(tmp_path / "ppo")
    assert rows[0]["eval/exact_match"] < 0.1 and summary["eval/exact_match"] > 0.8
    clipped = [r["loss/clip_frac_low"] + r["loss/clip_frac_high"] for r in rows if "loss/pg" in r]
    assert max(clipped) > 0  # the later of the μ passes do leave the trust region


@pytest.mark.parametrize("delta", ["value", "running_mean"])
def test_resumed_run_equals_the_uninterrupted_one(tmp_path, delta):
    """A copy of a 10-step run cut back to its step-4 checkpoint and resumed repeats steps
    5-10 exactly: metrics, weights and the baseline's state. Had the checkpoint left the
    baseline out, the resumed Δ would differ from step 5 on."""
    straight = tmp_path / "straight"
    train(toy(tmp_path, "straight", delta, steps=10, seed=1), verbose=False)
    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    for path in checkpoint.checkpoints(cut)[1:]:  # keep step-4 only
        shutil.rmtree(path)
    cfg = toy(tmp_path, "cut", delta, steps=10, seed=1)
    train(cfg.replace(log={"resume": True}), verbose=False)
    assert comparable(cut) == comparable(straight)
    assert any("baseline/mse" in row for row in comparable(cut))
    assert (cut / "model.safetensors").read_bytes() == (straight / "model.safetensors").read_bytes()
    ours, theirs = (checkpoint.load(checkpoint.step_dir(d, 10))[0]["baseline"]
                    for d in (cut, straight))
    assert_same(ours, theirs)


def assert_same(a, b) -> None:
    """Nested state dicts equal, tensors bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_preflight_leaves_the_learned_baseline_alone(tmp_path):
    """The pre-flight collects step 1's batch through the step's collect; the baseline learns
    only after an update, so a run with it equals a run without it."""
    runs = []
    for name, preflight in (("with", True), ("without", False)):
        cfg = toy(tmp_path, name, "running_mean", steps=4)
        train(cfg.replace(log={"preflight": preflight}), verbose=False)
        runs.append(comparable(tmp_path / name))
    assert runs[0] == runs[1]
