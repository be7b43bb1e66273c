"""Tasks: a prompt source, reward functions and an evaluation, one file per task.

`build_task` maps the config's task group to a task object. Text tasks are imported lazily, so
the toy task never needs the language-model dependencies.
"""

from lmrl.tasks.sort import REWARDS as SORT_REWARDS
from lmrl.tasks.sort import SortTask, evaluate_sort

__all__ = ["SORT_REWARDS", "SortTask", "build_task", "evaluate_sort"]


def build_task(t):
    """TaskConfig -> SortTask or a TextTask (with any extra reward functions appended)."""
    from lmrl.config import SORT_HELDOUT

    if t.task == "sort":
        return SortTask(n=t.n, V=t.V, repeats=t.repeats, prompts=t.prompts,
                        train_frac=t.train_frac, heldout_size=t.heldout_size or SORT_HELDOUT,
                        constants_in_train=t.constants_in_train, split_seed=t.split_seed,
                        reward=t.reward)
    from lmrl.tasks.text import check_reward_names, load_reward_fn

    timeout = t.reward_timeout or None  # 0 = no limit
    split = {"split_seed": t.split_seed}
    if t.heldout_size is not None:  # else the task's own default
        split["heldout_size"] = t.heldout_size
    if t.task == "sort_text":
        from lmrl.tasks.sort_text import SortTextTask

        task = SortTextTask(n=t.n, V=t.V, repeats=t.repeats, reward=t.reward, **split)
    elif t.task in ("addition", "multiplication"):
        from lmrl.tasks.arithmetic import ArithmeticTask

        task = ArithmeticTask(op="+" if t.task == "addition" else "*", digits=t.digits, **split)
    elif t.task == "countdown":
        from lmrl.tasks.countdown import CountdownTask

        task = CountdownTask(num_numbers=t.n, max_number=t.V, **split)
    elif t.task == "gsm8k":
        from lmrl.tasks.gsm8k import GSM8KTask

        task = GSM8KTask(data=t.data, heldout_data=t.heldout_data, **split)
    else:
        from lmrl.tasks.user import UserTask

        if t.heldout_data is not None:
            split = {}
        # Its reward functions are the configured ones; it checks their names itself.
        return UserTask(data=t.data, reward_fns=list(t.reward_fns),
                        heldout_data=t.heldout_data, reward_timeout=timeout, **split)
    # Only the user's functions get the time limit: built-ins run on the calling thread.
    task.rewards = task.rewards + [load_reward_fn(spec, timeout) for spec in t.reward_fns]
    check_reward_names([r.name for r in task.rewards])  # now, not at the first step
    return task
