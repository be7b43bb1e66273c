"""--async-rollouts (async_rollouts.py): with lag 0 the machinery is synchronous training; with
lag 1 each batch was sampled by the weights one update behind, and π_old is the sampler's."""

import copy
import json

import pytest
import torch

from lmrl.async_rollouts import RolloutsAhead
from lmrl.config import Config, ConfigError
from lmrl.state import build_state
from lmrl.step import grpo_step
from lmrl.trainer import build_task

TOY = {"train": {"B": 8, "G": 4, "steps": 5}, "task": {"n": 4, "V": 6, "heldout_size": 50}}


def toy_cfg(**train) -> Config:
    return Config().replace(train={**TOY["train"], **train}, task=TOY["task"])


def run(cfg: Config, lag: int | None, steps: int = 4, state=None):
    """`steps` steps synchronously (lag None) or through RolloutsAhead; -> state, metrics."""
    state = state or build_state(cfg)
    task = build_task(cfg)
    ahead = None if lag is None else RolloutsAhead(state, task, cfg, lag=lag)
    try:
        metrics = [grpo_step(state, task, cfg, ahead) for _ in range(steps)]
    finally:
        if ahead is not None:
            ahead.close()
    return state, metrics


def test_lag_0_is_synchronous_training_on_the_toy_task():
    cfg = toy_cfg()
    sync, m_sync = run(cfg, None)
    lag0, m_lag0 = run(cfg, 0)
    for a, b in zip(sync.policy.parameters(), lag0.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert [m["train/reward_mean"] for m in m_sync] == [m["train/reward_mean"] for m in m_lag0]
    assert all(m["train/rollout_lag"] == 0.0 for m in m_lag0)


def test_lag_0_is_synchronous_training_on_a_causal_lm():
    pytest.importorskip("transformers")
    from test_hf_policy import tiny_model, tiny_tokenizer

    from lmrl.policies.hf import HFPolicy

    cfg = Config().replace(policy={"model": "unused"}, task={"task": "sort_text", "n": 3},
                           train={"B": 4, "G": 4, "lr": 1e-3}, algo={"kl_weight": 0.1})

    def policy():
        torch.manual_seed(0)
        return HFPolicy(tiny_model("llama"), tiny_tokenizer(), max_new_tokens=6)

    sync, m_sync = run(cfg, None, 3, build_state(cfg, policy()))
    lag0, m_lag0 = run(cfg, 0, 3, build_state(cfg, policy()))
    # π_old is the sampler's stored log-probs instead of a recomputed pass: equal to ~1e-6,
    # which AdamW turns into up to ~lr/10 where a gradient entry is near 0.
    for a, b in zip(sync.policy.parameters(), lag0.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert [m["train/reward_mean"] for m in m_sync] == [m["train/reward_mean"] for m in m_lag0]


def test_lag_1_samples_with_the_weights_before_the_overlapped_update():
    cfg = toy_cfg()
    state = build_state(cfg)
    task = build_task(cfg)
    ahead = RolloutsAhead(state, task, cfg, lag=1)
    try:
        first = grpo_step(state, task, cfg, ahead)  # collected now; step 2's batch collected
        theta_0 = [p.detach().clone() for p in ahead.sampler.parameters()]  # during update 1
        now = list(state.policy.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(theta_0, now, strict=True))
        batch = ahead.pending.result()
        behind = copy.deepcopy(state.policy)
        with torch.no_grad():
            for p, w in zip(behind.parameters(), theta_0, strict=True):
                p.copy_(w)
            logp_behind = behind.logprobs(batch.prompts, batch.responses, batch.response_mask)[0]
            logp_now = state.policy.logprobs(batch.prompts, batch.responses,
                                             batch.response_mask)[0]
        torch.testing.assert_close(batch.logp_old, logp_behind)  # π_old: the sampler's θ_0
        assert not torch.allclose(batch.logp_old, logp_now)  # not the θ_1 it is trained from
        second = grpo_step(state, task, cfg, ahead)
    finally:
        ahead.close()
    assert first["train/rollout_lag"] == 0.0 and second["train/rollout_lag"] == 1.0


def test_a_checkpoint_taken_with_a_batch_ahead_saves_the_generator_before_its_draws():
    cfg = toy_cfg()
    state = build_state(cfg)
    task = build_task(cfg)
    ahead = RolloutsAhead(state, task, cfg, lag=1)
    try:
        before = state.generator.get_state()
        grpo_step(state, task, cfg, ahead)
        after_step_1 = state.generator_resume_state
        assert not torch.equal(after_step_1, before)  # step 1's own draws are in it
        assert not torch.equal(state.generator.get_state(), after_step_1)  # the batch ahead's
        assert torch.equal(state.rng_state()["generator"], after_step_1)
    finally:
        ahead.close()
    resumed = build_state(cfg)
    resumed.set_rng_state(state.rng_state())
    assert resumed.generator_resume_state is None
    assert torch.equal(resumed.generator.get_state(), after_step_1)


@pytest.mark.parametrize("groups, fragment", [
    ({"algo": {"critic": "separate"}, "policy": {"model": "m"}, "task": {"task": "sort_text"}},
     "algo.critic"),
    ({"algo": {"delta": "value"}}, "learned baseline"),
    ({"train": {"dynamic_sampling": True}}, "dynamic_sampling"),
])
def test_async_rollouts_refuses_what_the_sampling_thread_would_race_with(groups, fragment):
    groups = {k: dict(v) for k, v in groups.items()}
    groups.setdefault("train", {})["async_rollouts"] = True
    with pytest.raises(ConfigError, match=fragment):
        Config.from_dict(groups)


def test_an_async_toy_run_logs_its_lag_and_learns(tmp_path):
    from lmrl.cli import main

    main(["train", "--run-dir", str(tmp_path / "run"), "--steps", "300", "--async-rollouts",
          "--eval-every", "300", "--no-progress", "--n", "4", "--V", "6", "--heldout-size", "50"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    lags = [r["train/rollout_lag"] for r in rows if "train/rollout_lag" in r]
    assert lags[0] == 0.0 and set(lags[1:]) == {1.0}
    final = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert final["eval/exact_match"] > 0.8
