"""Every task's parsers, answer extractors and built-in rewards on arbitrary text: hypothesis
properties that they never raise and return the right type within a deadline, and megabyte
adversarial completions (unclosed tags, nested parentheses, long digit and whitespace runs) that
must finish in well under 2 s. A quadratic scan takes tens of seconds on those, so the bound
catches it without benchmarking anything."""

import importlib.util
import re
import sys
import time
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrl.tasks import arithmetic, countdown, gsm8k, sort_text

needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                                       reason="GSM8K grading needs math-verify")

MB = 1_000_000
BOUND_S = 2.0
# database=None: no .hypothesis/ directory in the checkout.
FAST = settings(max_examples=150, deadline=timedelta(milliseconds=500), database=None)
# math-verify's own timeouts are 1 s per parse and per verify (gsm8k.TIMEOUT_S).
GRADED = settings(max_examples=40, deadline=timedelta(seconds=5), database=None)

# The tasks' own alphabets and tags, so that examples often get past the first check.
PIECES = ["</think> <answer>", "</answer>", "<think>", "</think>", "<answer>", " ", "\n", "\t",
          "0", "7", "18", "-", "+", "*", "/", "(", ")", "**", "\\$", "$", "\\frac", "\\boxed",
          "{", "}", "^", "!", "_", ".", ",", "=", ">", ":", "x", "١"]
texts = st.one_of(
    st.text(),
    st.text(alphabet="<>/answer think 0123456789+-*()= "),
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
)
NUMBERS = [3, 5, 7]
SORT_NUMBERS = [3, 1, 2, 0]
OLD_WELL_FORMED = re.compile(r"</think> <answer>(.*?)</answer>", re.DOTALL)


def is_01(values: list) -> bool:
    return len(values) == 1 and type(values[0]) is float and values[0] in (0.0, 1.0)


# ---------------------------------------------------------------- gsm8k


@FAST
@given(texts)
def test_gsm8k_extract_answer_matches_the_old_regex(completion):
    """Same answer as the old (quadratic) lazy regex, which is fast on short strings."""
    match = OLD_WELL_FORMED.search(completion)
    assert gsm8k.extract_answer(completion) == (match.group(1).strip() if match else None)


@FAST
@given(texts)
def test_gsm8k_format_normalize_gradable_types(text):
    assert is_01(gsm8k.format_reward([""], [text], ground_truth=["18"]))
    assert type(gsm8k.normalize_answer(text)) is str
    assert type(gsm8k.gradable(text)) is bool


@FAST
@given(texts)
def test_gsm8k_data_parsers_raise_only_value_error(solution):
    """ground_truth reads the dataset, not the model: a bad row is a ValueError, nothing else."""
    for parse in (gsm8k.ground_truth, gsm8k.demonstration_text):
        try:
            assert type(parse(solution)) is str
        except ValueError:
            pass


@needs_math_verify
@GRADED
@given(texts)
def test_gsm8k_answer_reward_and_grade(text):
    completion = f" {text} </think> <answer>{text}</answer>"
    assert is_01(gsm8k.answer_reward([""], [completion], ground_truth=["18"]))
    assert is_01(gsm8k.answer_reward([""], [text], ground_truth=["18"]))
    assert type(gsm8k.grade(text, "18")) is bool


# ---------------------------------------------------------------- countdown


@FAST
@given(texts)
def test_countdown_parser_and_rewards(text):
    parsed = countdown.parse_expression(text)
    assert parsed is None or isinstance(parsed, countdown.Parsed)
    try:
        assert all(type(t) is str for t in countdown.tokenize(text))
    except countdown.ParseError:
        pass
    assert is_01(countdown.correct([""], [text], numbers=[NUMBERS], target=[22]))
    assert is_01(countdown.format_reward([""], [text], numbers=[NUMBERS]))


# ---------------------------------------------------------------- arithmetic and sort_text


@FAST
@given(texts)
def test_parse_int_reads_exactly_ascii_integers(token):
    value = sort_text.parse_int(token)
    assert value is None or type(value) is int
    assert (value is not None) == bool(re.fullmatch(r"-?[0-9]+", token))
    if value is not None:
        assert value == int(token)


@FAST
@given(texts)
def test_arithmetic_rewards(text):
    assert is_01(arithmetic.correct([""], [text], answer=[579]))
    (accuracy,) = arithmetic.digit_accuracy([""], [text], answer=[579])
    assert type(accuracy) is float and 0.0 <= accuracy <= 1.0


@FAST
@given(texts)
def test_sort_text_rewards(text):
    n = len(SORT_NUMBERS)
    maxima = {"exact_match": 1, "positional": n, "inclusion_adjacency": 2 * n - 1,
              "inclusion_adjacency_multiset": 2 * n - 1}
    for name, fn in sort_text.REWARDS.items():
        (value,) = fn([""], [text], numbers=[SORT_NUMBERS])
        assert type(value) is float and 0 <= value <= maxima[name], name


# ---------------------------------------------------------------- megabyte completions


def rep(piece: str, size: int = MB) -> str:
    """About `size` characters (1 MB) of `piece` repeated."""
    return piece * (size // len(piece))


def gsm8k_rewards(completion: str) -> list[float]:
    return (gsm8k.format_reward([""], [completion], ground_truth=["18"])
            + gsm8k.answer_reward([""], [completion], ground_truth=["18"]))


def countdown_rewards(completion: str) -> list[float]:
    return (countdown.correct([""], [completion], numbers=[NUMBERS], target=[22])
            + countdown.format_reward([""], [completion], numbers=[NUMBERS]))


def arithmetic_rewards(completion: str) -> list[float]:
    return (arithmetic.correct([""], [completion], answer=[579])
            + arithmetic.digit_accuracy([""], [completion], answer=[579]))


def sort_rewards(completion: str) -> list[float]:
    return [v for fn in sort_text.REWARDS.values()
            for v in fn([""], [completion], numbers=[SORT_NUMBERS])]


def tokenize_or_error(text: str) -> list[str] | None:
    try:
        return countdown.tokenize(text)
    except countdown.ParseError:
        return None


def ground_truth_or_error(solution: str) -> str | None:
    try:
        return gsm8k.ground_truth(solution)
    except ValueError:  # a bad dataset row, by design
        return None


UNCLOSED = rep("</think> <answer>")
GSM8K_INPUTS = {
    "unclosed tags": UNCLOSED,
    "unclosed then closed": UNCLOSED + "</answer>",
    "half tags": rep("</think> <answer"),
    "closers only": rep("</answer>"),
    "huge answer": "</think> <answer>" + rep("1") + "</answer>",
    "huge markup answer": "</think> <answer>" + rep("**\\$\\frac{") + "</answer>",
    "whitespace": rep(" \n"),
}
EXPRESSIONS = {"open parens": rep("("), "nested": rep("(", MB // 2) + "3" + rep(")", MB // 2),
               "digits": rep("1"), "sums": rep("1+"), "whitespace": rep(" \t"),
               "division": rep("9/")}
NUMBER_TEXTS = {"digits": rep("9"), "digits then x": rep("9") + "x", "minus digits": "-" + rep("9"),
                "zeros": rep("0"), "numbers": rep("9 "), "whitespace": rep(" \t\n"),
                "minus signs": rep("-")}
MEGABYTE_CASES = (
    [("gsm8k.extract_answer", gsm8k.extract_answer, k, v) for k, v in GSM8K_INPUTS.items()]
    + [("gsm8k rewards", gsm8k_rewards, k, v) for k, v in GSM8K_INPUTS.items()]
    + [("gsm8k.normalize_answer", gsm8k.normalize_answer, "markup", rep("**\\$")),
       ("gsm8k.gradable", gsm8k.gradable, "commands", rep("\\frac")),
       ("gsm8k.ground_truth", ground_truth_or_error, "digits", "#### " + rep("1") + "x"),
       ("gsm8k.ground_truth", ground_truth_or_error, "decimal", "#### " + rep("1") + ".1x")]
    + [("countdown.parse_expression", countdown.parse_expression, k, v)
       for k, v in EXPRESSIONS.items()]
    + [("countdown rewards", countdown_rewards, k, v) for k, v in EXPRESSIONS.items()]
    # tokenize is linear at ~1 us a token, too close to the bound for 1 M tokens on a shared
    # CPU; parse_expression never tokenizes more than MAX_CHARS, and a quadratic tokenizer
    # would still take minutes on a quarter of a megabyte.
    + [("countdown.tokenize", tokenize_or_error, k, v[:MB // 4]) for k, v in EXPRESSIONS.items()]
    + [("sort_text.parse_int", sort_text.parse_int, k, v) for k, v in NUMBER_TEXTS.items()]
    + [("arithmetic rewards", arithmetic_rewards, k, v) for k, v in NUMBER_TEXTS.items()]
    + [("sort_text rewards", sort_rewards, k, v) for k, v in NUMBER_TEXTS.items()]
)


def timed(fn, arg):
    start = time.perf_counter()
    result = fn(arg)
    return result, time.perf_counter() - start


@pytest.mark.parametrize(("fn", "text"), [pytest.param(fn, text, id=f"{name}-{kind}")
                                          for name, fn, kind, text in MEGABYTE_CASES])
def test_megabyte_inputs_are_linear(fn, text):
    _, seconds = timed(fn, text)
    assert seconds < BOUND_S, f"{seconds:.1f} s on {len(text)} characters: superlinear?"


def test_old_quadratic_gsm8k_case_is_fast():
    """20000 unclosed openers took the old lazy regex ~30 s; none is well formed."""
    answer, seconds = timed(gsm8k.extract_answer, "</think> <answer>" * 20000)
    assert answer is None and seconds < BOUND_S
    answer, seconds = timed(gsm8k.extract_answer, "</think> <answer>" * 20000 + " 7 </answer>")
    assert answer == ("</think> <answer>" * 19999 + " 7").strip() and seconds < BOUND_S


def test_megabyte_answers_score_zero():
    """Malformed or oversized answers are explicit zeros, not crashes."""
    assert gsm8k_rewards(GSM8K_INPUTS["unclosed tags"]) == [0.0, 0.0]
    assert gsm8k_rewards(GSM8K_INPUTS["huge answer"]) == [1.0, 0.0]  # well formed, not gradable
    assert countdown_rewards(EXPRESSIONS["nested"]) == [0.0, 0.0]
    for text in NUMBER_TEXTS.values():
        assert arithmetic_rewards(text) == [0.0, 0.0]


@pytest.mark.parametrize("limit", [0, 640, 4300])
def test_parse_int_digit_cap_is_explicit(limit):
    """parse_int reads at most MAX_INT_DIGITS digits whatever Python's own int() limit is: a
    lifted limit (0) must not make a megabyte of digits quadratic, and a lower one must give
    None, not int()'s ValueError."""
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(limit)
    try:
        cap = min(limit or sort_text.MAX_INT_DIGITS, sort_text.MAX_INT_DIGITS)
        assert sort_text.parse_int("9" * cap) == 10**cap - 1
        assert sort_text.parse_int("-" + "9" * cap) == 1 - 10**cap
        assert sort_text.parse_int("0" * (cap + 1)) is None
        assert arithmetic.correct([""], ["9" * (cap + 1)], answer=[579]) == [0.0]
        value, seconds = timed(sort_text.parse_int, rep("9"))
        assert value is None and seconds < BOUND_S
    finally:
        sys.set_int_max_str_digits(before)
