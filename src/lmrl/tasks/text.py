"""What every text task shares: examples, weighted reward functions, and the held-out evaluation.

An example is a dict with a "prompt" string; every other key is a column that reward functions
receive (TRL's convention), e.g. {"prompt": "3 1 2=", "numbers": [3, 1, 2]}.

A reward function has TRL's signature

    f(prompts: list[str], completions: list[str], **columns) -> list[float]

over N = B*G flat rows (each prompt and its columns repeated once per completion). A task holds
one or more `RewardFn`s with weights; the training reward is their weighted sum, and each one's
mean is logged on its own. Exactly one of them is the task's *correctness* (exact match, right
answer): held-out correctness is the signal the runs are judged by (eval/exact_match).

A reward function that raises is a bug, not a zero: `score` re-runs it row by row to find the
first sample that raises and reports that prompt and completion.
"""

import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

Example = dict
RewardCallable = Callable[..., Sequence[float]]


class RewardError(RuntimeError):
    """A reward function failed or returned something that is not one float per completion."""


@dataclass(frozen=True)
class RewardFn:
    name: str
    fn: RewardCallable
    weight: float = 1.0


def load_reward_fn(spec: str) -> RewardFn:
    """'package.module:function[=weight]' -> RewardFn named after the function."""
    target, _, weight = spec.partition("=")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function {spec!r} must look like 'module:function' "
                         "(optionally '=weight')")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # A console script's sys.path starts at its bin/ directory, not the working one, where
        # a user's my_rewards.py usually is.
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load reward function {spec!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"reward function {spec!r} is not callable")
    return RewardFn(attr, fn, float(weight) if weight else 1.0)


def flat_columns(examples: list[Example], G: int) -> dict[str, list]:
    """Each example's columns repeated G times, as TRL passes them. B examples -> N rows."""
    keys = examples[0].keys() if examples else []
    return {k: [ex[k] for ex in examples for _ in range(G)] for k in keys}


def call_reward(reward: RewardFn, prompts: list[str], completions: list[str],
                columns: dict[str, list]) -> list[float]:
    """Call one reward function on N rows; a raise or a malformed result names the sample."""
    try:
        values = list(reward.fn(prompts, completions, **columns))
    except Exception as err:  # noqa: BLE001 - re-raised with the failing sample named
        raise RewardError(_first_failure(reward, prompts, completions, columns, err)) from err
    if len(values) != len(completions):
        raise RewardError(f"reward {reward.name!r} returned {len(values)} values for "
                          f"{len(completions)} completions")
    for i, v in enumerate(values):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise RewardError(f"reward {reward.name!r} returned {v!r} for sample {i} "
                              f"(prompt={prompts[i]!r}, completion={completions[i]!r}); "
                              "rewards must be finite numbers")
    return [float(v) for v in values]


def _first_failure(reward: RewardFn, prompts, completions, columns, err: Exception) -> str:
    for i in range(len(completions)):
        row = {k: v[i:i + 1] for k, v in columns.items()}
        try:
            reward.fn(prompts[i:i + 1], completions[i:i + 1], **row)
        except Exception as row_err:  # noqa: BLE001
            return (f"reward {reward.name!r} raised {type(row_err).__name__}: {row_err} on "
                    f"sample {i} (prompt={prompts[i]!r}, completion={completions[i]!r})")
    return f"reward {reward.name!r} raised {type(err).__name__}: {err} on the whole batch"


# train/reward_<name> must not collide with the step's own reward statistics.
RESERVED_REWARD_NAMES = {"mean", "std", "group_max"}


def check_reward_names(names: list[str]) -> None:
    """Each reward is logged under its name, so names must differ and avoid reserved ones."""
    clash = [n for n in names if n in RESERVED_REWARD_NAMES or names.count(n) > 1]
    if clash:
        raise ValueError(f"reward functions {names} share a name or take a reserved one: each is "
                         f"logged as train/reward_<name>, so names must be unique and not one of "
                         f"{sorted(RESERVED_REWARD_NAMES)}. Rename {sorted(set(clash))}")


class TextTask:
    """Base of the text tasks: subclasses set `name`, `rewards`, `correctness`, `heldout` and
    implement `train_example(generator)` (or set `train`, a finite list) and `demonstration`."""

    name: str = "text"
    rewards: list[RewardFn]
    correctness: str | None  # name of the 0/1 reward in `rewards` that says "right"; None if none
    heldout: list[Example]
    train: list[Example] | None = None
    max_new_tokens: int = 64  # a sensible completion budget for the task

    def train_example(self, generator: torch.Generator) -> Example:
        raise NotImplementedError(f"{type(self).__name__} has no example generator")

    def sample_prompts(self, B: int, generator: torch.Generator) -> list[Example]:
        """B training examples: drawn without replacement from a finite train set when it is
        large enough, else generated fresh."""
        if self.train is not None:
            K = len(self.train)
            idx = (torch.randperm(K, generator=generator)[:B] if B <= K
                   else torch.randint(0, K, (B,), generator=generator))
            return [self.train[i] for i in idx.tolist()]
        return [self.train_example(generator) for _ in range(B)]

    def demonstration(self, example: Example) -> str:
        """A correct completion, for supervised warm starts (lmrl sft)."""
        raise NotImplementedError(f"{type(self).__name__} has no demonstrations")

    def reward_table(self, examples: list[Example], completions: list[list[str]]
                     ) -> dict[str, Tensor]:
        """Each reward function's value per completion. B examples, B lists of G -> (B, G)."""
        check_reward_names([r.name for r in self.rewards])
        B, G = len(examples), len(completions[0]) if completions else 0
        prompts = [ex["prompt"] for ex in examples for _ in range(G)]
        flat = [c for row in completions for c in row]
        columns = {k: v for k, v in flat_columns(examples, G).items() if k != "prompt"}
        return {r.name: torch.tensor(call_reward(r, prompts, flat, columns)).reshape(B, G)
                for r in self.rewards}

    def score(self, examples: list[Example], completions: list[list[str]]
              ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted training reward (B, G) and every reward's own table."""
        table = self.reward_table(examples, completions)
        total = sum(r.weight * table[r.name] for r in self.rewards)
        return total, table

    def score_rollout(self, examples: list[Example], rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """score() on a policy's rollout, whose texts are already decoded."""
        return self.score(examples, rollout.texts)

    def correct(self, table: dict[str, Tensor]) -> Tensor:
        """0/1 correctness per completion from a reward table. (B, G)."""
        return table[self.correctness]


@torch.no_grad()
def evaluate_text(task: TextTask, policy, generator: torch.Generator | None = None,
                  num_samples: int = 0, batch_size: int = 256, max_examples: int | None = None,
                  num_logged: int = 4) -> tuple[dict[str, float], list[dict]]:
    """Greedy held-out evaluation -> (eval/* metrics, a few logged samples).

    eval/exact_match is the mean correctness of the greedy completion (absent when the task has
    no correctness reward), eval/reward the weighted
    reward, eval/reward_<name> each reward's mean, eval/truncated the fraction that hit the token
    budget. With num_samples > 0 also eval/pass_at_<k> (some of k sampled completions correct).
    """
    examples = task.heldout[:max_examples] if max_examples else task.heldout
    sums: dict[str, float] = {}
    samples: list[dict] = []
    policy_was_training = policy.training
    policy.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [ex["prompt"] for ex in chunk]
        rollout = policy.sample(prompts, 1, temperature=0.0)
        total, table = task.score(chunk, rollout.texts)
        parts = {f"eval/reward_{k}": v.sum() for k, v in table.items()}
        parts["eval/reward"] = total.sum()
        if task.correctness is not None:
            parts["eval/exact_match"] = task.correct(table).sum()
        parts["eval/truncated"] = rollout.truncated.float().sum()
        if num_samples > 0 and task.correctness is not None:
            sampled = policy.sample(prompts, num_samples, generator=generator)
            _, sampled_table = task.score(chunk, sampled.texts)
            parts[f"eval/pass_at_{num_samples}"] = task.correct(sampled_table).amax(dim=-1).sum()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        for i in range(min(num_logged - len(samples), len(chunk))):
            samples.append({"prompt": prompts[i], "completion": rollout.texts[i][0],
                            **{k: float(v[i, 0]) for k, v in table.items()}})
    policy.train(policy_was_training)
    return {k: v / len(examples) for k, v in sums.items()}, samples


def load_examples(path: str | Path) -> list[Example]:
    """Rows of a .jsonl or .parquet file; each must have a string 'prompt' column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("reading parquet needs pyarrow: pip install 'lmrl[parquet]'") from err
        rows = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        rows = []
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON: {err}") from err
    else:
        raise ValueError(f"data file {path}: unknown format {path.suffix!r}; use .jsonl or "
                         ".parquet")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{path}: row {i} has no string 'prompt' column")
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows
