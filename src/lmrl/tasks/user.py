"""A task from the user's own data and reward functions.

Rows come from a .jsonl or .parquet file (`load_examples`): a string "prompt" column, and any
other columns, which every reward function receives as keyword lists over the N = B*G flat rows
(TRL's convention). Reward functions are given as 'module:function[=weight]' specs; the module
must be importable (on sys.path). The training reward is their weighted sum. Each call may take
reward_timeout seconds (--reward-timeout; None/0 = no limit) before the run stops with an error.

Held-out rows are the heldout_data file when given, else a random split of heldout_size rows
(seeded by split_seed). Training rows never share a prompt with a held-out row: rows of `data`
whose prompt is held out are left out of `train` (`num_overlap_dropped` counts them).

Correctness (eval/exact_match) is the reward named "correct", else the one named "exact_match",
else there is none. It must return 0 or 1.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lmrl.errors import ConfigError
from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, describe_data, reject_unused
from lmrl.tasks.text import (
    Example,
    RewardError,
    TextTask,
    check_reward_names,
    load_examples,
    load_reward_fn,
)

CORRECTNESS_NAMES = ("correct", "exact_match")
DEMONSTRATION_COLUMNS = ("completion", "answer")
RESERVED_COLUMNS = ("prompts", "completions")  # the reward functions' positional arguments


@dataclass
class UserTask(TextTask):
    data: str
    reward_fns: list[str]
    heldout_data: str | None = None
    heldout_size: int = 200  # used only without heldout_data; then the whole file is held out
    split_seed: int = 0
    max_new_tokens: int = 128
    reward_timeout: float | None = 60.0  # seconds per reward call; None = no limit

    name = "user"

    def __post_init__(self) -> None:
        if not self.reward_fns:
            raise ValueError("a user task needs at least one reward function, given as "
                             "'module:function[=weight]'")
        self.rewards = [load_reward_fn(spec, self.reward_timeout) for spec in self.reward_fns]
        names = [r.name for r in self.rewards]
        check_reward_names(names)
        self.correctness = next((c for c in CORRECTNESS_NAMES if c in names), None)
        rows = load_examples(self.data)
        if self.heldout_data is None:
            heldout, train = self._split(rows)
        else:
            heldout, train = load_examples(self.heldout_data), rows
        columns = _check_columns(rows, self.data, set(rows[0]))
        if self.heldout_data is not None:
            _check_columns(heldout, self.heldout_data, columns)
        held_prompts = {ex["prompt"] for ex in heldout}
        self.heldout = heldout
        self.train = [ex for ex in train if ex["prompt"] not in held_prompts]
        self.num_overlap_dropped = len(train) - len(self.train)
        if not self.train:
            raise ValueError(f"every prompt of {self.data} is held out; no training rows remain")

    def _split(self, rows: list[Example]) -> tuple[list[Example], list[Example]]:
        """(held-out rows, training rows): a random heldout_size of them, seeded."""
        if not 1 <= self.heldout_size <= len(rows) - 1:
            raise ValueError(f"heldout_size={self.heldout_size} must be in 1..{len(rows) - 1}: "
                             f"{self.data} has {len(rows)} rows and at least one must remain "
                             "for training (or pass heldout_data)")
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.split_seed))
        held = set(order[:self.heldout_size].tolist())
        return ([rows[i] for i in order[:self.heldout_size].tolist()],
                [row for i, row in enumerate(rows) if i not in held])

    def demonstration(self, example: Example) -> str:
        """The row's "completion", else its "answer" (as a string)."""
        for column in DEMONSTRATION_COLUMNS:
            if example.get(column) is not None:
                return str(example[column])
        raise NotImplementedError(f"no demonstration for prompt {example['prompt']!r}: supervised "
                                  "training needs a 'completion' or 'answer' column in the data")

    def correct(self, table: dict[str, Tensor]) -> Tensor:
        """The correctness reward's table (B, G), checked to be 0/1: a user's 'correct' could be
        a score, and eval/exact_match would then silently mean something else."""
        values = table[self.correctness]
        bad = values[(values != 0) & (values != 1)]
        if len(bad):
            raise RewardError(f"reward {self.correctness!r} is the task's correctness "
                              f"(eval/exact_match) and must return 0 or 1; it returned "
                              f"{bad[0].item()}")
        return values


def _check_columns(rows: list[Example], path: str | Path, columns: set[str]) -> set[str]:
    """Every row has the same `columns` (each column is passed whole to the rewards)."""
    reserved = columns.intersection(RESERVED_COLUMNS)
    if reserved:
        raise ValueError(f"{path}: column(s) {sorted(reserved)} clash with the reward functions' "
                         "arguments (prompts, completions); rename them")
    for i, row in enumerate(rows):
        if set(row) != columns:
            raise ValueError(f"{path}: row {i} has columns {sorted(row)}, expected "
                             f"{sorted(columns)}; every row needs the same columns, since reward "
                             "functions receive each column for the whole batch")
    return columns


def _check(t, default) -> None:
    if t.data is None:
        raise ConfigError("task=user needs --data FILE")
    if not t.reward_fns:
        raise ConfigError("task=user needs at least one --reward-fns module:function")
    reject_unused(t, default, t.heldout_data is not None, ("heldout_size", "split_seed"),
                  "with heldout_data the user task evaluates that whole file")


def _build(t) -> UserTask:
    split = {} if t.heldout_data is not None else {"split_seed": t.split_seed}
    if t.heldout_data is None and t.heldout_size is not None:
        split["heldout_size"] = t.heldout_size
    timeout = t.reward_timeout or None
    return UserTask(data=t.data, reward_fns=list(t.reward_fns), heldout_data=t.heldout_data,
                    reward_timeout=timeout, **split)


SPEC = TaskSpec(
    name="user", help="your data file's prompt column -> what your --reward-fns score",
    build=_build, check=_check, fields=("data", "heldout_data", *TEXT_FIELDS),
    own_reward_fns=True,
    describe=describe_data)
