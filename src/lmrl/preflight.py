"""Warnings before a wasted run: a pre-flight batch, and the same checks during training.

Before the first step, `preflight` collects one batch (B×G) through the step's own `collect`
and describes it with the step's own `reward_metrics`. It draws from a generator of its own,
seeded like the run's, so it sees exactly step 1's batch without consuming any of the run's
random streams: a run is bit-identical with and without it (tests/test_preflight.py). It
prints a short report, writes preflight.json, and warns, with the likely cause and the flag to
change, when

- every group is flat and Δ is 0 everywhere: no sample differs from its group, so nothing is
  learned (unless every sample is already right);
- most completions are truncated (they hit the token budget);
- one of several reward functions in the training reward gives every sample the same value.

`Watch` runs the same checks on each training step's metrics and warns when a condition has
held for log.warn_after steps in a row: once, and again if it clears and comes back. Every
warning goes to stderr (`lmrl: warning: ...`) and to warnings.jsonl in the run directory.
"""

import dataclasses
import json
import math
import random
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmrl import distributed, files
from lmrl.config import Config
from lmrl.state import TrainState
from lmrl.step import collect, gathered, reward_metrics
from lmrl.tasks import TASKS
from lmrl.tasks.registry import running_stats

MOST = 0.5  # "most completions are truncated": more than this fraction


@dataclass(frozen=True)
class Finding:
    check: str  # "flat", "truncated", "constant:<reward name>" or "none:<reward name>"
    message: str


def trained_rewards(task) -> list[str]:
    """The reward table's entries that weigh in the training reward: a text task's reward
    functions of nonzero weight, the toy sort task's `reward`; [] for a task that says neither
    (its functions are then not checked one by one)."""
    sources = getattr(task, "rewards", None)
    if isinstance(sources, list):
        return [r.name for r in sources if r.weight != 0]
    name = getattr(task, "reward", None)
    return [name] if isinstance(name, str) else []


def findings(metrics: dict[str, float], cfg: Config, trained: list[str]) -> list[Finding]:
    """Every condition that makes a step wasted, read from its train/* metrics."""
    found = [flat_groups(metrics, cfg), truncation(metrics, cfg)]
    if len(trained) > 1:  # with one, a constant function is the flat check's case
        found += [constant_reward(metrics, name, cfg) for name in trained]
    found += [always_none(metrics, name) for name in trained]
    return [f for f in found if f is not None]


def flat_groups(m: dict[str, float], cfg: Config) -> Finding | None:
    if m.get("train/unscorable_frac") == 1.0:
        return None  # nothing was scored at all: always_none names the functions
    if m.get("train/exact_match") == 1.0:
        return None  # every sample is right: solved, not stuck
    mean, std = m["train/reward_mean"], m["train/reward_std"]
    flat_batch = math.isclose(std, 0.0, abs_tol=1e-9 * (1 + abs(mean)))
    if cfg.algo.critic != "none":  # no groups: the critic's Δ compare samples across the batch
        return Finding("flat", f"every sample scores {mean:g}, so the critic's advantages hold "
                               "no reward signal and nothing is learned. Try "
                               f"{', '.join(flat_hints(cfg))}") if flat_batch else None
    if m["train/flat_group_frac"] < 1.0 or m["train/delta_abs_mean"] != 0.0:
        return None
    if flat_batch:
        cause = (f"every sample scores {mean:g}: a sparse reward that no sample earns, one "
                 "that ignores the completion, or a policy that gives one answer to everything")
    else:
        cause = "each prompt's samples all score alike: the policy gives one answer per prompt"
    return Finding("flat", f"every group is flat ({cause}), so every Δ is 0 and nothing is "
                           f"learned. Try {', '.join(flat_hints(cfg))}")


def flat_hints(cfg: Config) -> list[str]:
    """What to change, from the flags this task and model read."""
    spec, hints = TASKS[cfg.task.task], []
    if "reward" in spec.fields and cfg.task.reward == "exact_match":
        hints.append("a partial-credit reward (--reward positional)")
    elif spec.text:
        hints.append("a partial-credit reward function (--reward-fns module:function)")
    if not cfg.is_toy:
        hints.append("an SFT warm start (lmrl sft)")
    hints.append(f"more samples per prompt (--G, now {cfg.train.G})")
    if not cfg.is_toy:
        hints.append(f"a higher --temperature (now {cfg.policy.temperature:g})")
    return hints


def truncation(m: dict[str, float], cfg: Config) -> Finding | None:
    frac = m.get("train/truncated_frac", 0.0)
    if frac <= MOST:
        return None
    budget = cfg.policy.max_new_tokens or "the task's default"
    return Finding("truncated", f"{frac:.0%} of completions hit the token budget "
                                f"(max_new_tokens: {budget}), so their rewards judge cut-off "
                                "text. Raise --max-new-tokens, end answers with --stop STRING, "
                                "or, if the model never learned to stop (an untrained model), "
                                "warm-start it with lmrl sft")


def constant_reward(m: dict[str, float], name: str, cfg: Config) -> Finding | None:
    if m.get(f"train/reward_{name}_std") != 0.0 or \
            m.get(f"train/reward_{name}_none_frac") == 1.0:  # always_none's case
        return None
    value = m[f"train/reward_{name}"]
    fix = "check that it parses these completions, or drop it"
    if TASKS[cfg.task.task].text:
        fix += " from --reward-fns"
    return Finding(f"constant:{name}", f"reward function {name!r} gave every sample {value:g}: "
                                       f"it adds nothing to the ranking within a group; {fix}")


def always_none(m: dict[str, float], name: str) -> Finding | None:
    if m.get(f"train/reward_{name}_none_frac") != 1.0:
        return None
    return Finding(f"none:{name}", f"reward function {name!r} returned None (does not apply) "
                                   "for every sample: it scores nothing. Check the columns it "
                                   "reads and the completions' format (conversational data "
                                   "gives it lists of messages), or drop it")


def warn(run_dir: Path, step: int, finding: Finding, text: str) -> None:
    """On the console (above a progress bar) and in warnings.jsonl."""
    tqdm.write(f"lmrl: warning: {text}", file=sys.stderr)
    with (run_dir / "warnings.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, "check": finding.check, "message": text}) + "\n")


@contextmanager
def rng_untouched():
    """Restore torch's, Python's and NumPy's global RNGs afterwards (a user's reward function
    may draw from them)."""
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


@contextmanager
def reward_stats_untouched(task):
    """Restore the rewards' running statistics afterwards (a reward model's under
    --reward-model-norm running): the probe is step 1's batch, which step 1 scores again. In
    place: the training state holds the same objects, to checkpoint them."""
    saved = {name: dict(vars(stats)) for name, stats in running_stats(task).items()}
    try:
        yield
    finally:
        for name, stats in running_stats(task).items():
            vars(stats).update(saved[name])


def preflight(state: TrainState, task, cfg: Config, run_dir: Path,
              say: Callable[[str], None] = print) -> dict[str, float]:
    """Collect step 1's batch aside, report it, record it in preflight.json and warn."""
    probe = dataclasses.replace(state, generator=torch.Generator().manual_seed(cfg.train.seed),
                                reference=None,  # log-probs of the reference are not needed
                                critic=None)  # nor the critic's values: rewards are reported
    with rng_untouched(), reward_stats_untouched(task):
        batch = collect(probe, task, cfg)
    metrics = {"samples": cfg.train.B * cfg.train.G, **reward_metrics(gathered(batch), task)}
    if not distributed.is_main():  # every rank collects its share; rank 0 reports the batch
        return metrics
    found = findings(metrics, cfg, trained_rewards(task))
    record = {**metrics, "warnings": [f.message for f in found]}
    files.write_text(run_dir / "preflight.json", json.dumps(record, indent=2) + "\n")
    say(report(metrics, cfg, list(batch.table)))
    for finding in found:
        warn(run_dir, 0, finding, f"pre-flight: {finding.message}")
    return metrics


def report(m: dict[str, float], cfg: Config, names: list[str]) -> str:
    """Two lines: the batch as a whole, then each reward function's mean ± std."""
    parts = [f"reward {m['train/reward_mean']:.3g} ± {m['train/reward_std']:.3g}"]
    if cfg.train.G > 1:  # a group of one is always "flat"; with G = 1 that says nothing
        parts.append(f"flat groups {m['train/flat_group_frac']:.0%}")
    if "train/truncated_frac" in m:
        parts.append(f"truncated {m['train/truncated_frac']:.0%}")
    parts.append(f"{m['train/response_tokens']:.1f} tokens per completion")
    per_fn = ", ".join(f"{name} {m[f'train/reward_{name}']:.3g} ± "
                       f"{m[f'train/reward_{name}_std']:.3g}" for name in names)
    return (f"pre-flight (step 1's batch, {cfg.train.B}×{cfg.train.G} samples): "
            f"{', '.join(parts)}\n  reward functions (mean ± std): {per_fn}")


class Watch:
    """The pre-flight's checks on each step's metrics: a condition that holds for
    log.warn_after steps in a row is warned about once, and again if it clears and recurs."""

    def __init__(self, cfg: Config, task, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.trained = trained_rewards(task)
        self.after = cfg.log.warn_after
        self.streaks: dict[str, int] = {}

    def check(self, step: int, metrics: dict[str, float]) -> None:
        if not self.after:
            return
        found = findings(metrics, self.cfg, self.trained)
        # A condition that did not hold this step drops out, so its count starts afresh.
        self.streaks = {f.check: self.streaks.get(f.check, 0) + 1 for f in found}
        for finding in found:
            if self.streaks[finding.check] == self.after:
                warn(self.run_dir, step, finding,
                     f"steps {step - self.after + 1}-{step}: {finding.message}")
