"""Tier 1 tests of the GSM8K task: ground-truth extraction, the R1-Zero format, math-verify
grading on hand-written completions, loading and splitting a small fixture file, and (when
../shared/data/gsm8k/test.jsonl exists) every row of the real test split."""

import importlib.util
import json
import threading
from pathlib import Path

import pytest

from lmrl.errors import DataError
from lmrl.tasks.gsm8k import (
    MAX_ANSWER_CHARS,
    R1_ZERO_PROMPT,
    GSM8KTask,
    answer_reward,
    demonstration_text,
    extract_answer,
    format_reward,
    gradable,
    ground_truth,
    load_gsm8k,
)

REAL = Path(__file__).parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                                       reason="GSM8K grading needs math-verify")

SOLUTION = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
            "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18")


def well_formed(answer: str) -> str:
    return f" 16 - 3 - 4 = 9 eggs, 9 * 2 = 18. </think> <answer>{answer}</answer>"


def scores(truth: str, *completions: str) -> tuple[list[float], list[float]]:
    """(answer, format) rewards of each completion against one ground truth."""
    n = len(completions)
    return (answer_reward([""] * n, list(completions), ground_truth=[truth] * n),
            format_reward([""] * n, list(completions), ground_truth=[truth] * n))


# ---------------------------------------------------------------- ground truth and format


@pytest.mark.parametrize(("solution", "truth"), [
    (SOLUTION, "18"), ("x\n#### 1,234", "1234"), ("#### -5", "-5"), ("a\n####  2.5 ", "2.5"),
    ("3 #### 4\n#### 7", "7"),
])
def test_ground_truth(solution, truth):
    assert ground_truth(solution) == truth


@pytest.mark.parametrize("solution", ["18", "#### ", "#### eighteen", "#### 18 eggs", "#### 1/2"])
def test_ground_truth_rejects_non_numbers(solution):
    with pytest.raises(ValueError, match="####"):
        ground_truth(solution)


def test_demonstration_drops_calculator_annotations():
    assert demonstration_text(SOLUTION) == (
        " Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer's market. </think> <answer> 18 </answer>")


@pytest.mark.parametrize(("completion", "answer"), [
    (well_formed(" 18 "), "18"),
    (" </think> <answer></answer>", ""),  # well formed, empty answer
    ("</think> <answer> 18 </answer> and then </answer>", "18"),
    ("a </think> <answer> 1 </answer> b </think> <answer> 2 </answer>", "1"),  # the first one
    ("</think> <answer>\n18\n</answer>", "18"),
    ("18", None), ("", None),
    ("<answer> 18 </answer>", None),  # answer tags but no </think>
    ("</think><answer> 18 </answer>", None),  # no space
    ("</think>\n<answer> 18 </answer>", None),
    ("</think> <answer> 18", None),  # truncated before </answer>
    ("</answer> </think> <answer> 18", None),  # </answer> only before
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


# ---------------------------------------------------------------- grading


@needs_math_verify
def test_grading_hand_written_answers():
    cases = {
        "18": 1, " 18 ": 1, "18.0": 1, "18.00": 1, "$18": 1, "\\boxed{18}": 1, "$\\boxed{18}$": 1,
        "18 dollars": 1, "She makes $18 every day.": 1, "36/2": 1, "\\frac{36}{2}": 1,
        "**18**": 1, "\\$18": 1, "\\$18.00": 1, "\\(18\\)": 1, "18 \\text{eggs}": 1,
        "17": 0, "18.5": 0, "-18": 0, "180": 0, "1,8": 0, "": 0, "garbage": 0, "</think>": 0,
        "1" * 400: 0, "1" * (MAX_ANSWER_CHARS + 1): 0, "9" * 60: 0,
        "9^9^9^9": 0, "9**9**9**9": 0, "\\boxed{9^{9^{9^9}}}": 0, "100000!": 0,
        "3**2*2": 0,  # 18 if ** were a power; it is markdown bold, removed: 32*2
        "\\Gamma(1000000)": 0, "\\binom{10000000}{5000000}": 0, "\\frac{" * 30: 0,
    }
    answer, fmt = scores("18", *[well_formed(a) for a in cases])
    assert dict(zip(cases, answer, strict=True)) == {a: float(v) for a, v in cases.items()}
    assert fmt == [1.0] * len(cases)


@needs_math_verify
def test_answer_needs_the_format():
    completions = ["18", "<answer> 18 </answer>", "... <answer> 18 </answer>", "\\boxed{18}",
                   "</think> <answer> 18", "", "\x00" * 1000]
    assert scores("18", *completions) == ([0.0] * 7, [0.0] * 7)


@needs_math_verify
def test_grading_big_and_negative_truths():
    assert scores("70000", well_formed("70,000"), well_formed("$70000"), well_formed("7000"))[0] \
        == [1.0, 1.0, 0.0]
    assert scores("-5", well_formed("-5"), well_formed("5"))[0] == [1.0, 0.0]


@needs_math_verify
def test_bad_ground_truth_raises():
    with pytest.raises(ValueError, match="not a number"):
        scores("eighteen", well_formed("18"))
    with pytest.raises(ValueError, match="not a number"):
        scores("eighteen", well_formed("9^9^9"))  # even when the answer is not graded


@needs_math_verify
def test_grading_off_the_main_thread():
    # math-verify's SIGALRM timeout raises off the main thread; the reward must not
    completions = [well_formed(a) for a in ["18", "17", "\\boxed{18}", "9^9^9^9", "x"]]
    results = []
    worker = threading.Thread(target=lambda: results.append(scores("18", *completions)[0]))
    worker.start()
    worker.join()
    assert results == [[1.0, 0.0, 1.0, 0.0, 0.0]]


def test_gradable():
    assert gradable("18") and gradable("\\boxed{\\frac{36}{2}}") and gradable("$18 per day")
    assert not gradable("2^10") and not gradable("5!") and not gradable("x_1")
    assert not gradable("\\exp(100)") and not gradable("1" * (MAX_ANSWER_CHARS + 1))


# ---------------------------------------------------------------- loading and splitting


def write_rows(path: Path, count: int, start: int = 0) -> Path:
    rows = [{"question": f"Tom has {i} apples and buys {i} more. How many does he have?",
             "answer": f"He has {i} + {i} = <<{i}+{i}={2 * i}>>{2 * i} apples.\n#### {2 * i:,}"}
            for i in range(start, start + count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_off_the_data_file(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", 20)
    task = GSM8KTask(data=str(data), heldout_size=5, split_seed=3)
    assert len(task.heldout) == 5 and len(task.train) == 15
    held = {ex["question"] for ex in task.heldout}
    assert not held & {ex["question"] for ex in task.train}
    assert GSM8KTask(data=str(data), heldout_size=5, split_seed=3).heldout == task.heldout
    assert GSM8KTask(data=str(data), heldout_size=5, split_seed=4).heldout != task.heldout
    ex = task.train[0]
    assert ex["prompt"] == R1_ZERO_PROMPT.format(question=ex["question"])
    assert ex["prompt"].endswith("?\nAssistant: <think>")
    assert task.correctness == "answer" and task.max_new_tokens == 512
    assert [(r.name, r.weight) for r in task.rewards] == [("answer", 1.0), ("format", 0.1)]


def test_heldout_file(tmp_path):
    data = write_rows(tmp_path / "train.jsonl", 20)
    test = write_rows(tmp_path / "test.jsonl", 8, start=15)  # 15..19 also in train
    task = GSM8KTask(data=data, heldout_data=test, heldout_size=200)
    assert len(task.heldout) == 8  # all of a smaller file
    assert len(task.train) == 15  # rows whose question is held out are dropped
    assert len(GSM8KTask(data=data, heldout_data=test, heldout_size=3).heldout) == 3


@needs_math_verify
def test_fixture_demonstrations_score_one(tmp_path):
    task = GSM8KTask(data=write_rows(tmp_path / "d.jsonl", 1500), heldout_size=10)
    examples = task.heldout + task.train[:40]
    total, table = task.score(examples, [[task.demonstration(ex)] for ex in examples])
    assert table["answer"].eq(1).all() and table["format"].eq(1).all()
    assert total.allclose(total.new_full(total.shape, 1.1))
    last = task.train[-1]  # 2 * 1499: "#### 2,998"
    assert last["solution"].endswith("#### 2,998")
    assert task.demonstration(last).endswith("</think> <answer> 2998 </answer>")


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q"}', "answer"),
    ('{"answer": "#### 1"}', "question"),
    ('{"question": "q", "answer": "no hashes"}', "####"),
    ('{"question": "q", "answer": "#### 1"', "GSM8K row"),  # not JSON
    ('["q", "#### 1"]', "GSM8K row"),
])
def test_bad_rows_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q0", "answer": "#### 0"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        load_gsm8k(path)
    assert "bad.jsonl:2" in str(err.value)


def test_bad_settings(tmp_path):
    data = write_rows(tmp_path / "d.jsonl", 5)
    with pytest.raises(ValueError, match="leaves no training rows"):
        GSM8KTask(data=data, heldout_size=5)
    with pytest.raises(ValueError, match="heldout_size=0"):
        GSM8KTask(data=data, heldout_size=0)
    with pytest.raises(DataError, match="missing.jsonl does not exist"):
        GSM8KTask(data=tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        load_gsm8k(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------- the real test split


@pytest.fixture(scope="module")
def real_rows():
    if not REAL.is_file():
        pytest.skip(f"{REAL} is absent (only the development machine has ../shared)")
    return load_gsm8k(REAL)


def test_every_real_row_has_a_numeric_answer(real_rows):
    assert len(real_rows) == 1319
    lines = REAL.read_text().splitlines()
    for ex, line in zip(real_rows, lines, strict=True):
        tail = json.loads(line)["answer"].rpartition("####")[2]
        assert ex["ground_truth"] == tail.strip().replace(",", "")
        assert float(ex["ground_truth"]) == int(ex["ground_truth"])  # GSM8K answers are integers


@needs_math_verify
def test_every_real_demonstration_grades_correct(real_rows):
    demos = [demonstration_text(ex["solution"]) for ex in real_rows]
    assert not any("<<" in d or ">>" in d for d in demos)
    answer, fmt = scores_rows(real_rows, demos)
    assert fmt == [1.0] * len(real_rows)
    assert answer == [1.0] * len(real_rows)
    wrong = [d.replace("<answer> ", "<answer> 1", 1) for d in demos]  # 18 -> 118
    assert scores_rows(real_rows, wrong)[0] == [0.0] * len(real_rows)


def scores_rows(rows, completions):
    truths = [ex["ground_truth"] for ex in rows]
    n = len(rows)
    return (answer_reward([""] * n, completions, ground_truth=truths),
            format_reward([""] * n, completions, ground_truth=truths))
