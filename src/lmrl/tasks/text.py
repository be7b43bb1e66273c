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
first sample that raises and reports that prompt and completion. A user's reward function runs
under a time limit (TaskConfig.reward_timeout) in a daemon thread, so a call that hangs stops the
run with an error instead of stalling it, and cannot keep the process alive afterwards. Built-in
rewards run on the calling thread: gsm8k's math-verify guards itself with SIGALRM, which works
only on the main thread.
"""

import importlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmrl.errors import ConfigError, RewardError
from lmrl.tasks.data import data_file, load_examples, read_lines  # noqa: F401 - their old home

Example = dict
RewardCallable = Callable[..., Sequence[float]]


@dataclass(frozen=True)
class RewardFn:
    name: str
    fn: RewardCallable
    weight: float = 1.0
    timeout: float | None = None  # seconds one call may take; None = no limit, calling thread

    def score(self, prompts: list[str], completions: list[str],
              columns: dict[str, list]) -> list[float]:
        """The RewardSource protocol (tasks/registry.py): call_reward on N flat rows."""
        return call_reward(self, prompts, completions, columns)


def load_reward_fn(spec: str, timeout: float | None = None) -> RewardFn:
    """'package.module:function[=weight]' -> RewardFn named after the function, whose calls
    may each take `timeout` seconds (None = no limit)."""
    target, has_weight, weight_text = spec.partition("=")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward function {spec!r} must look like 'module:function' "
                          "(optionally '=weight')")
    weight = parse_weight(spec, weight_text) if has_weight else 1.0
    if timeout is not None and not timeout >= 0:
        raise ConfigError(f"reward timeout {timeout} for {spec!r} must be >= 0 seconds "
                          "(0 = no limit); set --reward-timeout SECONDS")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # A console script's sys.path starts at its bin/ directory, not the working one, where
        # a user's my_rewards.py usually is.
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # noqa: BLE001 - importing runs the user's module: any error
        raise ConfigError(f"cannot load reward function {spec!r}: {type(err).__name__}: "
                          f"{err}; the module must be "
                          "importable (in the working directory or on PYTHONPATH) and define "
                          "the function") from err
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r} is not callable; name a function")
    return RewardFn(attr, fn, weight, timeout or None)


def parse_weight(spec: str, text: str) -> float:
    """The finite float after '=': a nan or inf weight would make every total reward nan/inf."""
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise ConfigError(f"reward function {spec!r}: weight {text!r} is not a finite number; "
                          "write e.g. 'module:function=0.5', or leave out '=weight' for 1")
    return weight


def flat_columns(examples: list[Example], G: int) -> dict[str, list]:
    """Each example's columns repeated G times, as TRL passes them. B examples -> N rows."""
    keys = examples[0].keys() if examples else []
    return {k: [ex[k] for ex in examples for _ in range(G)] for k in keys}


def call_reward(reward: RewardFn, prompts: list[str], completions: list[str],
                columns: dict[str, list]) -> list[float]:
    """Call one reward function on N rows; a raise, a hang past its timeout or a malformed
    result names the sample."""
    try:
        values = _run(reward, prompts, completions, columns, reward.timeout)
    except RewardTimeout as err:
        raise RewardError(_timeout_message(reward, prompts, completions)) from err
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


class RewardTimeout(Exception):
    """A timed reward call did not return in time (call_reward turns it into a RewardError)."""


def _run(reward: RewardFn, prompts, completions, columns, timeout: float | None) -> list:
    """reward.fn's values on the calling thread, or, with a timeout, on a daemon thread that is
    abandoned if it does not finish in time. Not a ThreadPoolExecutor: its threads are joined at
    interpreter exit, so a hung call would hang the exit too."""
    if not timeout:  # None or 0: no limit
        return list(reward.fn(prompts, completions, **columns))
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            # list() here, so that a lazy result is computed under the time limit too.
            outcome["values"] = list(reward.fn(prompts, completions, **columns))
        except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name=f"reward-{reward.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RewardTimeout(reward.name)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["values"]


def _short(text: str, limit: int = 200) -> str:
    """repr of a prompt or completion, cut to `limit` characters for an error message."""
    return repr(text[:limit]) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def _timeout_message(reward: RewardFn, prompts, completions) -> str:
    first = (f"; first sample: prompt={_short(prompts[0])}, completion={_short(completions[0])}"
             if completions else "")
    return (f"reward {reward.name!r} did not return within {reward.timeout:g}s on a batch of "
            f"{len(completions)} completions{first}. Fix the function (it may hang or be very "
            "slow on some input), or raise the limit with --reward-timeout SECONDS "
            "(0 = no limit)")


def _first_failure(reward: RewardFn, prompts, completions, columns, err: Exception) -> str:
    """The message for a batch call that raised: the first row that raises on its own. With a
    timeout, the whole search gets that many seconds, then reports the batch's error."""
    deadline = time.monotonic() + reward.timeout if reward.timeout else None
    for i in range(len(completions)):
        row = {k: v[i:i + 1] for k, v in columns.items()}
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            _run(reward, prompts[i:i + 1], completions[i:i + 1], row, left)
        except RewardTimeout:
            break
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
        # float64: a user's rewards may be large, and their weighted sum is checked for overflow.
        return {r.name: torch.tensor(r.score(prompts, flat, columns),
                                     dtype=torch.float64).reshape(B, G)
                for r in self.rewards}

    def score(self, examples: list[Example], completions: list[list[str]]
              ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted training reward (B, G) and every reward's own table, all float64."""
        table = self.reward_table(examples, completions)
        total = sum(r.weight * table[r.name] for r in self.rewards)
        bad = (~torch.isfinite(total)).nonzero()
        if len(bad):
            b, g = bad[0].tolist()
            terms = ", ".join(f"{r.name!r} (weight {r.weight:g}) returned "
                              f"{table[r.name][b, g].item():g}" for r in self.rewards)
            raise RewardError(f"the weighted reward of sample {b * len(completions[b]) + g} "
                              f"(prompt={_short(examples[b]['prompt'])}, "
                              f"completion={_short(completions[b][g])}) is "
                              f"{total[b, g].item()}: {terms}. Use smaller weights (or "
                              "values) so that their weighted sum stays finite")
        return total, table

    def score_rollout(self, examples: list[Example], rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """score() on a policy's rollout, whose texts are already decoded."""
        return self.score(examples, rollout.texts)

    def correct(self, table: dict[str, Tensor]) -> Tensor:
        """0/1 correctness per completion from a reward table. (B, G)."""
        return table[self.correctness]

    def evaluate(self, policy, generator: torch.Generator, num_samples: int, group_size: int,
                 max_examples: int | None = None, num_logged: int = 4
                 ) -> tuple[dict[str, float], list[dict]]:
        """The Task protocol's evaluation: greedy held-out metrics (evaluate_text), pass@k only
        when num_samples > 0 (group_size does not apply), and a few logged completions."""
        return evaluate_text(self, policy, generator, num_samples=num_samples,
                             max_examples=max_examples, num_logged=num_logged)


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
