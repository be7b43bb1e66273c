"""A task from the user's own data and reward functions.

Rows come from `--data` (tasks/data.py): a .jsonl, .json, .csv or .parquet file, a
`save_to_disk` directory (with --data-split) or a hub dataset (with --data-config and
--data-split), read through `datasets`. The prompt column (--prompt-column, default "prompt")
holds strings, or lists of {"role", "content"} messages (TRL's conversational format, rendered by
the model's chat template). Every other column is passed to every reward function as a keyword
list over the N = B*G flat rows (TRL's convention). Reward functions are given as
'module:function[=weight]' specs; the module must be importable (on sys.path). Reward models
(--reward-model DIR, tasks/reward_model.py) score the same rows, with or without reward
functions. The training reward is their weighted sum. Each function call may take
reward_timeout seconds (--reward-timeout; None/0 = no limit) before the run stops with an
error.

Held-out rows are the heldout_split of the same dataset when given, else the heldout_data file,
else a random split of heldout_size rows (seeded by split_seed). Training rows never share a
prompt with a held-out row: rows of `data` whose prompt is held out are left out of `train`
(`num_overlap_dropped` counts them).

Demonstrations (lmrl sft) are the answer column (--answer-column; default "completion", else
"answer"). Correctness (eval/exact_match) is the reward named "correct", else the one named
"exact_match", else there is none. It must return 0 or 1.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from lmrl.errors import ConfigError, DataError
from lmrl.tasks.data import Rows, load_rows, prompt_key
from lmrl.tasks.registry import TEXT_FIELDS, TaskSpec, describe_data, reject_unused
from lmrl.tasks.text import Example, RewardError, TextTask, check_reward_names, load_reward_fn

CORRECTNESS_NAMES = ("correct", "exact_match")
DEMONSTRATION_COLUMNS = ("completion", "answer")
RESERVED_COLUMNS = ("prompts", "completions")  # the reward functions' positional arguments


@dataclass
class UserTask(TextTask):
    data: object  # a path or hub name; from Python also a datasets.Dataset or a list of dicts
    reward_fns: list[str]
    heldout_data: object = None
    heldout_size: int = 200  # used only without heldout_data; then the whole file is held out
    split_seed: int = 0
    max_new_tokens: int = 128
    reward_timeout: float | None = 60.0  # seconds per reward call; None = no limit
    data_config: str | None = None
    data_split: str = "train"
    heldout_split: str | None = None
    prompt_column: str = "prompt"
    answer_column: str | None = None  # None: "completion", else "answer", else no demonstrations

    name = "user"

    def __post_init__(self) -> None:
        # No reward function is fine when reward models follow (build_task checks that some
        # reward remains).
        self.rewards = [load_reward_fn(spec, self.reward_timeout) for spec in self.reward_fns]
        names = [r.name for r in self.rewards]
        check_reward_names(names)
        self.correctness = next((c for c in CORRECTNESS_NAMES if c in names), None)
        rows = self._load(self.data, self.data_split)
        columns = _check_columns(rows)
        self.answer = _answer_column(columns, self.answer_column, rows.source)
        if self.heldout_split is not None:
            heldout, train = self._load(self.data, self.heldout_split), rows
        elif self.heldout_data is not None:
            heldout, train = self._load(self.heldout_data, "train"), rows
        else:
            heldout, train = self._split(rows)
        if heldout.dataset is not rows.dataset and _check_columns(heldout) != columns:
            raise DataError(f"{heldout.source} has columns {sorted(_check_columns(heldout))}, "
                            f"but {rows.source} has {sorted(columns)}; held-out rows need the "
                            "same columns, since reward functions receive each column")
        self.heldout = heldout
        self.train = _without(train, heldout)
        self.num_overlap_dropped = len(train) - len(self.train)
        if not self.train:
            raise ValueError(f"every prompt of {rows.source} is held out; no training rows "
                             "remain")

    def _load(self, source, split: str) -> Rows:
        return load_rows(source, split, self.data_config if source is self.data else None,
                         self.prompt_column)

    def _split(self, rows: Rows) -> tuple[Rows, Rows]:
        """(held-out rows, training rows): a random heldout_size of them, seeded."""
        if not 1 <= self.heldout_size <= len(rows) - 1:
            raise ValueError(f"heldout_size={self.heldout_size} must be in 1..{len(rows) - 1}: "
                             f"{rows.source} has {len(rows)} rows and at least one must remain "
                             "for training (or pass heldout_data)")
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.split_seed))
        keep = torch.ones(len(rows), dtype=torch.bool)
        keep[order[:self.heldout_size]] = False
        return (Rows(rows.dataset, rows.source, order[:self.heldout_size]),
                Rows(rows.dataset, rows.source, keep.nonzero().squeeze(-1)))

    def has_demonstrations(self) -> bool:
        return self.answer is not None

    def demonstration(self, example: Example) -> str:
        """The row's answer column as a string (a conversational completion: its messages'
        contents)."""
        if self.answer is None:
            raise DataError(f"supervised training (lmrl sft) needs a demonstration column, but "
                            f"{self.data} has none of {list(DEMONSTRATION_COLUMNS)}; add one, "
                            "or name the column with --answer-column")
        value = example[self.answer]
        if value is None:
            raise DataError(f"the row with prompt {example['prompt']!r} has no {self.answer!r} "
                            "(null); every row needs a demonstration for lmrl sft")
        if isinstance(value, list):
            return "".join(str(message["content"]) for message in value)
        return str(value)

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


def _check_columns(rows: Rows) -> set[str]:
    """The rows' columns, none of which may be a reward function's positional argument."""
    columns = set(rows.dataset.column_names)
    reserved = columns.intersection(RESERVED_COLUMNS)
    if reserved:
        raise DataError(f"{rows.source}: column(s) {sorted(reserved)} clash with the reward "
                        "functions' arguments (prompts, completions); rename them")
    return columns


def _answer_column(columns: set[str], answer_column: str | None, source: str) -> str | None:
    """The demonstration column: the one named, else "completion", else "answer", else None."""
    if answer_column is None:
        return next((c for c in DEMONSTRATION_COLUMNS if c in columns), None)
    if answer_column not in columns:
        raise DataError(f"{source} has no answer column {answer_column!r}; its columns are "
                        f"{sorted(columns)}; name one with --answer-column")
    return answer_column


def _without(train: Rows, heldout: Rows) -> Rows:
    """The training rows whose prompt no held-out row has, in their order."""
    held = {prompt_key(p) for batch in heldout.column("prompt") for p in batch}
    keep = [prompt_key(p) not in held for batch in train.column("prompt") for p in batch]
    return Rows(train.dataset, train.source, train.positions()[torch.tensor(keep, dtype=bool)])


def _check(t, default) -> None:
    if t.data is None:
        raise ConfigError("task=user needs --data FILE, DIRECTORY or hub dataset name")
    if not t.reward_fns and not t.reward_model:
        raise ConfigError("task=user needs at least one --reward-fns module:function or "
                          "--reward-model DIR")
    if t.heldout_split is not None and t.heldout_data is not None:
        raise ConfigError("--heldout-split and --heldout-data both choose the held-out rows; "
                          "give one of them")
    held = t.heldout_data is not None or t.heldout_split is not None
    reject_unused(t, default, held, ("heldout_size", "split_seed"),
                  "with heldout_data or heldout_split the user task evaluates those whole rows")
    for name in ("data_split", "heldout_split", "prompt_column", "answer_column"):
        if getattr(t, name) == "":
            raise ConfigError(f"task.{name} is empty; give a name, or leave it out")


def _build(t) -> UserTask:
    held = t.heldout_data is not None or t.heldout_split is not None
    split = {} if held else {"split_seed": t.split_seed}
    if not held and t.heldout_size is not None:
        split["heldout_size"] = t.heldout_size
    timeout = t.reward_timeout or None
    return UserTask(data=t.data, reward_fns=list(t.reward_fns), heldout_data=t.heldout_data,
                    reward_timeout=timeout, data_config=t.data_config, data_split=t.data_split,
                    heldout_split=t.heldout_split, prompt_column=t.prompt_column,
                    answer_column=t.answer_column, **split)


DATA_FIELDS = ("data_config", "data_split", "heldout_split", "prompt_column", "answer_column")

SPEC = TaskSpec(
    name="user", help="your data's prompt column -> what your --reward-fns score",
    # No task_reward_weight: the user task has no rewards of its own (--reward-fns f=w weighs).
    build=_build, check=_check, fields=("data", "heldout_data", *DATA_FIELDS,
                                        *(f for f in TEXT_FIELDS if f != "task_reward_weight")),
    own_reward_fns=True,
    describe=describe_data)
