"""experiments/advantages.py: its gradient statistics on a hand-made case and its gradient
estimate against the library's training loss (fast), and the whole script at a tiny size (slow)."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import advantages  # noqa: E402

from lmrl.config import Config, validate  # noqa: E402
from lmrl.losses import aggregate, bind_loss  # noqa: E402
from lmrl.policies.toy import ToySortPolicy  # noqa: E402


def test_gradient_stats_by_hand():
    # Components: (1, 3, 1, 3) and (0, 0, 2, 2): mean (2, 1), each variance 4/3 (K - 1 = 3).
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 2.0], [3.0, 2.0]])
    out = advantages.gradient_stats(grads, torch.tensor([2.0, 0.0]))
    assert out["total_var"] == pytest.approx(8 / 3)
    assert out["scale"] == pytest.approx(math.sqrt(5) / 2)
    assert out["cos_mean"] == pytest.approx(2 / math.sqrt(5))
    assert out["cos_batch"] == pytest.approx((1 + 1 + 1 / math.sqrt(5) + 3 / math.sqrt(13)) / 4)
    # |E g|² estimated as |mean|² − total_var / K = 5 − 2/3.
    assert out["noise_to_signal"] == pytest.approx((8 / 3) / (5 - 2 / 3))


def test_gradient_stats_are_scale_free_where_they_say_so():
    grads = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) + 1.0
    ref = torch.ones(7)
    a, b = advantages.gradient_stats(grads, ref), advantages.gradient_stats(3 * grads, ref)
    assert b["total_var"] == pytest.approx(9 * a["total_var"])
    assert b["scale"] == pytest.approx(3 * a["scale"])
    for key in ("cos_mean", "cos_batch", "noise_to_signal"):
        assert b[key] == pytest.approx(a[key])


@pytest.mark.parametrize("aggregation", ["token_mean", "constant"])
def test_policy_gradient_is_the_training_losss_at_ratio_one(aggregation):
    torch.manual_seed(0)
    policy = ToySortPolicy(V=8, n=5, dim=6, init="scaled", init_scale=0.5)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 8, (4, 5), generator=gen)
    responses = policy.sample(prompts, 3, generator=gen).responses
    delta = torch.randn(4, 3, generator=gen)
    got = advantages.policy_gradient(policy, prompts, responses, delta, aggregation)
    mask = torch.ones(responses.shape)
    logp, _ = policy.logprobs(prompts, responses, mask)
    loss = aggregate(bind_loss("clipped")(logp, logp.detach(), delta, mask), mask, aggregation,
                     constant=policy.token_budget)
    want = torch.cat([g.flatten() for g in torch.autograd.grad(-loss, list(policy.parameters()))])
    assert torch.allclose(got, want, atol=1e-6)
    assert got.abs().sum() > 0


def test_every_setting_samples_the_same_completions_and_is_a_valid_config():
    for label, changes in advantages.settings(10).items():
        tr = changes["train"]
        assert tr["B"] * tr["G"] == advantages.COMPLETIONS, label
        validate(Config().replace(**changes))  # raises on a contradictory setting


@pytest.mark.slow
def test_script_smoke():
    tag = "pytest_smoke"
    results = EXPERIMENTS / "results"
    subprocess.run([sys.executable, str(EXPERIMENTS / "advantages.py"), "--seeds", "1",
                    "--steps", "4", "--K", "3", "--fit-steps", "2", "--trained-steps", "2",
                    "--workers", "1", "--tag", tag], check=True)
    try:
        rows = [json.loads(line) for line in
                (results / f"advantages_{tag}.jsonl").read_text().splitlines()]
        assert [r["label"] for r in rows] == list(advantages.METHODS)
        assert all(0 <= r["final"]["eval/exact_match"] <= 1 for r in rows)
        var_rows = [json.loads(line) for line in
                    (results / f"advantages_{tag}_variance.jsonl").read_text().splitlines()]
        assert len(var_rows) == 2 * len(advantages.METHODS)
        assert all(r["total_var"] > 0 and -1 <= r["cos_mean"] <= 1 for r in var_rows)
        assert (results / f"advantages_{tag}.png").exists()
    finally:
        for suffix in (".jsonl", "_variance.jsonl", ".png"):
            (results / f"advantages_{tag}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(results / "runs" / f"advantages_{tag}", ignore_errors=True)
