"""Tiers 3 and 5: the GRPO step on the toy model — passes made, snapshots, accumulation, and
the step as its two seams, collect and update."""


import pytest
import torch
from helpers import CountingPolicy, config_from  # tests/helpers.py

from lmrl import checkpoint
from lmrl.config import Config
from lmrl.state import build_state
from lmrl.step import Batch, collect, grpo_step, reward_metrics, update
from lmrl.trainer import build_task

SMALL = {"task": {"n": 4, "V": 6, "heldout_size": 100},
         "policy": {"dim": 16, "hidden": 32},
         "train": {"B": 8, "G": 4, "steps": 50}}


def small_cfg(**groups) -> Config:
    return config_from(SMALL, **groups)


@pytest.mark.parametrize("mu", [1, 3])
def test_one_logprob_pass_per_update_and_none_for_logp_old(mu):
    """μ=1: logp_old is the detached current log-probs, so one pass; μ=3: three, not four."""
    cfg = small_cfg(algo={"mu": mu, "kl_weight": 0.0})
    state = build_state(cfg)
    state.policy = CountingPolicy(state.policy)
    grpo_step(state, build_task(cfg), cfg)
    assert state.policy.calls == mu


def test_mu_one_ratio_is_exactly_one():
    cfg = small_cfg(algo={"mu": 1})
    metrics = grpo_step(build_state(cfg), build_task(cfg), cfg)
    assert metrics["loss/ratio_min"] == 1.0 == metrics["loss/ratio_max"]
    assert metrics["loss/approx_kl_old"] == 0.0


def test_mu_greater_than_one_moves_the_ratio_and_reports_clipping():
    cfg = small_cfg(algo={"mu": 8, "clip_eps": 0.05}, train={"lr": 3e-2})
    metrics = grpo_step(build_state(cfg), build_task(cfg), cfg)
    assert metrics["loss/ratio_max"] > 1.0 or metrics["loss/ratio_min"] < 1.0
    assert metrics["loss/clip_frac_low"] + metrics["loss/clip_frac_high"] > 0


def test_reference_exists_only_with_kl_and_refreshes_on_schedule():
    assert build_state(small_cfg(algo={"kl_weight": 0.0})).reference is None
    cfg = small_cfg(algo={"kl_weight": 0.1, "ref_refresh": 3}, train={"lr": 1e-2})
    state, task = build_state(cfg), build_task(cfg)
    refreshed = [grpo_step(state, task, cfg)["train/ref_refreshed"] for _ in range(7)]
    assert refreshed == [0, 0, 1, 0, 0, 1, 0]
    ref = state.reference.model.state_dict()
    assert any(not torch.equal(v, state.policy.state_dict()[k]) for k, v in ref.items())


def test_reference_never_refreshed_stays_the_initial_policy():
    cfg = small_cfg(algo={"kl_weight": 0.1, "ref_refresh": 0}, train={"lr": 1e-2})
    state, task = build_state(cfg), build_task(cfg)
    initial = {k: v.clone() for k, v in state.policy.state_dict().items()}
    for _ in range(5):
        metrics = grpo_step(state, task, cfg)
    for k, v in state.reference.model.state_dict().items():
        assert torch.equal(v, initial[k])
    assert metrics["loss/kl_ref"] > 0


def test_parameters_change_after_one_step():
    cfg = small_cfg()
    state = build_state(cfg)
    before = {k: v.clone() for k, v in state.policy.state_dict().items()}
    grpo_step(state, build_task(cfg), cfg)
    changed = [k for k, v in state.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and state.step == 1


class EveryGroup(Batch):
    """A batch whose update runs every group, flat ones too: what the skip must equal."""

    def groups_with_gradient(self) -> Batch:
        return self


def _gradients(cfg: Config, k: int, flat: tuple[int, ...] = (),
               skip: bool = False) -> list[torch.Tensor]:
    """Gradients of one update of a collected batch in k micro-batches; the groups in `flat` get
    Δ = 0; skip: the update leaves them out (Batch.groups_with_gradient), else it runs them."""
    state, task = build_state(cfg), build_task(cfg)
    batch = collect(state, task, cfg)  # one micro-batch for the reference: the same for every k
    batch.response_mask[::2, :, -1] = 0  # ragged responses, so the normaliser matters
    batch.delta[list(flat)] = 0.0
    update(state, cfg.replace(train={"grad_accum": k}),
           batch if skip else EveryGroup(**vars(batch)))
    return [p.grad.clone() for p in state.policy.parameters()]  # μ = 1: kept after the step


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_gradient_accumulation_equals_one_big_batch(aggregation):
    cfg = small_cfg(algo={"aggregation": aggregation, "kl_weight": 0.1},
                    train={"grad_clip": 0.0})
    full = _gradients(cfg, 1)
    for k in (2, 4):
        for a, b in zip(full, _gradients(cfg, k), strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant"])
def test_skipping_groups_whose_delta_is_zero_keeps_the_gradient(aggregation):
    """Without a KL term the update skips groups with Δ = 0 everywhere (fewer rows through the
    log-prob pass and backward) and computes the same gradient, micro-batched or not."""
    cfg = small_cfg(algo={"aggregation": aggregation, "kl_weight": 0.0},
                    train={"grad_clip": 0.0})
    flat = (1, 2, 5)
    full = _gradients(cfg, 1, flat)
    for k in (1, 2, 4):
        for a, b in zip(full, _gradients(cfg, k, flat, skip=True), strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_groups_with_gradient_selects_prompts_and_keeps_whole_batches():
    B, G, T = 4, 3, 2
    delta = torch.zeros(B, G)
    delta[1, 0], delta[3, 2] = 0.5, -1.0
    batch = Batch(torch.arange(B)[:, None], torch.zeros(B, G, T), torch.ones(B, G, T), delta,
                  None)
    kept = batch.groups_with_gradient()
    assert kept.prompts.squeeze(-1).tolist() == [1, 3] and kept.delta.shape == (2, G)
    assert [len(mb.delta) for mb in kept.split(4)] == [1, 1]  # never more parts than prompts
    words = Batch(["a", "b", "c", "d"], *[getattr(batch, f) for f in
                                          ("responses", "response_mask", "delta", "logp_ref")])
    assert words.groups_with_gradient().prompts == ["b", "d"]
    with_kl = Batch(batch.prompts, batch.responses, batch.response_mask, delta,
                    torch.zeros(B, G, T))
    assert with_kl.groups_with_gradient() is with_kl  # the KL term has a gradient everywhere
    none = Batch(batch.prompts, batch.responses, batch.response_mask, torch.zeros(B, G), None)
    assert none.groups_with_gradient() is none  # the optimizer still steps (on zeros)


@pytest.mark.parametrize("algo", [{"mu": 2, "kl_weight": 0.1, "ref_refresh": 2},
                                  {"mu": 1, "kl_weight": 0.0, "delta": "centered"}])
def test_grpo_step_is_update_of_collect(algo):
    """The step is exactly its seams: the same metrics (but times) and the same weights."""
    cfg = small_cfg(algo=algo, train={"grad_accum": 2})
    task = build_task(cfg)
    by_step, by_seams = build_state(cfg), build_state(cfg)
    for _ in range(2):
        metrics = grpo_step(by_step, task, cfg)
        batch = collect(by_seams, task, cfg)
        seams = {**reward_metrics(batch, task), **update(by_seams, cfg, batch)}
        if by_seams.reference is not None:
            by_seams.reference.maybe_refresh(by_seams.policy, by_seams.step)
        assert {k: v for k, v in metrics.items()
                if not k.startswith("time/") and k != "train/ref_refreshed"} == seams
    models = [(by_step.policy, by_seams.policy)]
    if by_step.reference is not None:
        models.append((by_step.reference.model, by_seams.reference.model))
    for a, b in models:
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
    assert by_step.step == by_seams.step == 2


def test_train_state_round_trip_resumes_bit_for_bit(tmp_path):
    """Through the checkpoint format (safetensors + JSON, no pickle)."""
    cfg = small_cfg(algo={"kl_weight": 0.1, "ref_refresh": 4})
    task = build_task(cfg)
    straight = build_state(cfg)
    for _ in range(8):
        grpo_step(straight, task, cfg)

    first = build_state(cfg)
    for _ in range(4):
        grpo_step(first, task, cfg)
    path = checkpoint.save(tmp_path, first.step, first.state_dict(), {}, keep=1)
    resumed = build_state(cfg.replace(train={"seed": 123}))  # different init, overwritten
    resumed.load_state_dict(checkpoint.load(path)[0])
    for _ in range(4):
        grpo_step(resumed, task, cfg)
    for k, v in straight.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k])
    assert resumed.step == 8
