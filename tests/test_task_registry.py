"""Tier 3: the task registry. Every registered task declares fields the config has, builds from
the config, and satisfies the Task protocol; reverse (the smallest text task, added as one file
plus one registry line) scores hand-computed examples and trains end to end."""

import dataclasses
import json

import pytest
import torch

from lmrl.cli import main
from lmrl.config import Config, ConfigError, TaskConfig, describe
from lmrl.tasks import TASKS, build_task
from lmrl.tasks.registry import Task
from lmrl.tasks.reverse import ReverseTask, exact_match, positional

CONFIG_FIELDS = {f.name for f in dataclasses.fields(TaskConfig)}
BUILDABLE = {"sort": {}, "sort_text": {"n": 4, "V": 6, "heldout_size": 20},
             "addition": {"digits": 2, "heldout_size": 20},
             "multiplication": {"digits": 2, "heldout_size": 20},
             "countdown": {"n": 3, "V": 6, "heldout_size": 10},
             "reverse": {"n": 3, "V": 5, "heldout_size": 20}}


@pytest.mark.parametrize("name", list(TASKS))
def test_each_spec_names_real_config_fields(name):
    spec = TASKS[name]
    assert spec.name == name and set(spec.fields) <= CONFIG_FIELDS - {"task"}
    assert spec.help and callable(spec.build) and callable(spec.check)


@pytest.mark.parametrize("name", list(BUILDABLE))
def test_each_task_builds_and_satisfies_the_task_protocol(name):
    t = dataclasses.replace(TaskConfig(task=name), **BUILDABLE[name])
    task = build_task(t)
    assert isinstance(task, Task)
    prompts = task.sample_prompts(3, torch.Generator().manual_seed(0))
    assert len(prompts) == 3
    assert TASKS[name].describe(t).startswith(f"task: {name}")


def test_a_field_the_task_does_not_read_is_rejected_naming_what_it_reads():
    cfg = {"policy": {"model": "m"}, "task": {"task": "reverse", "digits": 2}}
    with pytest.raises(ConfigError, match=r"task\.digits=2 has no effect here.*reads n, V"):
        Config.from_dict(cfg)
    with pytest.raises(ConfigError, match="use --task sort_text"):
        Config.from_dict({"policy": {"model": "m"}, "task": {"task": "sort"}})


def test_reverse_rewards_match_hand_computed_values():
    numbers = [[3, 1, 2]] * 6
    completions = ["2 1 3", " 2 1  3\n", "2 1 3 3", "1 2 3", "2 x 3", ""]
    assert exact_match([], completions, numbers) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert positional([], completions, numbers) == [3.0, 3.0, 3.0, 1.0, 2.0, 0.0]
    task = ReverseTask(n=3, V=5, heldout_size=20)
    example = task.heldout[0]
    assert example["prompt"].endswith("<")
    assert task.demonstration(example).split() == [str(v) for v in example["numbers"][::-1]]
    train = {tuple(task.train_example(torch.Generator().manual_seed(s))["numbers"])
             for s in range(50)}
    assert not train & {tuple(ex["numbers"]) for ex in task.heldout}


def test_reverse_trains_end_to_end_through_the_cli(tmp_path):
    args = ["--task", "reverse", "--n", "3", "--V", "5", "--heldout-size", "16"]
    main(["init-model", "--out", str(tmp_path / "init"), "--hidden-size", "16", "--layers", "1",
          "--heads", "2", *args])
    main(["train", "--model", str(tmp_path / "init"), "--run-dir", str(tmp_path / "run"),
          "--steps", "2", "--B", "4", "--G", "4", "--eval-every", "2", "--threads", "1",
          "--no-progress", *args])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and "eval/exact_match" in summary
    assert "task: reverse n=3 V=5" in describe(Config.from_dict(
        json.loads((tmp_path / "run" / "config.json").read_text())))
