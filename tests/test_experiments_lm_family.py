"""experiments/lm_family.py: its token counting, first crossing, JSONL store and table on
hand-made rows (fast), and the whole script at a tiny size (slow)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import lm_family  # noqa: E402


def test_every_method_samples_512_completions_per_step():
    assert {lm_family.shape(flags) for _, flags in lm_family.METHODS.values()} == {512}
    assert lm_family.shape(["--B", "4", "--G", "3", "--delta", "rloo"]) == 12


def test_every_task_is_an_lm_targets_recipe():
    # sort12 (the long completions) is a target of its own in bench/lm_targets.py.
    for task in lm_family.TASKS.values():
        assert task["target"] in lm_family.TARGETS
    assert lm_family.TARGETS["sort12"].task[:4] == ["--task", "sort_text", "--n", "12"]


def test_eval_points_sum_tokens_and_carry_seconds():
    rows = [{"step": 0, "eval/exact_match": 0.3},
            {"step": 1, "train/response_tokens": 9.0, "time/elapsed_seconds": 2.0},
            {"step": 2, "train/response_tokens": 8.5, "time/elapsed_seconds": 4.04,
             "eval/exact_match": 0.51234},
            {"step": 3, "train/response_tokens": 8.0, "time/elapsed_seconds": 6.0},
            {"step": 4, "train/response_tokens": 7.0, "time/elapsed_seconds": 9.0,
             "eval/exact_match": 0.96}]
    # The evaluation at step s counts the tokens of steps 1..s (B x G = 10 completions a step).
    assert lm_family.eval_points(rows, 10) == [[0, 0.3, 0.0, 0], [2, 0.5123, 4.0, 175],
                                               [4, 0.96, 9.0, 325]]


def test_first_crossing():
    points = [[0, 0.3, 0.0, 0], [10, 0.95, 5.0, 100], [20, 0.99, 9.0, 200]]
    assert lm_family.first_crossing(points) == [10, 0.95, 5.0, 100]
    assert lm_family.first_crossing(points, 0.98) == [20, 0.99, 9.0, 200]
    assert lm_family.first_crossing(points, 0.999) is None


def row(method: str, seed: int, last3: float, first: list | None, wall: float) -> dict:
    evals = [[0, 0.3, 0.0, 0], [10, 0.9, 20.0, 50_000]] + ([first] if first else [])
    return {"task": "sort5", "seed": seed, "method": method, "label": lm_family.METHODS[method][0],
            "last3": last3, "first_095": first, "wall_seconds": wall, "evals": evals}


def test_table_mean_sd_and_never_counts():
    rows = [row("ppo_1", 1, 0.9, None, 300.0),
            row("grpo", 2, 0.98, [80, 0.96, 90.0, 400_000], 140.0),
            row("grpo", 1, 0.96, [60, 0.95, 70.0, 300_000], 160.0),
            row("ppo_1", 2, 0.96, [90, 0.97, 250.0, 500_000], 320.0)]
    lines = lm_family.table(rows).splitlines()
    assert len(lines) == 4  # header, rule, one line per method in METHODS order
    assert lines[2] == ("| GRPO (normalized, 32x16) | 1,2 | 0.970 ± 0.014 | 70 ± 14 | 80 ± 14 | "
                        "350 ± 71 | 0/2 | 150 ± 14 |")
    assert lines[3] == ("| PPO, separate critic (512x1) | 1,2 | 0.930 ± 0.042 | 90 | 250 | 500 "
                        "| 1/2 | 310 ± 14 |")
    assert lm_family.table(rows, 0.9).splitlines()[3] == (
        "| PPO, separate critic (512x1) | 1,2 | 0.930 ± 0.042 | 10 ± 0 | 20 ± 0 | 50 ± 0 | 0/2 | "
        "310 ± 14 |")


def test_store_replaces_the_same_run(tmp_path):
    path, lock = tmp_path / "x.jsonl", threading.Lock()
    lm_family.store(path, row("grpo", 0, 0.5, None, 1.0), lock)
    lm_family.store(path, row("rloo", 0, 0.6, None, 1.0), lock)
    lm_family.store(path, row("grpo", 0, 0.7, None, 1.0), lock)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["method"], r["last3"]) for r in rows] == [("rloo", 0.6), ("grpo", 0.7)]


def test_report_writes_one_table_per_level_of_the_task(tmp_path):
    path = tmp_path / "lm_family_sort12.jsonl"
    path.write_text(json.dumps(row("grpo", 0, 0.9, [80, 0.96, 90.0, 400_000], 140.0)) + "\n")
    text = lm_family.report("sort12", path)
    assert [line.split("|")[4] for line in text.splitlines() if line.startswith("| method")] == \
        [" first >= 0.95: step ", " first >= 0.9: step ", " first >= 0.85: step "]
    assert path.with_suffix(".md").read_text() == text and path.with_suffix(".png").is_file()


@pytest.mark.slow
def test_script_end_to_end_tiny(tmp_path):
    out = tmp_path / "lm_family_sort5.jsonl"
    subprocess.run([sys.executable, str(EXPERIMENTS / "lm_family.py"), "--task", "sort5",
                    "--seeds", "0", "--steps", "2", "--sft-steps", "2", "--workers", "1",
                    "--methods", "grpo", "ppo_1", "--root", str(tmp_path / "runs"),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["grpo", "ppo_1"]
    for r in rows:
        assert [p[0] for p in r["evals"]] == [0, 2] and r["evals"][-1][3] > 0
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()
