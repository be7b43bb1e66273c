"""Sorting as text: the toy sort task (sort.py) with string prompts and completions.

Prompt "3 1 2 0 4=" (n numbers from 0..V-1, single spaces, then "="); the correct completion is
"0 1 2 3 4". Shapes: N = B*G flat rows; n numbers per prompt.

Parsing. A completion is split on whitespace (so extra spaces, tabs and newlines are harmless);
a token is a number when `parse_int` reads it ("7", "12", "-1"; "00" reads as 0), otherwise it
is unparseable ("x", "3,", "1.0", "+1"). The first n tokens fill the toy's n response positions;
a short completion leaves the last positions empty, and tokens after the n-th are not graded.
Each reward is then sort.py's own function on those n positions (called, not re-implemented),
extended in two ways only:
- an unparseable or empty position equals nothing: no positional match, no inclusion;
- an adjacent pair counts towards adjacency only when both of its positions hold numbers.
Consequences: a completion of exactly n numbers scores what the toy scores on the same numbers
(tests/test_text_tasks.py compares them; out-of-range numbers like 99 or -1 are compared by
value, as the toy does); a too-short completion just has fewer matches; a longer one scores what
its first n tokens score, so never more than the correct answer, and exact_match needs exactly n
tokens. Appending junk after a right answer costs the graded rewards nothing, which is why
`max_new_tokens` leaves no room for it.
"""

import functools
import re
import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from lmrl.errors import ConfigError
from lmrl.tasks import sort
from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, extra_rewards, split_args
from lmrl.tasks.text import Example, RewardFn, TextTask

_INT = re.compile(r"-?[0-9]+")
MAX_INT_DIGITS = 4300  # Python's default sys.get_int_max_str_digits()


def parse_int(token: str) -> int | None:
    """An integer in ASCII digits with an optional '-': '12' -> 12, '-3' -> -3, '007' -> 7;
    anything else ('x', '3,', '1.0', '+1', '', '١') -> None, and so is a number of more than
    MAX_INT_DIGITS digits ('9' * 4301)."""
    if len(token.removeprefix("-")) > _max_digits() or not _INT.fullmatch(token):
        return None
    return int(token)


def _max_digits() -> int:
    """The most digits parse_int reads. int() refuses more than sys.get_int_max_str_digits()
    (ValueError), and is quadratic in the digits when that limit is lifted (0), so the
    length is checked first, explicitly, and never exceeds MAX_INT_DIGITS."""
    limit = sys.get_int_max_str_digits()
    return min(limit, MAX_INT_DIGITS) if limit else MAX_INT_DIGITS


def _positions(numbers: list[list[int]], completions: list[str]
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Parse once per batch: a step scores the same completions with all four rewards."""
    return _parsed(tuple(map(tuple, numbers)), tuple(completions))


@functools.lru_cache(maxsize=2)
def _parsed(numbers: tuple[tuple[int, ...], ...], completions: tuple[str, ...]
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Prompts (N, n), responses (N, 1, n), which positions hold a number (N, 1, n) and each
    completion's token count (N,).

    Values are replaced by their rank among the row's values: the toy's rewards only compare with
    == and <=, which ranks preserve, and ranks are small non-negative ints (one_hot needs them;
    a 400-digit number does not fit in int64). An empty position gets a rank no value has.
    """
    n = len(numbers[0])
    prompts, responses, filled, counts = [], [], [], []
    for prompt, completion in zip(numbers, completions, strict=True):
        if len(prompt) != n:
            raise ValueError(f"sort rewards need n numbers in every row; got {len(prompt)} and {n}")
        tokens = completion.split()
        window = [parse_int(t) for t in tokens[:n]]
        window += [None] * (n - len(window))
        values = sorted(set(prompt) | {v for v in window if v is not None})
        rank = {v: i for i, v in enumerate(values)}
        prompts.append([rank[v] for v in prompt])
        responses.append([len(values) if v is None else rank[v] for v in window])
        filled.append([v is not None for v in window])
        counts.append(len(tokens))
    return (torch.tensor(prompts), torch.tensor(responses).unsqueeze(1),
            torch.tensor(filled).unsqueeze(1), torch.tensor(counts))


def _adjacency(responses: Tensor, filled: Tensor) -> Tensor:
    """sort.adjacency, counting a pair only when both its positions hold numbers.
    (N, 1, n) -> (N, 1)."""
    in_order = responses[..., :-1] <= responses[..., 1:]
    return (in_order & filled[..., :-1] & filled[..., 1:]).sum(dim=-1).float()


def exact_match(prompts: list[str], completions: list[str], numbers: list[list[int]],
                **columns) -> list[float]:
    """1 if the completion is exactly the n sorted numbers, else 0.

    numbers [3, 1, 2, 0]: "0 1 2 3" -> 1, " 0 1  2 3\\n" -> 1, "0 1 2 3 3" -> 0, "0 1 2" -> 0.
    """
    if not completions:
        return []
    p, r, _, counts = _positions(numbers, completions)
    return (sort.exact_match(p, r)[:, 0] * (counts == p.shape[-1])).tolist()


def positional(prompts: list[str], completions: list[str], numbers: list[list[int]],
               **columns) -> list[float]:
    """Positions (of the first n) equal to the sorted prompt.

    numbers [3, 1, 2, 0]: "0 1 2 3" -> 4, "1 0 2 3" -> 2, "0 1 x 3" -> 3, "0 1" -> 2,
    "0 1 2 3 9 9" -> 4.
    """
    if not completions:
        return []
    p, r, _, _ = _positions(numbers, completions)
    return sort.positional(p, r)[:, 0].tolist()


def inclusion_adjacency(prompts: list[str], completions: list[str], numbers: list[list[int]],
                        **columns) -> list[float]:
    """Prompt positions whose value appears among the first n tokens, plus adjacent pairs of
    numbers in non-decreasing order.

    numbers [3, 1, 2, 0]: "0 1 2 3" -> 4 + 3 = 7 (the maximum 2n - 1), "0 0 0 0" -> 1 + 3 = 4,
    "0 1 x 3" -> 3 + 1 = 4, "" -> 0.
    """
    if not completions:
        return []
    p, r, filled, _ = _positions(numbers, completions)
    return (sort.inclusion(p, r) + _adjacency(r, filled))[:, 0].tolist()


def inclusion_adjacency_multiset(prompts: list[str], completions: list[str],
                                 numbers: list[list[int]], **columns) -> list[float]:
    """inclusion_adjacency with inclusion = Σ_v min(#v in prompt, #v in the first n tokens).

    numbers [2, 0, 2]: "0 2 2" -> 3 + 2 = 5 (the maximum), "0 0 2" -> 2 + 2 = 4 (the plain
    inclusion_adjacency gives it 5).
    """
    if not completions:
        return []
    p, r, filled, _ = _positions(numbers, completions)
    return (sort.inclusion_multiset(p, r) + _adjacency(r, filled))[:, 0].tolist()


REWARDS = {
    "exact_match": exact_match,
    "positional": positional,
    "inclusion_adjacency": inclusion_adjacency,
    "inclusion_adjacency_multiset": inclusion_adjacency_multiset,
}


def sort_example(numbers: list[int]) -> Example:
    """[3, 1, 2, 0] -> {"prompt": "3 1 2 0=", "numbers": [3, 1, 2, 0]}."""
    return {"prompt": " ".join(map(str, numbers)) + "=", "numbers": list(numbers)}


@dataclass
class SortTextTask(TextTask):
    """The toy's "random" prompt source as text: heldout_size distinct random prompts (seeded by
    split_seed) are held out, and training prompts are drawn fresh, never a held-out one.

    `reward` is the training reward (weight 1); the other sort rewards are in `rewards` with
    weight 0, so each one's mean is logged. Correctness is exact_match.
    """

    n: int = 5
    V: int = 10
    repeats: bool = True
    heldout_size: int = 500
    split_seed: int = 0
    reward: str = "positional"

    name = "sort_text"

    def __post_init__(self) -> None:
        self._validate()
        self._toy = sort.SortTask(self.n, self.V, self.repeats, prompts="random",
                                  heldout_size=self.heldout_size, split_seed=self.split_seed,
                                  reward=self.reward)
        self.rewards = [RewardFn(name, fn, 1.0 if name == self.reward else 0.0)
                        for name, fn in REWARDS.items()]
        self.correctness = "exact_match"
        self.heldout = [sort_example(row) for row in self._toy.heldout.tolist()]
        # n numbers of at most len(str(V - 1)) digits, n - 1 spaces, and the EOS token.
        self.max_new_tokens = self.n * (len(str(self.V - 1)) + 1)

    def _validate(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"reward={self.reward!r} is not a sort reward; choose one of "
                             f"{', '.join(REWARDS)}")
        if self.n < 1 or self.V < 1:
            raise ValueError(f"n={self.n} and V={self.V} must both be >= 1")
        if not self.repeats and self.n > self.V:
            raise ValueError(f"n={self.n} distinct numbers need V >= n (V={self.V}); lower n "
                             "or allow repeats")
        total = sort.num_prompts(self.n, self.V, self.repeats)
        if not 1 <= self.heldout_size <= total // 2:
            raise ValueError(f"heldout_size={self.heldout_size} must be in 1..{total // 2}, half "
                             f"of all {total} prompts for n={self.n}, V={self.V}, "
                             f"repeats={self.repeats}, so that training prompts remain")

    def train_example(self, generator: torch.Generator) -> Example:
        """A fresh random prompt that is not held out."""
        return sort_example(self._toy.sample_prompts(1, generator)[0].tolist())

    def demonstration(self, example: Example) -> str:
        """{"numbers": [3, 1, 2, 0], ...} -> "0 1 2 3"."""
        return " ".join(map(str, sorted(example["numbers"])))


def _check(t, default) -> None:
    if t.reward not in REWARDS:
        raise ConfigError(f"task.reward={t.reward!r} is unknown; valid: {', '.join(REWARDS)}")
    sort.check_numbers(t)
    if t.heldout_size is not None:
        sort.check_heldout(t, t.heldout_size)


def _build(t) -> SortTextTask:
    return SortTextTask(n=t.n, V=t.V, repeats=t.repeats, reward=t.reward, **split_args(t))


SPEC = TaskSpec(
    name="sort_text", help="sorting as text: '3 1 2 0 4=' -> '0 1 2 3 4'", build=_build,
    check=_check, fields=("n", "V", "repeats", "reward", *TEXT_FIELDS),
    describe=lambda t: f"task: sort_text n={t.n} V={t.V} reward={t.reward}{extra_rewards(t)}")
