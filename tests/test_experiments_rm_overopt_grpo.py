"""experiments/rm_overopt_grpo.py: the best-of-n estimator and the over-optimisation onset
(fast, against hand-computed values), the run set, and the whole script at tiny sizes through
the CLI (slow: about a minute, mostly subprocess start-ups)."""

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import rm_overopt_grpo as grpo  # noqa: E402


def test_selection_weights_by_hand():
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    assert grpo.selection_weights(scores, 1).tolist() == [[0.25] * 4]
    # n = 2: the sample ranked r-th from the bottom is a pair's best in C(r, 1) of C(4, 2) = 6.
    assert grpo.selection_weights(scores, 2)[0].tolist() == pytest.approx([0, 3 / 6, 1 / 6,
                                                                           2 / 6])
    assert grpo.selection_weights(scores, 4).tolist() == [[0, 1, 0, 0]]


def test_selection_weights_equal_the_mean_over_every_subset():
    generator = torch.Generator().manual_seed(0)
    scores, true = torch.randn(3, 6, generator=generator), torch.randn(3, 6, generator=generator)
    for n in range(1, 7):
        estimate = (grpo.selection_weights(scores, n) * true.double()).sum(-1)
        for b in range(3):
            subsets = list(itertools.combinations(range(6), n))
            brute = sum(true[b, max(s, key=lambda i: scores[b, i])].item()
                        for s in subsets) / len(subsets)
            assert estimate[b].item() == pytest.approx(brute)


def test_onset_is_the_true_peak_only_when_the_true_reward_falls_and_the_proxy_does_not():
    steps = [0, 10, 20, 30, 40, 50]
    falling = [3.0, 3.8, 4.0, 3.5, 3.4, 3.3]
    assert grpo.onset(steps, falling, [0, 1, 2, 3, 4, 5], drop=0.25) == 20
    assert grpo.onset(steps, falling, [0, 1, 2, 1, 1, 1], drop=0.25) is None  # proxy fell too
    assert grpo.onset(steps, falling, [0, 1, 2, 3, 4, 5], drop=1.0) is None  # fell < drop
    assert grpo.onset(steps, [3.0, 3.5, 3.6, 3.7, 3.8, 3.9], list(range(6)), 0.25) is None


def test_train_onset_reads_the_smoothed_per_step_rewards():
    assert grpo.smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    rising = [{"step": i, "train/reward_positional": min(i, 5) - max(0, i - 5) * 0.5,
               "train/reward_rm": float(i)} for i in range(30)]
    # True rewards 0, 1, 2, 3, 4, 5, 4.5, 4, 3.5, 3, ...: trailing 5-step means 3.0 at step 5,
    # 3.7 at 6, 4.1 at 7, 4.2 at 8, 4.0 at 9, so the smoothed peak is step 8.
    assert grpo.train_onset(rising, "rm", 0.25) == 8
    flat = [dict(r, **{"train/reward_rm": 0.0 if r["step"] > 10 else 1.0}) for r in rising]
    assert grpo.train_onset(flat, "rm", 0.25) is None  # the proxy fell as well


def test_every_reward_model_run_trains_on_its_reward_model_alone():
    rms = {"32x2": {"dir": "a/32x2"}, "64x4": {"dir": "b/64x4"}}
    runs = grpo.grpo_runs(rms)
    labels = [r["label"] for r in runs]
    assert len(labels) == len(set(labels)) == 11
    for r in runs:
        assert ("--task-reward-weight" in r["flags"]) == (r["rm"] is not None)
        assert (r["group"] == "overopt") == ("no KL" in r["label"] or r["label"] in (
            "true reward", "RM 32x2", "RM 64x4"))
    assert grpo.rm_flags(rms, "64x4") == ["--reward-model", "a/32x2=0", "--reward-model",
                                          "b/64x4=1"]
    assert grpo.rm_flags(rms, None) == ["--reward-model", "a/32x2=0", "--reward-model",
                                        "b/64x4=0"]


@pytest.mark.slow
def test_script_smoke():
    tag = "pytest_smoke"
    results = EXPERIMENTS / "results"
    try:
        subprocess.run([sys.executable, str(EXPERIMENTS / "rm_overopt_grpo.py"), "--steps", "2",
                        "--eval-every", "1", "--eval-limit", "8", "--pairs", "40",
                        "--rm-steps", "2", "--sft-steps", "2", "--sizes", "16x1",
                        "--best-of", "4", "--only", "true reward;RM 16x1, no KL",
                        "--workers", "1", "--tag", tag], check=True)
        rows = [json.loads(line) for line in
                (results / f"rm_overopt_grpo_{tag}.jsonl").read_text().splitlines()]
        assert [r["n"] for r in rows if r["kind"] == "best_of_n"] == [1, 2, 4]
        runs = {r["label"]: r for r in rows if r["kind"] == "grpo"}
        assert set(runs) == {"true reward", "RM 16x1, no KL"}
        assert all(0 <= r["true_last3"] <= 5 for r in runs.values())
        assert (results / f"rm_overopt_grpo_{tag}.png").exists()
    finally:
        for suffix in ("jsonl", "png"):
            (results / f"rm_overopt_grpo_{tag}.{suffix}").unlink(missing_ok=True)
        shutil.rmtree(results / "runs" / f"rm_overopt_grpo_{tag}", ignore_errors=True)
