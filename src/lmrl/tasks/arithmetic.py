"""Integer arithmetic as text: prompt "123+456=", correct completion "579".

Operands are drawn uniformly from the numbers with exactly `digits` digits, 10^(d-1)..10^d - 1
(a leading digit that is never 0), except that digits=1 draws from 0..9. Prompts are ordered
pairs: "123+456=" and "456+123=" are different prompts. Shapes: N = B*G flat rows.

Rewards (pure, deterministic, never raise on a completion; an unreadable `answer` column is a
data bug and raises):
- correct: 1 if the stripped completion is an integer (`parse_int`) equal to the answer, else 0.
  The task's correctness.
- digit_accuracy: partial credit with weight 0 by default (logged, not trained on), for
  experimenters who want a denser signal.
"""

import operator
from dataclasses import dataclass

import torch

from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, extra_rewards, split_args
from lmrl.tasks.sort_text import parse_int
from lmrl.tasks.text import Example, RewardFn, TextTask

OPS = {"+": operator.add, "*": operator.mul}
MAX_DIGITS = 18  # operands stay below 2^63 for torch.randint


def correct(prompts: list[str], completions: list[str], answer: list, **columns) -> list[float]:
    """1 if the completion, stripped, reads as an integer equal to the answer, else 0.

    answer 579: "579" -> 1, " 579\\n" -> 1, "0579" -> 1 (it reads as 579), "578" -> 0,
    "579abc" -> 0, "5 79" -> 0, "+579" -> 0, "" -> 0, "9" * 400 -> 0.
    """
    return [float(parse_int(c.strip()) == int(a)) for c, a in zip(completions, answer, strict=True)]


def digit_accuracy(prompts: list[str], completions: list[str], answer: list,
                   **columns) -> list[float]:
    """Digits equal to the answer's, aligned from the right (units with units), over the length
    of the longer of the two numbers; 0 when the completion is not an integer. Only the exact
    answer scores 1, and extra or missing digits cost credit.

    answer 579: "579" -> 1, "578" -> 2/3, "79" -> 2/3, "1579" -> 3/4, "x" -> 0.
    """
    return [_digit_accuracy(parse_int(c.strip()), int(a))
            for c, a in zip(completions, answer, strict=True)]


def _digit_accuracy(value: int | None, answer: int) -> float:
    if value is None:
        return 0.0
    got, want = str(value), str(answer)
    matches = sum(x == y for x, y in zip(reversed(got), reversed(want), strict=False))
    return matches / max(len(got), len(want))


@dataclass
class ArithmeticTask(TextTask):
    """a op b for `digits`-digit operands: heldout_size distinct random prompts (seeded by
    split_seed) are held out, and training prompts are drawn fresh, never a held-out one."""

    op: str = "+"
    digits: int = 3
    heldout_size: int = 500
    split_seed: int = 0

    name = "arithmetic"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op={self.op!r} is not supported; choose one of {', '.join(OPS)}")
        if not 1 <= self.digits <= MAX_DIGITS:
            raise ValueError(f"digits={self.digits} must be in 1..{MAX_DIGITS}")
        self.low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        self.high = 10**self.digits - 1
        total = (self.high - self.low + 1) ** 2
        if not 1 <= self.heldout_size <= total // 2:
            raise ValueError(f"heldout_size={self.heldout_size} must be in 1..{total // 2}, half "
                             f"of all {total} prompts for digits={self.digits}, so that training "
                             "prompts remain")
        pairs = self._distinct_pairs(self.heldout_size,
                                     torch.Generator().manual_seed(self.split_seed))
        self._heldout_pairs = set(pairs)
        self.heldout = [self.example(a, b) for a, b in pairs]
        self.rewards = [RewardFn("correct", correct),
                        RewardFn("digit_accuracy", digit_accuracy, weight=0.0)]
        self.correctness = "correct"
        # The longest answer, plus the EOS token.
        self.max_new_tokens = len(str(OPS[self.op](self.high, self.high))) + 1

    def example(self, a: int, b: int) -> Example:
        """(123, 456) -> {"prompt": "123+456=", "answer": 579}."""
        return {"prompt": f"{a}{self.op}{b}=", "answer": OPS[self.op](a, b)}

    def _draw(self, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
        pairs = torch.randint(self.low, self.high + 1, (count, 2), generator=generator)
        return [(a, b) for a, b in pairs.tolist()]

    def _distinct_pairs(self, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
        """The first `count` distinct pairs in draw order: a uniform random subset."""
        chosen: dict[tuple[int, int], None] = {}
        while len(chosen) < count:
            for pair in self._draw(2 * count + 64, generator):
                chosen.setdefault(pair)
                if len(chosen) == count:
                    break
        return list(chosen)

    def train_example(self, generator: torch.Generator) -> Example:
        """A fresh random prompt that is not held out."""
        while True:
            (a, b), = self._draw(1, generator)
            if (a, b) not in self._heldout_pairs:
                return self.example(a, b)

    def demonstration(self, example: Example) -> str:
        """{"prompt": "123+456=", "answer": 579} -> "579"."""
        return str(example["answer"])


def _spec(name: str, op: str) -> TaskSpec:
    def build(t) -> ArithmeticTask:
        return ArithmeticTask(op=op, digits=t.digits, **split_args(t))

    return TaskSpec(
        name=name, help=f"'123{op}456=' -> the {name} result", build=build,
        fields=("digits", *TEXT_FIELDS),
        describe=lambda t: f"task: {name} of {t.digits}-digit numbers{extra_rewards(t)}")


ADDITION, MULTIPLICATION = _spec("addition", "+"), _spec("multiplication", "*")
