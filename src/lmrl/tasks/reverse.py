"""Reversing a list as text: prompt "3 1 2 0<" (n numbers from 0..V-1, then "<"), correct
completion "0 2 1 3". The smallest text task, and the example of adding one: this file plus one
line in tasks/__init__.py's TASKS.

Parsing as sort_text's: a completion is split on whitespace and read with `parse_int`; the first
n tokens are graded, and exact match needs exactly n tokens.

Rewards (pure, deterministic, never raise on a completion):
- exact_match: 1 if the completion is exactly the reversed numbers, else 0 (the correctness and,
  by default, the training reward: weight 1).
- positional: positions (of the first n) equal to the reversed list, weight 0 (logged).
"""

from dataclasses import dataclass

import torch

from lmrl.tasks import sort
from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, extra_rewards, split_args
from lmrl.tasks.sort_text import parse_int
from lmrl.tasks.text import Example, RewardFn, TextTask


def _first_n(completion: str, n: int) -> tuple[list[int | None], int]:
    """The first n tokens as numbers (None: not a number) and how many tokens there were."""
    tokens = completion.split()
    return [parse_int(token) for token in tokens[:n]], len(tokens)


def exact_match(prompts: list[str], completions: list[str], numbers: list[list[int]],
                **columns) -> list[float]:
    """numbers [3, 1, 2]: "2 1 3" -> 1, " 2 1  3\\n" -> 1, "2 1 3 3" -> 0, "1 2 3" -> 0."""
    out = []
    for completion, row in zip(completions, numbers, strict=True):
        window, count = _first_n(completion, len(row))
        out.append(float(count == len(row) and window == row[::-1]))
    return out


def positional(prompts: list[str], completions: list[str], numbers: list[list[int]],
               **columns) -> list[float]:
    """numbers [3, 1, 2]: "2 1 3" -> 3, "2 x 3" -> 2, "3 1 2" -> 1, "" -> 0."""
    out = []
    for completion, row in zip(completions, numbers, strict=True):
        window, _ = _first_n(completion, len(row))
        out.append(float(sum(a == b for a, b in zip(window, row[::-1], strict=False))))
    return out


def reverse_example(numbers: list[int]) -> Example:
    """[3, 1, 2] -> {"prompt": "3 1 2<", "numbers": [3, 1, 2]}."""
    return {"prompt": " ".join(map(str, numbers)) + "<", "numbers": list(numbers)}


@dataclass
class ReverseTask(TextTask):
    """heldout_size distinct random prompts (seeded by split_seed) are held out; training
    prompts are drawn fresh, never a held-out one (the toy sort task's prompt source)."""

    n: int = 5
    V: int = 10
    heldout_size: int = 500
    split_seed: int = 0

    name = "reverse"

    def __post_init__(self) -> None:
        self._prompts = sort.SortTask(self.n, self.V, prompts="random",
                                      heldout_size=self.heldout_size, split_seed=self.split_seed)
        self.rewards = [RewardFn("exact_match", exact_match, 1.0),
                        RewardFn("positional", positional, 0.0)]
        self.correctness = "exact_match"
        self.heldout = [reverse_example(row) for row in self._prompts.heldout.tolist()]
        self.max_new_tokens = self.n * (len(str(self.V - 1)) + 1)  # numbers, spaces, EOS

    def train_example(self, generator: torch.Generator) -> Example:
        return reverse_example(self._prompts.sample_prompts(1, generator)[0].tolist())

    def demonstration(self, example: Example) -> str:
        """{"numbers": [3, 1, 2], ...} -> "2 1 3"."""
        return " ".join(map(str, example["numbers"][::-1]))


def _check(t, default) -> None:
    sort.check_numbers(t)
    sort.check_heldout(t, t.heldout_size or ReverseTask.heldout_size)


def _build(t) -> ReverseTask:
    return ReverseTask(n=t.n, V=t.V, **split_args(t))


SPEC = TaskSpec(
    name="reverse", help="reversing a list: '3 1 2 0<' -> '0 2 1 3'", build=_build,
    check=_check, fields=("n", "V", *TEXT_FIELDS),
    describe=lambda t: f"task: reverse n={t.n} V={t.V}{extra_rewards(t)}")
