"""Tasks: a prompt source, reward functions and an evaluation, one file per task."""

from lmrl.tasks.sort import REWARDS as SORT_REWARDS
from lmrl.tasks.sort import SortTask, evaluate_sort

__all__ = ["SORT_REWARDS", "SortTask", "evaluate_sort"]
