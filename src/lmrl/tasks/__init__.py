"""Tasks: a prompt source, reward functions and an evaluation, one file per task.

`TASKS` is the registry: each task module declares a `TaskSpec` (tasks/registry.py) with its
config fields, checks, description and builder, and is listed here once. `build_task` builds
the configured one and appends the user's extra reward functions. Task modules import torch,
never transformers: the toy task needs no language-model dependency.
"""

from dataclasses import replace

from lmrl.tasks import arithmetic, countdown, gsm8k, reverse, sort, sort_text, user
from lmrl.tasks.registry import TaskSpec
from lmrl.tasks.sort import REWARDS as SORT_REWARDS
from lmrl.tasks.sort import SortTask, evaluate_sort

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    sort.SPEC, sort_text.SPEC, arithmetic.ADDITION, arithmetic.MULTIPLICATION, countdown.SPEC,
    gsm8k.SPEC, user.SPEC, reverse.SPEC,
)}

__all__ = ["SORT_REWARDS", "TASKS", "SortTask", "TaskSpec", "build_task", "evaluate_sort"]


def build_task(t, policy_device: str = "auto"):
    """TaskConfig -> the task object, with the user's reward functions (reward_fns) appended to
    a text task's own (only those get the time limit: built-ins run on the calling thread), then
    the reward models (reward_model), which run on reward_model_device (auto: policy_device).
    The task's own rewards' weights are multiplied by task_reward_weight first."""
    spec = TASKS[t.task]
    task = spec.build(t)
    if not spec.text:
        return task
    from lmrl.tasks.reward_model import load_reward_models
    from lmrl.tasks.text import check_reward_names, load_reward_fn

    if not spec.own_reward_fns:
        task.rewards = [replace(r, weight=r.weight * t.task_reward_weight) for r in task.rewards]
        timeout = t.reward_timeout or None  # 0 = no limit
        task.rewards = task.rewards + [load_reward_fn(s, timeout) for s in t.reward_fns]
    task.rewards = task.rewards + load_reward_models(t, policy_device)
    if not task.rewards:
        raise ValueError(f"task {t.task} has no reward: give --reward-fns module:function or "
                         "--reward-model DIR")
    if all(r.weight == 0 for r in task.rewards):
        raise ValueError("every reward has weight 0 "
                         f"({', '.join(r.name for r in task.rewards)}), so every group is flat "
                         "and nothing is learned; give one a nonzero weight (--task-reward-weight, "
                         "--reward-fns module:function=w, --reward-model DIR=w)")
    check_reward_names([r.name for r in task.rewards])  # now, not at the first step
    return task
