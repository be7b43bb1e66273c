"""Countdown: combine the given numbers with + - * / and parentheses to reach the target.

Prompt: the numbers separated by single spaces, then ">", the target, and ":", e.g. "3 5 7>22:"
(numbers 3, 5, 7; target 22). A correct completion is an expression that uses every given
number exactly once, e.g. "3*5+7". Numbers are drawn uniformly from 1..max_number (with
repetition; no 0, which would make "x*0" and "/0" tricks part of every problem).

Generation. An example is built by drawing the numbers and combining them in a random binary
tree: two random numbers are joined by a random operator whose result is a positive integer
(a-b only when a > b, a/b only when b divides a), until one number, the target, remains. So
every target is reachable, and that tree, written with the fewest parentheses, is the example's
`solution` (the demonstration). Grading is more generous than generation: any expression with an
exact rational value equal to the target counts, e.g. "7/2*2" for numbers 7 2 2, target 7.

Grammar of a completion (surrounding and inner whitespace is ignored):

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := INT | "(" expr ")"          INT: "0" or digits without a leading 0

No unary minus ("-3+5" does not parse: Countdown has binary operators only), no "**", no
decimals. It is a hand-written recursive-descent parser over Fractions; nothing is ever passed
to eval. Guards, so that any string is graded in microseconds: at most MAX_CHARS characters,
MAX_DIGITS digits per number, MAX_DEPTH nested parentheses; anything beyond parses as nothing.
Division by zero parses but has no value (so it is never correct).

Rewards (pure, deterministic, never raise on a completion):
- correct: 1 if the completion parses, its numbers are exactly the given ones (as a multiset),
  and its value equals the target. The task's correctness.
- format: 1 if the completion parses and uses only given numbers, each at most as often as
  given (a sub-multiset; "3" counts for "3 5 7>22:"), whatever its value. Weight 0 by default:
  it is logged as a diagnostic, not trained on, because it is maximised by trivial answers like
  "3", and correctness already requires it.
"""

import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

import torch

from lmrl.errors import ConfigError
from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, extra_rewards, split_args
from lmrl.tasks.text import Example, RewardFn, TextTask

MAX_CHARS = 200
MAX_DIGITS = 9
MAX_DEPTH = 16
MAX_NUMBERS = 6  # numbers per problem: 2..MAX_NUMBERS
MAX_NUMBER = 100  # numbers are 1..max_number with max_number in 1..MAX_NUMBER
_TOKEN = re.compile(r"\s*(?:(0|[1-9][0-9]*)|([-+*/()]))")


class ParseError(ValueError):
    """The text is not an expression of the grammar (or exceeds the guards)."""


@dataclass(frozen=True)
class Parsed:
    value: Fraction | None  # None when the expression divides by zero
    numbers: tuple[int, ...]  # the integer literals, in order of appearance


def tokenize(text: str) -> list[str]:
    """"3*(5 + 7)" -> ["3", "*", "(", "5", "+", "7", ")"]; raises ParseError on anything else
    ("3**2" tokenizes; the parser rejects it)."""
    text = text.rstrip()
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ParseError(f"unexpected character {text[pos]!r} at {pos}")
        if match.group(1) is not None and len(match.group(1)) > MAX_DIGITS:
            raise ParseError(f"number longer than {MAX_DIGITS} digits at {pos}")
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent over tokens, evaluating with Fractions as it goes."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.numbers = tokens, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def expr(self, depth: int) -> Fraction | None:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.term(depth)
            if value is not None and right is not None:
                value = value + right if op == "+" else value - right
            else:
                value = None
        return value

    def term(self, depth: int) -> Fraction | None:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor(depth)
            if value is None or right is None or (op == "/" and right == 0):
                value = None
            else:
                value = value * right if op == "*" else value / right
        return value

    def factor(self, depth: int) -> Fraction | None:
        token = self.take()
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ParseError(f"more than {MAX_DEPTH} nested parentheses")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise ParseError("unbalanced parentheses")
            return value
        if token is None or not token.isdigit():
            raise ParseError(f"expected a number or '(' but got {token!r}")
        self.numbers.append(int(token))
        return Fraction(int(token))


def parse_expression(text: str) -> Parsed | None:
    """The value and literals of an expression, or None when it does not parse.

    "3*5+7" -> Parsed(22, (3, 5, 7)); "7/2*2" -> Parsed(7, (7, 2, 2)); "1/0" -> Parsed(None,
    (1, 0)); "3**2", "-3+5", "2(3)", "__import__('os')", "" -> None.
    """
    if len(text) > MAX_CHARS:
        return None
    try:
        parser = _Parser(tokenize(text))
        value = parser.expr(0)
        if parser.pos != len(parser.tokens):
            raise ParseError(f"unexpected {parser.peek()!r} after the expression")
    except ParseError:
        return None
    return Parsed(value, tuple(parser.numbers))


def correct(prompts: list[str], completions: list[str], numbers: list[list[int]],
            target: list[int], **columns) -> list[float]:
    """1 if the completion uses each given number once and equals the target, else 0.

    numbers 3 5 7, target 22: "3*5+7" -> 1, "7+5*3" -> 1, "(3*5)+7" -> 1, "3*5+7+0" -> 0
    (0 is not given), "3*5+7-7+7" -> 0 (7 used three times), "22" -> 0, "3*5+8" -> 0.
    numbers 7 2 2, target 7: "7/2*2" -> 1 (exact: 7/2 is 3.5, not 3).
    """
    return [float(_correct(c, n, t)) for c, n, t in zip(completions, numbers, target, strict=True)]


def _correct(completion: str, numbers: list[int], target: int) -> bool:
    parsed = parse_expression(completion)
    return (parsed is not None and Counter(parsed.numbers) == Counter(numbers)
            and parsed.value == target)


def format_reward(prompts: list[str], completions: list[str], numbers: list[list[int]],
                  **columns) -> list[float]:
    """1 if the completion parses and uses only given numbers, each at most as often as given.

    numbers 3 5 7: "3*5+7" -> 1, "3+5" -> 1, "5" -> 1, "5*5" -> 0 (5 twice), "3*0" -> 0 (0 is
    not given), "3+" -> 0, "3*4" -> 0.
    numbers 3 5 5: "3/(5-5)" -> 1 (it parses; division by zero only makes it wrong).
    """
    return [float(_format_ok(c, n)) for c, n in zip(completions, numbers, strict=True)]


def _format_ok(completion: str, numbers: list[int]) -> bool:
    parsed = parse_expression(completion)
    return parsed is not None and not Counter(parsed.numbers) - Counter(numbers)


_OPS = {"+": (1, lambda a, b: a + b), "-": (1, lambda a, b: a - b),
        "*": (2, lambda a, b: a * b), "/": (2, lambda a, b: a // b)}


def _valid_ops(a: int, b: int) -> list[str]:
    """Operators keeping a op b a positive integer: (6, 3) -> + - * /; (3, 6) -> + *."""
    return ["+", "*"] + (["-"] if a > b else []) + (["/"] if a % b == 0 else [])


def _join(left: tuple[int, str, int], op: str, right: tuple[int, str, int]) -> tuple[int, str, int]:
    """Combine (value, text, precedence) nodes with the fewest parentheses that keep the value:
    (3, "3", 3) * (12, "5+7", 1) -> (36, "3*(5+7)", 2). Numbers have precedence 3."""
    prec, fn = _OPS[op]
    left_text = f"({left[1]})" if left[2] < prec else left[1]
    # - and / are not associative: a-(b-c) and a/(b*c) keep their parentheses.
    tight = right[2] <= prec if op in "-/" else right[2] < prec
    right_text = f"({right[1]})" if tight else right[1]
    return fn(left[0], right[0]), f"{left_text}{op}{right_text}", prec


def random_solution(numbers: list[int], generator: torch.Generator) -> tuple[int, str]:
    """A random expression over all the numbers with positive integer intermediate results:
    (target, expression), e.g. [3, 5, 7] -> (22, "3*5+7") or (2, "(3+7)/5")."""
    nodes = [(n, str(n), 3) for n in numbers]
    while len(nodes) > 1:
        i, j = torch.randperm(len(nodes), generator=generator)[:2].tolist()
        ops = _valid_ops(nodes[i][0], nodes[j][0])
        op = ops[int(torch.randint(len(ops), (1,), generator=generator))]
        joined = _join(nodes[i], op, nodes[j])
        nodes = [node for k, node in enumerate(nodes) if k not in (i, j)] + [joined]
    return nodes[0][0], nodes[0][1]


@dataclass
class CountdownTask(TextTask):
    """num_numbers numbers from 1..max_number and a reachable target. heldout_size distinct
    problems (seeded by split_seed) are held out; training problems are drawn fresh and never
    equal a held-out one, where problems are equal when their numbers (as a multiset) and
    targets are: "3 5 7>22:" and "7 3 5>22:" are the same problem."""

    num_numbers: int = 3
    max_number: int = 10
    heldout_size: int = 500
    split_seed: int = 0
    format_weight: float = 0.0

    name = "countdown"
    max_tries = 1000  # draws in a row without an unseen problem before giving up

    def __post_init__(self) -> None:
        if not 2 <= self.num_numbers <= MAX_NUMBERS:
            raise ValueError(f"num_numbers={self.num_numbers} must be in 2..{MAX_NUMBERS}")
        if not 1 <= self.max_number <= MAX_NUMBER:
            raise ValueError(f"max_number={self.max_number} must be in 1..{MAX_NUMBER}")
        if self.heldout_size < 1:
            raise ValueError(f"heldout_size={self.heldout_size} must be >= 1")
        self.heldout = self._distinct_examples(torch.Generator().manual_seed(self.split_seed))
        self._heldout_keys = {self.key(ex) for ex in self.heldout}
        self._check_room(torch.Generator().manual_seed(self.split_seed + 1))
        self.rewards = [RewardFn("correct", correct),
                        RewardFn("format", format_reward, weight=self.format_weight)]
        self.correctness = "correct"
        # The longest solution (every number at full width, k-1 operators, at most k-2 pairs of
        # parentheses) in characters, an upper bound on its tokens, plus room for EOS.
        digits = len(str(self.max_number))
        k = self.num_numbers
        self.max_new_tokens = k * digits + (k - 1) + 2 * (k - 2) + 2

    @staticmethod
    def key(example: Example) -> tuple[tuple[int, ...], int]:
        """What makes two problems the same: {"numbers": [7, 3, 5], "target": 22, ...} ->
        ((3, 5, 7), 22)."""
        return tuple(sorted(example["numbers"])), example["target"]

    def draw(self, generator: torch.Generator) -> Example:
        """A random problem: {"prompt": "3 5 7>22:", "numbers": [3, 5, 7], "target": 22,
        "solution": "3*5+7"}."""
        numbers = torch.randint(1, self.max_number + 1, (self.num_numbers,),
                                generator=generator).tolist()
        target, solution = random_solution(numbers, generator)
        prompt = f"{' '.join(map(str, numbers))}>{target}:"
        return {"prompt": prompt, "numbers": numbers, "target": target, "solution": solution}

    def _distinct_examples(self, generator: torch.Generator) -> list[Example]:
        """The first heldout_size distinct problems in draw order."""
        chosen: dict[tuple, Example] = {}
        stale = 0  # draws since the last new problem
        while stale < self.max_tries:
            example = self.draw(generator)
            stale = stale + 1 if self.key(example) in chosen else 0
            chosen.setdefault(self.key(example), example)
            if len(chosen) == self.heldout_size:
                return list(chosen.values())
        raise ValueError(f"found only {len(chosen)} distinct countdown problems with "
                         f"num_numbers={self.num_numbers}, max_number={self.max_number}; "
                         f"lower heldout_size={self.heldout_size} or raise the other two")

    def _check_room(self, generator: torch.Generator, draws: int = 1000) -> None:
        """Refuse a held-out set that most random draws would hit: training would mostly
        re-draw, and eval/exact_match would measure memorisation of the few problems left."""
        held = sum(self.key(self.draw(generator)) in self._heldout_keys for _ in range(draws))
        if held > draws // 2:
            raise ValueError(f"heldout_size={self.heldout_size} covers {held / draws:.0%} of "
                             f"random problems with num_numbers={self.num_numbers}, max_number="
                             f"{self.max_number}; lower it or raise the other two")

    def train_example(self, generator: torch.Generator) -> Example:
        """A fresh random problem that is not held out."""
        for _ in range(self.max_tries):
            example = self.draw(generator)
            if self.key(example) not in self._heldout_keys:
                return example
        raise ValueError(f"{self.max_tries} draws in a row were held-out problems: "
                         f"heldout_size={self.heldout_size} covers almost every problem; "
                         "lower it or raise num_numbers or max_number")

    def demonstration(self, example: Example) -> str:
        """{"prompt": "3 5 7>22:", ..., "solution": "3*5+7"} -> "3*5+7"."""
        return example["solution"]


def _check(t, default) -> None:
    if t.n < 2 or t.V < 2:
        raise ConfigError(f"task.n={t.n}, task.V={t.V}: countdown needs n >= 2 numbers and "
                          "V >= 2")


def _build(t) -> CountdownTask:
    return CountdownTask(num_numbers=t.n, max_number=t.V, **split_args(t))


SPEC = TaskSpec(
    name="countdown", help="'3 5 7>22:' -> an expression such as '3*5+7'", build=_build,
    check=_check, fields=("n", "V", *TEXT_FIELDS),
    describe=lambda t: f"task: countdown with {t.n} numbers in 1..{t.V}{extra_rewards(t)}")
