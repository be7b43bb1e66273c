"""experiments/rm_overopt.py: its constructed preference pairs (fast), and the whole script at
tiny sizes through the CLI (slow: 1-3 minutes, mostly subprocess start-ups)."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import rm_overopt  # noqa: E402

from lmrl.tasks.sort_text import REWARDS, SortTextTask  # noqa: E402


def _examples(k: int) -> list[dict]:
    import torch

    task = SortTextTask(n=5, V=10, heldout_size=50)
    gen = torch.Generator().manual_seed(0)
    return [task.train_example(gen) for _ in range(k)]


def test_candidates_are_permutations_of_the_prompt():
    rng = random.Random(0)
    for example in _examples(20):
        for kind in rm_overopt.KINDS:
            text = rm_overopt.candidate(example["numbers"], kind, rng)
            assert sorted(map(int, text.split())) == sorted(example["numbers"])
        assert rm_overopt.candidate(example["numbers"], "sorted", rng) == " ".join(
            map(str, sorted(example["numbers"])))


def test_made_up_candidates_are_ascending_lists_of_digits_of_the_prompts_length():
    rng = random.Random(0)
    texts = [rm_overopt.candidate(e["numbers"], rm_overopt.MADE_UP, rng) for e in _examples(50)]
    values = [list(map(int, t.split())) for t in texts]
    assert all(v == sorted(v) and len(v) == 5 and 0 <= min(v) and max(v) < 10 for v in values)
    assert len(set(texts)) > 40  # fresh random draws, not one fixed answer


def test_clean_pairs_prefer_the_higher_true_reward_and_noise_flips():
    examples = _examples(200)
    clean, noisy, counts = rm_overopt.make_pairs(examples, 0.0, random.Random(1),
                                                 random.Random(2))
    assert clean == noisy and counts["flipped"] == 0
    assert counts["pairs"] + counts["ties_dropped"] == 200 and counts["pairs"] > 100
    numbers = {e["prompt"]: e["numbers"] for e in examples}
    prompts = [r["prompt"] for r in clean]
    nums = [numbers[p] for p in prompts]
    chosen = REWARDS["positional"](prompts, [r["chosen"] for r in clean], nums)
    rejected = REWARDS["positional"](prompts, [r["rejected"] for r in clean], nums)
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))
    clean1, flipped, counts = rm_overopt.make_pairs(examples, 1.0, random.Random(1),
                                                    random.Random(2))
    assert clean1 == clean and counts["flipped"] == len(clean)
    assert all(f["chosen"] == c["rejected"] for f, c in zip(flipped, clean, strict=True))


def test_expected_noisy_accuracy():
    assert rm_overopt.expected_noisy(1.0, 0.25) == 0.75
    assert rm_overopt.expected_noisy(0.5, 0.1) == pytest.approx(0.5)


@pytest.mark.slow
def test_script_smoke(tmp_path):
    subprocess.run([sys.executable, str(EXPERIMENTS / "rm_overopt.py"), "--pairs", "40",
                    "--heldout", "20", "--steps", "2", "--sizes", "16x1", "--noise", "0,0.5",
                    "--workers", "1", "--tag", "pytest_smoke"], check=True)
    results = EXPERIMENTS / "results"
    try:
        rows = [json.loads(line) for line in
                (results / "rm_overopt_pytest_smoke.jsonl").read_text().splitlines()]
        assert [r["noise"] for r in rows] == [0.0, 0.5]
        assert all(0 <= r["acc_clean"] <= 1 for r in rows)
        assert (results / "rm_overopt_pytest_smoke.png").exists()
    finally:
        for suffix in ("jsonl", "png"):
            (results / f"rm_overopt_pytest_smoke.{suffix}").unlink(missing_ok=True)
