"""Tier 1 tests of the countdown task: the restricted expression parser, its rewards on
hand-picked completions, generated problems and their demonstrations, and the held-out split."""

from fractions import Fraction

import pytest
import torch

from lmrl.tasks.countdown import (
    MAX_CHARS,
    MAX_DEPTH,
    CountdownTask,
    _join,
    correct,
    format_reward,
    parse_expression,
    random_solution,
)


def rewards(numbers, target, *completions):
    """Both rewards of each completion to one problem -> (correct, format) lists."""
    n = len(completions)
    prompts = [f"{' '.join(map(str, numbers))}>{target}:"] * n
    columns = {"numbers": [numbers] * n, "target": [target] * n}
    return (correct(prompts, list(completions), **columns),
            format_reward(prompts, list(completions), **columns))


# ---------------------------------------------------------------- the parser


@pytest.mark.parametrize(("text", "value", "numbers"), [
    ("3*5+7", 22, (3, 5, 7)),
    ("7+5*3", 22, (7, 5, 3)),  # precedence
    ("(3+5)*7", 56, (3, 5, 7)),
    ("10-4-3", 3, (10, 4, 3)),  # left associative
    ("10-(4-3)", 9, (10, 4, 3)),
    ("8/2/2", 2, (8, 2, 2)),
    ("7/2*2", 7, (7, 2, 2)),  # exact: 7/2 is 7/2, not 3
    ("7/2", Fraction(7, 2), (7, 2)),
    (" 3 * ( 5 + 7 )\n", 36, (3, 5, 7)),  # whitespace anywhere
    ("((((1))))", 1, (1,)),
    ("0", 0, (0,)),
    ("999999999", 999999999, (999999999,)),
])
def test_parser_accepts(text, value, numbers):
    parsed = parse_expression(text)
    assert parsed is not None
    assert parsed.value == value
    assert parsed.numbers == numbers


@pytest.mark.parametrize("text", [
    "", " ", "__import__('os')", "3**99999", "3**2", "3^2", "-3+5", "3+-5", "+3", "3+", "*3",
    "2(3)", "(3)(5)", "(3+5", "3+5)", "()", "3.5", "1e9", "07+1", "3 5", "x", "3*x",
    "1" * 10,  # a number longer than MAX_DIGITS
    "1" * 300,  # hundreds of digits
    "(" * 1000 + "1" + ")" * 1000,  # deeper and longer than the guards
    "3+" * 150 + "3",  # longer than MAX_CHARS
    "3 5 7>22:3*5+7",  # the prompt echoed
    "3*5+7\n3*5+7",
])
def test_parser_rejects(text):
    assert parse_expression(text) is None


def test_nesting_guard_is_exact():
    assert parse_expression("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH) is not None
    assert parse_expression("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1)) is None


def test_length_guard_is_exact():
    longest = "1+" * (MAX_CHARS // 2 - 1) + "1"  # MAX_CHARS - 1 characters
    assert parse_expression(longest + " ") is not None
    assert parse_expression(longest + "  ") is None


def test_division_by_zero_parses_without_a_value():
    assert parse_expression("1/0").value is None
    assert parse_expression("3/(5-5)+7").value is None
    assert parse_expression("(1/0)*0").value is None  # no value propagates
    assert parse_expression("0/3").value == 0


# ---------------------------------------------------------------- rewards


def test_correct_and_format_on_hand_picked_completions():
    # numbers 3 5 7, target 22
    cases = {
        "3*5+7": (1, 1), "7+5*3": (1, 1), "(3*5)+7": (1, 1), " 3 * 5 + 7 ": (1, 1),
        "3*5+8": (0, 0),  # 8 is not given
        "22": (0, 0),
        "3*5": (0, 1),  # 7 unused: only given numbers, but not all of them
        "5": (0, 1),
        "7+7+7+1": (0, 0),  # 7 three times
        "3*5+7+0": (0, 0),  # 0 is not given
        "3*5+7-7+7": (0, 0),
        "3+5+7": (0, 1),  # right numbers, wrong value
        "-3+5*7": (0, 0),  # unary minus is not allowed
        "3**5+7": (0, 0),
        "__import__('os')": (0, 0),
        "": (0, 0),
    }
    got = rewards([3, 5, 7], 22, *cases)
    assert list(zip(*got, strict=True)) == [(float(c), float(f)) for c, f in cases.values()]


def test_each_number_exactly_once_with_repeats():
    c, f = rewards([7, 2, 2], 7, "7/2*2", "7*2/2", "7", "7/2*2*2/2", "(2+2)*7/4")
    assert c == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert f == [1.0, 1.0, 1.0, 0.0, 0.0]  # a third 2; a 4 that is not given


def test_fraction_exactness():
    # floor division would give 3*2 = 6; floating point could give 6.999...
    assert rewards([7, 2, 2], 7, "7/2*2")[0] == [1.0]
    assert rewards([7, 2, 2], 6, "7/2*2")[0] == [0.0]
    assert rewards([1, 3, 3], 1, "1/3*3")[0] == [1.0]  # 0.333... * 3 in floats is 1.0 by luck
    assert rewards([2, 3, 7], 7, "2/3*3*7")[0] == [0.0]  # 3 used twice


def test_division_by_zero_scores_zero_without_raising():
    c, f = rewards([3, 5, 5], 3, "3/(5-5)", "3+5-5")
    assert c == [0.0, 1.0]
    assert f == [1.0, 1.0]  # it parses: only its value is missing


def test_huge_inputs_score_zero():
    huge = ["9" * 400, "(" * 150 + "1" + ")" * 150, "3*5+7" + " " * 300, "3*5+7" * 50,
            "9**9**9**9", "1" * 9 + "*" + "1" * 9]
    c, f = rewards([3, 5, 7], 22, *huge)
    assert c == [0.0] * len(huge)
    assert f == [0.0] * len(huge)


# ---------------------------------------------------------------- generation


def test_join_uses_the_fewest_parentheses_that_keep_the_value():
    three, five, seven = (3, "3", 3), (5, "5", 3), (7, "7", 3)
    sum_, product = _join(five, "+", seven), _join(five, "*", seven)
    assert sum_ == (12, "5+7", 1)
    assert _join(three, "*", sum_) == (36, "3*(5+7)", 2)
    assert _join(sum_, "*", three) == (36, "(5+7)*3", 2)
    assert _join(three, "+", product) == (38, "3+5*7", 1)
    assert _join(product, "-", three) == (32, "5*7-3", 1)
    assert _join((20, "20", 3), "-", sum_) == (8, "20-(5+7)", 1)
    assert _join((70, "70", 3), "/", product) == (2, "70/(5*7)", 2)
    assert _join(product, "/", seven) == (5, "5*7/7", 2)


def test_random_solution_reaches_its_target_with_positive_integers():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        numbers = torch.randint(1, 11, (4,), generator=g).tolist()
        target, text = random_solution(numbers, g)
        parsed = parse_expression(text)
        assert isinstance(target, int) and target >= 1
        assert parsed.value == target
        assert sorted(parsed.numbers) == sorted(numbers)


@pytest.mark.parametrize(("k", "top", "held"), [(3, 10, 100), (2, 5, 10), (4, 25, 100),
                                               (6, 100, 100)])
def test_demonstrations_always_score_one(k, top, held):
    task = CountdownTask(num_numbers=k, max_number=top, heldout_size=held)
    g = torch.Generator().manual_seed(1)
    examples = [task.train_example(g) for _ in range(200)] + task.heldout
    completions = [[task.demonstration(ex)] for ex in examples]
    total, table = task.score(examples, completions)
    assert table["correct"].eq(1).all()
    assert table["format"].eq(1).all()
    assert torch.equal(total, table["correct"])  # format has weight 0
    assert max(len(c[0]) for c in completions) <= task.max_new_tokens - 1  # room for EOS


def test_prompt_format_and_columns():
    task = CountdownTask()
    for ex in task.heldout[:50]:
        numbers, target = ex["prompt"].removesuffix(":").split(">")
        assert [int(n) for n in numbers.split(" ")] == ex["numbers"]
        assert int(target) == ex["target"]
        assert len(ex["numbers"]) == 3 and all(1 <= n <= 10 for n in ex["numbers"])
    assert task.correctness == "correct"
    assert [(r.name, r.weight) for r in task.rewards] == [("correct", 1.0), ("format", 0.0)]


# ---------------------------------------------------------------- the held-out split


def test_heldout_is_deterministic_distinct_and_seeded():
    a, b, other = CountdownTask(), CountdownTask(), CountdownTask(split_seed=1)
    assert a.heldout == b.heldout
    assert a.heldout != other.heldout
    assert len(a.heldout) == 500
    assert len({CountdownTask.key(ex) for ex in a.heldout}) == 500


def test_training_problems_are_never_held_out():
    task = CountdownTask()
    held = {CountdownTask.key(ex) for ex in task.heldout}
    g = torch.Generator().manual_seed(0)  # the split's own seed: its first draws are held out
    train = task.sample_prompts(2000, g)
    assert not held & {CountdownTask.key(ex) for ex in train}
    # "7 3 5>22:" is the same problem as "3 5 7>22:"
    assert CountdownTask.key({"numbers": [7, 3, 5], "target": 22}) == ((3, 5, 7), 22)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_numbers": 1}, "num_numbers=1"),
    ({"num_numbers": 7}, "num_numbers=7"),
    ({"max_number": 0}, "max_number=0"),
    ({"max_number": 101}, "max_number=101"),
    ({"heldout_size": 0}, "heldout_size=0"),
    ({"num_numbers": 2, "max_number": 3}, "found only"),  # fewer problems than heldout_size
    ({"heldout_size": 2000}, "covers"),  # most random problems would be held out
])
def test_bad_settings_fail_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CountdownTask(**kwargs)
