"""DAPO's dynamic sampling: flat groups dropped and refilled to B, the rounds' limit, the
all-flat fallback, determinism, a causal LM's batches of different T joined without moving a
log-prob, and the settings it is refused with."""

import json
import math

import pytest
import torch
from helpers import CountingPolicy, config_from  # tests/helpers.py

from lmrl import distributed
from lmrl.cli import main
from lmrl.config import Config, ConfigError
from lmrl.dynamic_sampling import Scored, concatenate, fill, select, varied
from lmrl.state import build_state
from lmrl.step import collect, grpo_step
from lmrl.trainer import build_task, check_data_parallel

# Exact match on n=3, V=5 with a near-uniform start: most groups score all 0 (flat), some vary.
SPARSE = {"task": {"n": 3, "V": 5, "prompts": "all", "train_frac": 0.6, "reward": "exact_match"},
          "policy": {"dim": 16, "hidden": 32},
          "train": {"B": 8, "G": 4, "steps": 20, "dynamic_sampling": True,
                    "max_sample_rounds": 30}}
# The lecture's init on n=6, V=10: one answer per prompt, never sorted, every group flat.
ALL_FLAT = {"task": {"reward": "exact_match"}, "policy": {"init": "lecture"},
            "train": {"B": 4, "G": 4, "dynamic_sampling": True, "max_sample_rounds": 2}}


pytestmark = pytest.mark.usefixtures("one_thread")


def counted_collect(cfg: Config):
    state = build_state(cfg)
    state.policy = CountingPolicy(state.policy)
    return collect(state, build_task(cfg), cfg), state.policy.samples


def test_varied_needs_two_distinct_scored_rewards():
    nan = math.nan
    rewards = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.5, nan, 0.5], [nan, nan, nan],
                            [nan, 0.0, 2.0]])
    assert varied(rewards).tolist() == [True, False, False, False, True]


def fake_batch(first: int, pattern: list[bool]) -> Scored:
    """B = len(pattern) toy groups (prompts first, first+1, ...); a True group's rewards vary."""
    B = len(pattern)
    rewards = torch.tensor([[0.0, 1.0] if v else [1.0, 1.0] for v in pattern])
    prompts = torch.arange(first, first + B)[:, None]  # (B, 1)
    return Scored(prompts, prompts, torch.zeros(B, 2, 3, dtype=torch.long), torch.ones(B, 2, 3),
                  rewards, {"r": rewards})


def test_fill_keeps_the_first_b_varied_groups_in_order():
    draws = iter([fake_batch(0, [True, False, True, True]), fake_batch(4, [False, True, True,
                                                                           False])])
    batch, stats = fill(lambda: next(draws), 4, 5, prepare=lambda p: p)
    assert batch.prompts.flatten().tolist() == [0, 2, 3, 5]  # 6 varies too, but B are kept
    assert stats == {"train/sample_rounds": 2.0, "train/kept_group_frac": 5 / 8}
    assert bool(varied(batch.rewards).all()) and len(batch.table["r"]) == 4


def test_flat_groups_are_dropped_and_the_batch_refilled_to_b():
    cfg = config_from(SPARSE)
    plain = collect(build_state(cfg), build_task(cfg), cfg.replace(
        train={"dynamic_sampling": False, "max_sample_rounds": 3}))
    assert not bool(varied(plain.rewards).all()), "the first batch must have flat groups"
    batch, samples = counted_collect(cfg)
    assert len(batch.rewards) == len(batch.prompts) == len(batch.responses) == cfg.train.B
    assert bool(varied(batch.rewards).all())
    assert all(len(v) == cfg.train.B for v in batch.table.values())
    assert batch.stats["train/sample_rounds"] == samples > 1
    assert 0 < batch.stats["train/kept_group_frac"] < 1
    # Δ is computed on the kept groups: normalized Δ of a varied group is not all 0.
    assert bool((batch.delta != 0).any(dim=-1).all())


def test_the_rounds_stop_at_max_sample_rounds_with_fewer_groups():
    """One round: the first batch's varied groups only, the same batch collect draws without
    dynamic sampling (the same generator)."""
    cfg = config_from(SPARSE, train={"max_sample_rounds": 1})
    plain = collect(build_state(cfg), build_task(cfg), cfg.replace(
        train={"dynamic_sampling": False, "max_sample_rounds": 3}))
    rows = varied(plain.rewards)
    assert 0 < int(rows.sum()) < cfg.train.B
    batch, samples = counted_collect(cfg)
    assert samples == 1 and batch.stats["train/sample_rounds"] == 1
    assert torch.equal(batch.prompts, plain.prompts[rows])
    assert torch.equal(batch.responses, plain.responses[rows])
    assert batch.stats["train/kept_group_frac"] == int(rows.sum()) / cfg.train.B


def test_when_no_group_varies_the_last_batch_is_trained_as_it_is():
    cfg = config_from(ALL_FLAT)
    batch, samples = counted_collect(cfg)
    assert samples == 2 and batch.stats["train/sample_rounds"] == 2
    assert batch.stats["train/kept_group_frac"] == 0.0
    assert len(batch.rewards) == cfg.train.B and not bool(varied(batch.rewards).any())
    assert bool((batch.delta == 0).all())
    # The second round's batch: not the first (the generator moved on).
    first = collect(build_state(cfg), build_task(cfg), cfg.replace(
        train={"dynamic_sampling": False, "max_sample_rounds": 3}))
    assert not torch.equal(batch.prompts, first.prompts)


def test_the_same_seed_gives_the_same_run():
    cfg = config_from(SPARSE, train={"steps": 3})

    def run() -> tuple[list[dict], list[torch.Tensor]]:
        state, task = build_state(cfg), build_task(cfg)
        metrics = [grpo_step(state, task, cfg) for _ in range(3)]
        return ([{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics],
                [p.detach().clone() for p in state.policy.parameters()])

    (m1, p1), (m2, p2) = run(), run()
    assert m1 == m2 and all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert any(m["train/sample_rounds"] > 1 for m in m1)


def test_a_short_toy_run_updates_every_group(tmp_path):
    """Without a KL term the update skips groups whose Δ are all 0 (updated_group_frac < 1 with
    flat groups); dynamic sampling leaves none."""
    cfg = config_from(SPARSE, algo={"kl_weight": 0.0},
                 log={"run_dir": str(tmp_path / "run"), "eval_every": 20, "progress": False})
    from lmrl.trainer import train
    train(cfg, verbose=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in rows if "train/updated_group_frac" in r]
    assert len(steps) == 20
    assert all(r["train/updated_group_frac"] == 1.0 and r["train/flat_group_frac"] == 0.0
               for r in steps)
    assert all(1 <= r["train/sample_rounds"] <= 30 for r in steps)


def _scored(policy, prompts: list[str], max_new: int, seed: int) -> Scored:
    inputs = policy.prepare(prompts)
    rollout = policy.sample(inputs, 3, generator=torch.Generator().manual_seed(seed),
                            max_new_tokens=max_new)
    B = len(prompts)
    rewards = torch.arange(B * 3, dtype=torch.float32).reshape(B, 3)
    return Scored(prompts, inputs, rollout.responses, rollout.response_mask, rewards,
                  {"r": rewards * 2}, rollout.truncated, rollout.logp)


def test_a_causal_lms_batches_of_different_t_join_without_moving_a_log_prob():
    pytest.importorskip("transformers")
    from test_hf_policy import tiny_model, tiny_tokenizer

    from lmrl.policies.hf import HFPolicy

    policy = HFPolicy(tiny_model("gpt2"), tiny_tokenizer(), max_new_tokens=8)
    short = _scored(policy, ["1 2", "3 4 5 6 7", "8"], max_new=2, seed=0)
    long = _scored(policy, ["9 0 1", "2 3 4 5 6 7 8 9"], max_new=7, seed=1)
    assert short.responses.shape[-1] < long.responses.shape[-1]
    rows_short, rows_long = torch.tensor([0, 2]), torch.tensor([1])
    joined = concatenate([select(short, rows_short), select(long, rows_long)], policy.prepare)
    T = long.responses.shape[-1]
    assert joined.responses.shape == (3, 3, T) and joined.inputs.texts == ["1 2", "8",
                                                                           "2 3 4 5 6 7 8 9"]
    assert not bool(joined.response_mask[:2, :, 2:].any())
    assert torch.equal(joined.table["r"], torch.cat([short.table["r"][rows_short],
                                                     long.table["r"][rows_long]]))
    assert torch.equal(joined.truncated, torch.cat([short.truncated[rows_short],
                                                    long.truncated[rows_long]]))
    with torch.no_grad():
        logp = policy.logprobs(joined.inputs, joined.responses, joined.response_mask)[0]
        alone_short = policy.logprobs(short.inputs, short.responses, short.response_mask)[0]
        alone_long = policy.logprobs(long.inputs, long.responses, long.response_mask)[0]
    torch.testing.assert_close(logp[:2, :, :2], alone_short[rows_short], atol=1e-6, rtol=1e-5)
    assert bool((logp[:2, :, 2:] == 0).all())
    torch.testing.assert_close(logp[2:], alone_long[rows_long], atol=1e-6, rtol=1e-5)


def test_a_text_task_trains_with_dynamic_sampling(tmp_path):
    task = ["--task", "sort_text", "--n", "3", "--V", "5", "--heldout-size", "4"]
    main(["init-model", "--out", str(tmp_path / "init"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", *task])
    main(["train", "--model", str(tmp_path / "init"), "--run-dir", str(tmp_path / "run"),
          "--steps", "2", "--B", "2", "--G", "4", "--max-new-tokens", "6", "--eval-limit", "4",
          "--no-progress", "--threads", "1", "--dynamic-sampling", "--max-sample-rounds", "2",
          "--kl-weight", "0.1", *task])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in rows if "train/sample_rounds" in r]
    assert len(steps) == 2 and all(1 <= r["train/sample_rounds"] <= 2 for r in steps)


@pytest.mark.parametrize("groups, match", [
    ({"train": {"max_sample_rounds": 2}}, "max_sample_rounds=2 has no effect here"),
    ({"train": {"dynamic_sampling": True, "max_sample_rounds": 0}},
     "max_sample_rounds=0 must be >= 1"),
    ({"train": {"dynamic_sampling": True}, "algo": {"delta": "raw"}},
     "delta=raw: it has no group baseline"),
    ({"train": {"dynamic_sampling": True}, "algo": {"delta": "running_mean"}},
     "delta=running_mean: it has no group baseline"),
])
def test_settings_it_does_not_combine_with_are_refused(groups, match):
    with pytest.raises(ConfigError, match=match):
        Config().replace(**groups)


def test_the_cli_refuses_with_one_error_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--max-sample-rounds", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.startswith("lmrl: error: ")
    assert "train.max_sample_rounds=2 has no effect here" in " ".join(err.split())


def test_a_critic_and_several_processes_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match="dynamic_sampling with algo.critic=separate"):
        Config().replace(task={"task": "sort_text"}, policy={"model": "some/model"},
                         algo={"critic": "separate"}, train={"dynamic_sampling": True})
    cfg = Config().replace(train={"dynamic_sampling": True})
    check_data_parallel(cfg)  # one process: accepted
    monkeypatch.setattr(distributed, "world", lambda: 2)
    with pytest.raises(ConfigError, match="dynamic_sampling runs on one process"):
        check_data_parallel(cfg)
