"""The Python API: `lmrl.train(...)`, the same run as `lmrl train`, taking Python objects.

    result = lmrl.train(model="Qwen/Qwen2.5-0.5B-Instruct", data=rows, reward_fns=[my_reward],
                        G=8, kl_weight=0.04, steps=200, run_dir="runs/mine")
    result.metrics["eval/reward"], result.run_dir, result.model, result.tokenizer

Options are the CLI's flag names with underscores (`kl_weight`, `G`, `max_new_tokens`), applied
on top of `config` (a Config, a YAML/TOML/JSON config file's path as for `lmrl train --config`,
or None for the defaults). Errors are the CLI's: ConfigError,
DataError, RewardError, RunDirError (all lmrl.errors.UserError), with the Python spelling of
the fix (`overwrite=True` where the CLI says `--overwrite`).

Data (`data=`, `heldout_data=`): a path, a save_to_disk directory or a hub name, as on the
CLI, or a datasets.Dataset / DatasetDict / list of dicts in TRL's standard or conversational
format (config.json then records a description; such a run resumes through the API only).

Reward functions are TRL's (tasks/text.py says how they are called): callables, `(callable,
weight)` pairs or 'module:function[=weight]' strings. A callable is recorded in config.json as
'<callable>:name', which only this process can resolve: resuming such a run through the API
needs the same reward_fns again.
"""

import dataclasses
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmrl.config import Config
from lmrl.errors import ConfigError, RunDirError
from lmrl.tasks.text import CALLABLE_PREFIX, SPEC, register_callable


@dataclass
class RunResult:
    """What a run leaves: its final metrics (summary.json), directory, config and policy."""

    metrics: dict[str, Any]
    run_dir: Path
    config: Config
    policy: torch.nn.Module

    @property
    def model(self) -> torch.nn.Module:
        """The trained transformers model (a causal LM run), else the toy policy itself."""
        return getattr(self.policy, "model", self.policy)

    @property
    def tokenizer(self):
        return getattr(self.policy, "tokenizer", None)

    def __getitem__(self, key: str):
        """result["eval/exact_match"]: the metrics, as the summary dict earlier versions
        returned."""
        return self.metrics[key]


def train(config: Config | str | Path | None = None, *, model: Any = None, tokenizer: Any = None,
          reward_fns: Iterable = (), verbose: bool = True, **options: Any) -> RunResult:
    """Train one run; see the module docstring. `model`: "toy", a local directory, a hub name
    or a transformers PreTrainedModel (then `tokenizer` is required)."""
    from lmrl import files
    from lmrl.state import build_policy
    from lmrl.trainer import build_task, default_run_dir, model_inputs
    from lmrl.trainer import train as run

    if isinstance(config, str | Path):  # a config file, as `lmrl train --config FILE`
        from lmrl.config_files import load

        config = load(Config, config, None)  # checked as a whole once the options are on it
    cfg = config if config is not None else Config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"config must be an lmrl.Config, a config file's path or None, not "
                          f"{type(cfg).__name__}")
    policy = None
    if model is not None and not isinstance(model, str | Path):
        policy = policy_from_objects(model, tokenizer)
        # A description, not a path: the object's weights may differ from any directory's, so a
        # config file from this run must not silently start from other weights.
        source = getattr(model, "name_or_path", "") or "in memory"
        options.setdefault("model", f"<python {type(model).__name__}: {source}>")
    elif model is not None:
        options["model"] = str(model)
    elif tokenizer is not None:
        raise ConfigError("tokenizer= goes with a model object; with a model name or path the "
                          "tokenizer is loaded from it")
    objects = data_objects(options)
    taken: set[str] = set()
    specs = [reward_spec(r, taken) for r in reward_fns]
    if specs:
        options["reward_fns"] = tuple(options.get("reward_fns", ())) + tuple(specs)
    cfg = dataclasses.replace(with_options(cfg, options))  # replace() validates
    if cfg.log.run_dir is None:  # fixed here, so that the early check below sees the same one
        cfg = cfg.replace(log={"run_dir": default_run_dir()})
    try:
        # The output is checked before anything loads, as the trainer does (it checks again).
        files.check_output(cfg.log.run_dir, "train", overwrite=cfg.log.overwrite,
                           resume=cfg.log.resume, inputs=model_inputs(cfg))
        task = build_task(cfg.replace(task=objects) if objects else cfg)
        budget = getattr(task, "max_new_tokens", 64)
        policy = build_policy(cfg, budget) if policy is None else \
            configure_policy(policy, cfg, budget)
        summary = run(cfg, policy=policy, task=task, verbose=verbose)
    except RunDirError as err:
        raise RunDirError(python_spelling(str(err))) from None
    return RunResult(summary, Path(summary["run_dir"]), cfg, policy)


def with_options(cfg: Config, options: dict[str, Any]) -> Config:
    """cfg with flat options (field names of any group) applied; an unknown name is an error
    that suggests the closest field."""
    groups: dict[str, dict[str, Any]] = {}
    fields = {f.name: group.name for group in dataclasses.fields(cfg)
              for f in dataclasses.fields(getattr(cfg, group.name))}
    for name, value in options.items():
        if name in {g.name for g in dataclasses.fields(cfg)} and isinstance(value, dict):
            groups.setdefault(name, {}).update(value)  # algo={"kl_weight": 0.1}
            continue
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"lmrl.train got an unknown option {name!r}{hint} (options are "
                              "the Config's field names, e.g. kl_weight, G, steps)")
        if isinstance(value, list):
            value = tuple(value)  # stop=["\n"]
        groups.setdefault(fields[name], {})[name] = value
    if "data" in groups.get("task", {}) and "task" not in groups.get("task", {}) and \
            cfg.task.task == "sort":
        groups["task"]["task"] = "user"  # data given, no task named: the user's own data
    return cfg.replace(**groups) if groups else cfg


def data_objects(options: dict[str, Any]) -> dict[str, Any]:
    """data= / heldout_data= given as Python objects (a datasets.Dataset or DatasetDict, a list
    of dicts): taken out of the options, which get a description for config.json instead. The
    task is built from the objects themselves (no copy written anywhere)."""
    objects = {}
    for name in ("data", "heldout_data"):
        value = options.get(name)
        if value is not None and not isinstance(value, str | Path):
            objects[name] = value
            size = f", {len(value)} rows" if isinstance(value, list) else ""
            options[name] = f"<python {type(value).__name__}{size}>"
        elif isinstance(value, Path):
            options[name] = str(value)
    return objects


def reward_spec(reward, taken: set[str]) -> str:
    """A reward given to lmrl.train as the config's string spec: 'module:function[=weight]'
    strings as they are, callables registered for this process as '<callable>:name[=w]' (names
    unique among this run's, `taken`)."""
    weight = None
    if isinstance(reward, tuple):
        if len(reward) != 2:
            raise ConfigError(f"reward {reward!r}: give a callable, a 'module:function' string "
                              "or a (reward, weight) pair")
        reward, weight = reward
    if isinstance(reward, str):
        return reward if weight is None else with_weight(reward, float(weight))
    if not callable(reward):
        raise ConfigError(f"reward {reward!r} is not callable; give a function (TRL's "
                          "signature) or a 'module:function' string")
    name = register_callable(reward, taken)
    return f"{CALLABLE_PREFIX}{name}" + ("" if weight is None else f"={float(weight)!r}")


def with_weight(spec: str, weight: float) -> str:
    """'module:function[(args)][=old]' with its weight set to `weight` (the '=' inside a
    factory's arguments is not a weight)."""
    match = SPEC.match(spec.strip())
    if match is None:
        return f"{spec}={weight!r}"  # load_reward_fn names the malformed spec
    return f"{match['module']}:{match['attr']}{match['args'] or ''}={weight!r}"


def policy_from_objects(model, tokenizer):
    """An HFPolicy around a model object the caller already loaded (sampling settings are set
    from the final config by configure_policy)."""
    from transformers import PreTrainedModel

    from lmrl.policies.hf import HFPolicy

    if not isinstance(model, PreTrainedModel):
        raise ConfigError(f"model= takes 'toy', a directory, a hub name or a transformers "
                          f"PreTrainedModel, not {type(model).__name__}")
    if tokenizer is None:
        raise ConfigError("a model object needs its tokenizer: lmrl.train(model=m, "
                          "tokenizer=tok, ...)")
    return HFPolicy(model, tokenizer)


def configure_policy(policy, cfg: Config, budget: int):
    """The config's sampling settings on a policy built from objects (build_policy does this
    for a model it loads); `budget` is the task's completion budget."""
    p = cfg.policy
    if p.device != "auto":
        policy.to(p.device)
    policy.max_new_tokens = p.max_new_tokens or budget
    policy.temperature, policy.top_k, policy.top_p = p.temperature, p.top_k, p.top_p
    policy.stop = tuple(p.stop)
    return policy


def python_spelling(message: str) -> str:
    """A CLI message's flags as lmrl.train's keywords: --overwrite -> overwrite=True."""
    def keyword(match: re.Match) -> str:
        name = match[1].replace("-", "_")
        return f"{name}=True" if name in ("overwrite", "resume") else f"{name}=..."

    return re.sub(r"--([a-z][a-z-]*)", keyword, message)

