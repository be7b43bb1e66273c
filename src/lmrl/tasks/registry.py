"""The task registry's entry: what the config needs to know about a task.

Each task module declares one `TaskSpec`: its name, a one-line help, which `TaskConfig` fields
it reads, whether its prompts are text (a causal LM) or the toy's tensors, its own checks and
its one-line description, and how to build it from the task config. `lmrl.tasks.TASKS` maps
names to specs; config.py validates, rejects unread fields and describes through them, so no
module outside a task's own file branches on its name. Adding a task is one file plus one line
in `TASKS`.

A spec's functions receive the config's task group (a `TaskConfig`, duck-typed: this leaf module
does not import config) and raise `ConfigError` with the fix.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lmrl.errors import ConfigError


@runtime_checkable
class Task(Protocol):
    """What the step, the trainer and evaluation use of a task (sort.SortTask for the toy's
    tensors, text.TextTask's subclasses for text). Shapes: B prompts, G samples each."""

    correctness: str | None
    """The name of the 0/1 reward that says "right" (eval/exact_match), None if there is none."""

    def sample_prompts(self, B: int, generator) -> Any:
        """B training prompts: a (B, n) tensor, or B examples (dicts with a "prompt")."""

    def at_step(self, step: int, steps: int) -> None:
        """Called before each step's scoring: the step number (text tasks pass it to reward
        functions as trainer_state)."""

    def score_rollout(self, prompts, rollout) -> tuple[Any, dict[str, Any]]:
        """The training reward (B, G) and every reward function's own table {name: (B, G)}; nan
        marks a sample no reward function scored (TRL's None), whose Δ is 0."""

    def correct(self, table: dict[str, Any]) -> Any:
        """0/1 correctness (B, G) from a reward table."""

    def evaluate(self, policy, generator, num_samples: int, group_size: int,
                 max_examples: int | None = None, num_logged: int = 0
                 ) -> tuple[dict[str, float], list[dict]]:
        """Held-out eval/* metrics and a few logged samples."""


@runtime_checkable
class RewardSource(Protocol):
    """One reward of a text task: a verifiable checker today (text.RewardFn around a function
    with TRL's signature), a learned reward model next. N = B*G flat rows."""

    name: str  # logged as train/reward_<name> and eval/reward_<name>
    weight: float  # its share of the training reward

    def score(self, prompts: list, completions: list[str], columns: dict[str, list],
              context: Any = None) -> list[float]:
        """One float per completion: finite, or nan for "does not apply" (TRL's None); a failure
        names the sample (RewardError). `context` carries completion_ids, the step and the
        log_metric / log_extra sinks (text.RewardContext)."""


def at_step(task, step: int, steps: int) -> None:
    """Task.at_step when the task has it: an optional hook, so that a task written before it
    (or one whose rewards ignore the step) still runs."""
    hook = getattr(task, "at_step", None)
    if hook is not None:
        hook(step, steps)


def score_training(task, prompts, rollout):
    """A training step's scoring: Task.score_training when the task has it (text tasks: a reward
    model's running statistics move only on training batches), else score_rollout."""
    hook = getattr(task, "score_training", None)
    return hook(prompts, rollout) if hook is not None else task.score_rollout(prompts, rollout)


def running_stats(task) -> dict:
    """{reward name: its running statistics} for the task's rewards that keep some (a reward
    model under --reward-model-norm running); the objects themselves, not copies."""
    sources = getattr(task, "rewards", None)  # the toy sort task's `rewards` is a method
    return {r.name: r.stats for r in sources if getattr(r, "stats", None) is not None} \
        if isinstance(sources, list) else {}


# What every text task reads besides its own fields: a held-out split and user reward functions.
TEXT_FIELDS = ("heldout_size", "split_seed", "reward_fns", "reward_timeout", "reward_model",
               "reward_model_device", "reward_model_batch_size", "reward_model_norm",
               "task_reward_weight")


def no_check(t, default) -> None:
    """A task with nothing to check beyond the config's generic rules."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    help: str
    """One line: prompt -> completion, for --help and the README's table."""
    build: Callable
    """TaskConfig -> the task object (imports its module's heavier parts only when called)."""
    fields: tuple[str, ...]
    """The TaskConfig fields it reads besides `task`; any other field must keep its default."""
    text: bool = True
    """Text prompts and completions for a causal LM (False: the toy model's tensors)."""
    check: Callable = no_check
    """Its own rules on its fields (ranges, combinations), raising ConfigError."""
    describe: Callable = field(default=lambda t: f"task: {t.task}")
    """The one-line description printed at start."""
    own_reward_fns: bool = False
    """Its rewards are the user's --reward-fns themselves (else they are added to its own)."""


def reject_unused(t, default, applies: bool, names: tuple[str, ...], why: str) -> None:
    """A field that another setting of the task makes irrelevant must keep its default (one
    setting decides one thing); `default` is a default TaskConfig."""
    for name in names if applies else ():
        value = getattr(t, name)
        if value != getattr(default, name):
            raise ConfigError(f"task.{name}={value!r} has no effect here ({why}); drop it or "
                              "change the setting that disables it")


def split_args(t) -> dict:
    """A text task's held-out split: split_seed, and heldout_size when given (else the task's own
    default)."""
    held = {} if t.heldout_size is None else {"heldout_size": t.heldout_size}
    return {"split_seed": t.split_seed, **held}


def describe_data(t) -> str:
    """The description of a task that reads data files (gsm8k, user)."""
    held = t.heldout_data or (t.heldout_split and f"split {t.heldout_split}") or \
        t.heldout_size or "task default"
    return f"task: {t.task} data={t.data} held out={held}{extra_rewards(t)}"


def extra_rewards(t) -> str:
    fns = f", extra rewards {', '.join(t.reward_fns)}" if t.reward_fns else ""
    models = (f", reward models {', '.join(t.reward_model)} (norm {t.reward_model_norm}, "
              f"device {t.reward_model_device})" if getattr(t, "reward_model", ()) else "")
    own = (f", task reward weight {t.task_reward_weight:g}"
           if getattr(t, "task_reward_weight", 1.0) != 1.0 else "")
    return own + fns + models
