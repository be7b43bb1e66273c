"""What every text task shares: examples, weighted reward functions, and the held-out evaluation.

An example is a dict with a "prompt" string; every other key is a column that reward functions
receive (TRL's convention), e.g. {"prompt": "3 1 2=", "numbers": [3, 1, 2]}.

A reward function sees N = B*G flat rows (each prompt and its columns repeated once per
completion). A task holds one or more `RewardFn`s with weights; the training reward is their
weighted sum, and each one's mean is logged on its own. Exactly one of them is the task's
*correctness* (exact match, right answer): held-out correctness is the signal the runs are judged
by (eval/exact_match).

A user's reward function (--reward-fns, or a callable given to lmrl.train) is called exactly as
TRL's GRPOTrainer calls it, by keyword:

    f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
      log_metric=..., **columns) -> list[float | None]

`prompts` are the dataset's prompts as given (strings, or lists of messages); `completions` are
strings for standard data and `[{"role": "assistant", "content": text}]` for conversational
data; `completion_ids` the sampled token ids (EOS included, no padding); `columns` every dataset
column but prompt/completion; `trainer_state` has `global_step` and `max_steps`. An async
function is awaited. `None` means "does not apply to this sample", with TRL's weighting: the
training reward is the weighted sum over the functions that returned a number, and a sample that
no function scored is left out of its group's statistics and gets Δ = 0 (deltas.py), as TRL does.
lmrl's own task rewards are called positionally, f(prompts, completions, **columns).

A reward function that raises is a bug, not a zero: `score` re-runs it row by row to find the
first sample that raises and reports that prompt and completion. A user's reward function runs
under a time limit (TaskConfig.reward_timeout) in a daemon thread, so a call that hangs stops the
run with an error instead of stalling it, and cannot keep the process alive afterwards. Built-in
rewards run on the calling thread: gsm8k's math-verify guards itself with SIGALRM, which works
only on the main thread.
"""

import ast
import asyncio
import dataclasses
import importlib
import inspect
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmrl.errors import ConfigError, RewardError
from lmrl.tasks.data import data_file, load_examples, read_lines  # noqa: F401 - their old home

Example = dict
RewardCallable = Callable[..., Sequence[float]]


@dataclass(frozen=True)
class TrainerProgress:
    """The part of transformers' TrainerState that reward functions read (TRL passes the
    trainer's state as `trainer_state`, e.g. to schedule a reward over training)."""

    global_step: int = 0
    max_steps: int = 0


@dataclass
class RewardContext:
    """What a TRL-style call passes besides prompts, completions and columns, and what the
    functions log back through log_metric (means per step) and log_extra (columns)."""

    completion_ids: list[list[int]] | None = None
    trainer_state: TrainerProgress = field(default_factory=TrainerProgress)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, list] = field(default_factory=dict)
    group_size: int = 1  # G: the flat rows are B groups of G (reward_table sets it)
    training: bool = False  # a training step's batch (a reward model's running stats learn)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self.extra[column] = list(values)


@dataclass(frozen=True)
class RewardFn:
    name: str
    fn: RewardCallable
    weight: float = 1.0
    timeout: float | None = None  # seconds one call may take; None = no limit, calling thread
    trl: bool = False  # called as TRL calls it (keywords, None allowed); False: lmrl's own

    def score(self, prompts: list, completions: list[str], columns: dict[str, list],
              context: RewardContext | None = None) -> list[float]:
        """The RewardSource protocol (tasks/registry.py): call_reward on N flat rows."""
        return call_reward(self, prompts, completions, columns, context)


def reward_from_callable(fn, weight: float = 1.0, timeout: float | None = None,
                         name: str | None = None) -> RewardFn:
    """A user's callable (a function, an async function, a callable object such as TRL's
    get_soft_overlong_punishment(...)) as a TRL-style RewardFn named after its __name__."""
    if not callable(fn):
        raise ConfigError(f"reward function {fn!r} is not callable; give a function")
    if not math.isfinite(weight):
        raise ConfigError(f"reward function {name or fn!r}: weight {weight} is not finite")
    name = name or getattr(fn, "__name__", None) or type(fn).__name__
    return RewardFn(name, fn, float(weight), timeout or None, trl=True)


# Callables given to lmrl.train, by the name their config spec '<callable>:name' carries: they
# live in this process only.
CALLABLE_PREFIX = "<callable>:"
CALLABLES: dict[str, Callable] = {}


def register_callable(fn: Callable, taken: set[str]) -> str:
    """fn's name in CALLABLES: its __name__, numbered only if another function of the same run
    (`taken`) has it. A later run's function of the same name replaces the earlier one (a
    notebook cell run again), so that the reward keeps its name and its metrics theirs."""
    base = getattr(fn, "__name__", None) or type(fn).__name__
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    CALLABLES[name] = fn
    taken.add(name)
    return name


# module:function, or module:factory(literal keyword arguments), then an optional =weight.
SPEC = re.compile(r"^(?P<module>[\w.]+):(?P<attr>\w+)(?P<args>\(.*\))?(?:=(?P<weight>[^()]*))?$")


def load_reward_fn(spec: str, timeout: float | None = None) -> RewardFn:
    """'package.module:function[=weight]' -> RewardFn named after the function, whose calls
    may each take `timeout` seconds (None = no limit). 'module:factory(k=v, ...)' calls a factory
    with literal arguments first (TRL's get_soft_overlong_punishment(max_completion_len=...,
    soft_punish_cache=...)) and names the reward after what it returns."""
    if spec.startswith(CALLABLE_PREFIX):
        return load_callable(spec, timeout)
    match = SPEC.match(spec.strip())
    if not match:
        raise ConfigError(f"reward function {spec!r} must look like 'module:function' "
                          "(optionally '=weight'), or 'module:factory(arg=value, ...)'")
    module_name, attr, args = match["module"], match["attr"], match["args"]
    weight = parse_weight(spec, match["weight"]) if match["weight"] is not None else 1.0
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
    if args is not None:
        fn = call_factory(spec, fn, args)
        return reward_from_callable(fn, weight, timeout)
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r} is not callable; name a function")
    return RewardFn(attr, fn, weight, timeout or None, trl=True)


def load_callable(spec: str, timeout: float | None) -> RewardFn:
    """'<callable>:name[=weight]': a callable this process registered (lmrl.train)."""
    name, has_weight, weight_text = spec[len(CALLABLE_PREFIX):].partition("=")
    if name not in CALLABLES:
        raise ConfigError(f"reward function {spec!r} was a Python callable given to lmrl.train "
                          "in another process; pass it again (lmrl.train(..., reward_fns=[...]))"
                          ", or name it as 'module:function' so a config file can load it")
    weight = parse_weight(spec, weight_text) if has_weight else 1.0
    return reward_from_callable(CALLABLES[name], weight, timeout, name=name)


def call_factory(spec: str, factory, args: str):
    """factory(**literal keyword arguments parsed from '(k=v, ...)')."""
    try:
        call = ast.parse(f"f{args}", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("give the arguments by keyword, e.g. (max_completion_len=64)")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as err:
        raise ConfigError(f"reward function {spec!r}: cannot read the arguments {args}: {err}; "
                          "write literal keyword arguments, e.g. "
                          "'trl.rewards:get_soft_overlong_punishment(max_completion_len=64, "
                          "soft_punish_cache=16)'") from err
    try:
        return factory(**kwargs)
    except Exception as err:  # noqa: BLE001 - the user's factory: any error
        raise ConfigError(f"reward function {spec!r}: calling it raised "
                          f"{type(err).__name__}: {err}") from err


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


def call_reward(reward: RewardFn, prompts: list, completions: list[str],
                columns: dict[str, list], context: RewardContext | None = None) -> list[float]:
    """Call one reward function on N rows; a raise, a hang past its timeout or a malformed
    result names the sample. A TRL-style function's None comes back as nan ("does not
    apply"); every other value must be a finite number."""
    call = Call(reward, context or RewardContext())
    try:
        values = _run(call, prompts, completions, columns, reward.timeout)
    except RewardTimeout as err:
        raise RewardError(_timeout_message(reward, prompts, completions)) from err
    except Exception as err:  # noqa: BLE001 - re-raised with the failing sample named
        raise RewardError(_first_failure(call, prompts, completions, columns, err)) from err
    if len(values) != len(completions):
        raise RewardError(f"reward {reward.name!r} returned {len(values)} values for "
                          f"{len(completions)} completions")
    out = []
    for i, v in enumerate(values):
        if v is None and reward.trl:
            out.append(math.nan)
        elif (isinstance(v, (int, float)) and (reward.trl or not isinstance(v, bool))
              and math.isfinite(v)):
            out.append(float(v))
        else:
            allowed = "finite numbers or None" if reward.trl else "finite numbers"
            raise RewardError(f"reward {reward.name!r} returned {v!r} for sample {i} "
                              f"(prompt={_short(str(prompts[i]))}, completion="
                              f"{_short(completions[i])}); rewards must be {allowed}")
    return out


@dataclass(frozen=True)
class Call:
    """One reward function with what a call passes it besides the rows."""

    reward: RewardFn
    context: RewardContext

    def __call__(self, prompts: list, completions: list[str], columns: dict[str, list]) -> list:
        """The function's values on these rows, in its calling convention; awaited if async."""
        if not self.reward.trl:
            return list(self.reward.fn(prompts, completions, **columns))
        ctx = self.context
        if prompts and is_conversational(prompts[0]):
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        result = self.reward.fn(prompts=prompts, completions=completions,
                                completion_ids=ctx.completion_ids,
                                trainer_state=ctx.trainer_state, log_extra=ctx.log_extra,
                                log_metric=ctx.log_metric, **columns)
        return list(await_result(result) if inspect.isawaitable(result) else result)


def is_conversational(prompt) -> bool:
    """TRL's conversational format: a prompt is a list of {"role", "content"} messages."""
    return isinstance(prompt, list)


def await_result(awaitable):
    """An async reward function's result. asyncio.run needs a thread without a running event
    loop (a notebook's main thread has one), so it gets a fresh thread then."""
    async def wait():
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=asyncio.run(wait())))
    thread.start()
    thread.join()
    return box["value"]


class RewardTimeout(Exception):
    """A timed reward call did not return in time (call_reward turns it into a RewardError)."""


def _run(call: Call, prompts, completions, columns, timeout: float | None) -> list:
    """The call's values on the calling thread, or, with a timeout, on a daemon thread that is
    abandoned if it does not finish in time. Not a ThreadPoolExecutor: its threads are joined at
    interpreter exit, so a hung call would hang the exit too."""
    if not timeout:  # None or 0: no limit
        return call(prompts, completions, columns)
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            # Call lists the result, so that a lazy one is computed under the time limit too.
            outcome["values"] = call(prompts, completions, columns)
        except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name=f"reward-{call.reward.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RewardTimeout(call.reward.name)
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


def _first_failure(call: Call, prompts, completions, columns, err: Exception) -> str:
    """The message for a batch call that raised: the first row that raises on its own. With a
    timeout, the whole search gets that many seconds, then reports the batch's error."""
    reward, ids = call.reward, call.context.completion_ids
    deadline = time.monotonic() + reward.timeout if reward.timeout else None
    for i in range(len(completions)):
        row = {k: v[i:i + 1] for k, v in columns.items()}
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            one = dataclasses.replace(call.context, completion_ids=ids and ids[i:i + 1])
            _run(Call(reward, one), prompts[i:i + 1], completions[i:i + 1], row, left)
        except RewardTimeout:
            break
        except Exception as row_err:  # noqa: BLE001
            return (f"reward {reward.name!r} raised {type(row_err).__name__}: {row_err} on "
                    f"sample {i} (prompt={_short(str(prompts[i]))}, "
                    f"completion={_short(completions[i])})")
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

    may_leave_unscored = True  # a TRL-style reward's None: reward nan, Δ 0 (the step checks)
    progress = TrainerProgress()  # set by at_step; what reward functions see as trainer_state
    logged: RewardContext | None = None  # the last scoring's log_metric / log_extra

    def at_step(self, step: int, steps: int) -> None:
        """The Task protocol's hook before a step's scoring: the step reward functions see."""
        self.progress = TrainerProgress(global_step=step, max_steps=steps)

    def reward_table(self, examples: list[Example], completions: list[list[str]],
                     context: RewardContext | None = None) -> dict[str, Tensor]:
        """Each reward function's value per completion (nan where a TRL-style function returned
        None). B examples, B lists of G -> (B, G)."""
        check_reward_names([r.name for r in self.rewards])
        B, G = len(examples), len(completions[0]) if completions else 0
        prompts = [ex["prompt"] for ex in examples for _ in range(G)]
        flat = [c for row in completions for c in row]
        columns = {k: v for k, v in flat_columns(examples, G).items() if k not in NOT_COLUMNS}
        context = context or RewardContext(trainer_state=self.progress)
        context.group_size = G
        # float64: a user's rewards may be large, and their weighted sum is checked for overflow.
        return {r.name: torch.tensor(r.score(prompts, flat, columns, context),
                                     dtype=torch.float64).reshape(B, G)
                for r in self.rewards}

    def score(self, examples: list[Example], completions: list[list[str]],
              context: RewardContext | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted training reward (B, G) and every reward's own table, all float64. A
        sample that no reward function scored (all returned None) has reward nan."""
        table = self.reward_table(examples, completions, context)
        total, unscorable = weighted_sum(self.rewards, table)
        bad = (~torch.isfinite(total) & ~unscorable).nonzero()
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

    def score_rollout(self, examples: list[Example], rollout,
                      context: RewardContext | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """score() on a policy's rollout, whose texts are already decoded; the reward functions'
        completion_ids are its tokens (EOS included, no padding). What they log with
        log_metric / log_extra is kept in `self.logged` until the step's metrics take it."""
        context = context or RewardContext(trainer_state=self.progress)
        if any(r.trl for r in self.rewards):  # lmrl's own rewards never read the ids
            context.completion_ids = completion_ids(rollout)
        self.logged = context
        return self.score(examples, rollout.texts, context)

    def score_training(self, examples: list[Example], rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """score_rollout for a training step's batch (step.collect's; the pre-flight check runs
        it too and then restores the statistics): only these batches move a reward model's
        running normalisation, evaluation's leave it as it is."""
        return self.score_rollout(examples, rollout,
                                  RewardContext(trainer_state=self.progress, training=True))

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


# Columns TRL does not pass to reward functions (they are arguments of their own, or the SFT
# target).
NOT_COLUMNS = ("prompt", "completion", "completion_ids")


def completion_ids(rollout) -> list[list[int]] | None:
    """Each response's tokens without padding, flat over N = B*G rows (None: no token ids)."""
    responses, mask = getattr(rollout, "responses", None), getattr(rollout, "response_mask", None)
    if responses is None or mask is None:
        return None
    flat, keep = responses.reshape(-1, responses.shape[-1]).tolist(), mask.reshape(
        -1, mask.shape[-1]).tolist()
    return [[t for t, k in zip(row, ks, strict=True) if k] for row, ks in zip(flat, keep,
                                                                               strict=True)]


def weighted_sum(rewards: list[RewardFn], table: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The training reward Σ weight · value over the functions that scored each sample (TRL's
    nansum), nan where none did; and that unscorable mask. Shapes (B, G)."""
    values = [table[r.name] for r in rewards]
    if not any(bool(v.isnan().any()) for v in values):
        return sum(r.weight * v for r, v in zip(rewards, values, strict=True)), \
            torch.zeros(values[0].shape, dtype=torch.bool)
    unscorable = torch.stack([v.isnan() for v in values]).all(dim=0)
    total = sum(r.weight * v.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf)
                for r, v in zip(rewards, values, strict=True))
    return total.masked_fill(unscorable, math.nan), unscorable


@torch.no_grad()
def evaluate_text(task: TextTask, policy, generator: torch.Generator | None = None,
                  num_samples: int = 0, batch_size: int = 256, max_examples: int | None = None,
                  num_logged: int = 4) -> tuple[dict[str, float], list[dict]]:
    """Greedy held-out evaluation -> (eval/* metrics, a few logged samples).

    eval/exact_match is the mean correctness of the greedy completion (absent when the task has
    no correctness reward), eval/reward the weighted
    reward, eval/reward_<name> each reward's mean, eval/truncated the fraction that hit the token
    budget. With num_samples > 0 also eval/pass_at_<k> (some of k sampled completions correct).
    A reward's mean is over the examples it scored (a TRL-style None is left out).
    """
    examples = task.heldout[:max_examples] if max_examples else task.heldout
    sums: dict[str, list[float]] = {}  # key -> [sum, count]
    samples: list[dict] = []
    policy_was_training = policy.training
    policy.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [ex["prompt"] for ex in chunk]
        rollout = policy.sample(prompts, 1, temperature=0.0)
        context = RewardContext(trainer_state=task.progress)
        total, table = task.score_rollout(chunk, rollout, context)
        parts = {f"eval/reward_{k}": v for k, v in table.items()}
        parts["eval/reward"] = total
        if task.correctness is not None:
            parts["eval/exact_match"] = task.correct(table)
        parts["eval/truncated"] = rollout.truncated.float()
        if num_samples > 0 and task.correctness is not None:
            sampled = policy.sample(prompts, num_samples, generator=generator)
            _, sampled_table = task.score_rollout(chunk, sampled)
            parts[f"eval/pass_at_{num_samples}"] = task.correct(sampled_table).amax(dim=-1)
        for key, value in parts.items():
            part = sums.setdefault(key, [0.0, 0])
            part[0] += float(nan_sum(value))
            part[1] += int((~value.isnan()).sum())
        for i in range(min(num_logged - len(samples), len(chunk))):
            samples.append({"prompt": prompts[i], "completion": rollout.texts[i][0],
                            **{k: float(v[i, 0]) for k, v in table.items()},
                            **{k: v[i] for k, v in context.extra.items() if i < len(v)}})
    policy.train(policy_was_training)
    return {k: total / count for k, (total, count) in sums.items() if count}, samples


def nan_sum(values: Tensor) -> Tensor:
    """The sum of the non-nan values (exactly Tensor.sum when there is no nan)."""
    return values.nansum() if bool(values.isnan().any()) else values.sum()
