"""Learned baselines B(S) for Δ = R - B(S): the seed's baseline trick without a group.

A group baseline (centered, rloo) needs G >= 2 samples of each prompt. A learned baseline
estimates B(S) ≈ E[R | S] from earlier steps' rewards instead, so it works with G = 1. It is
state that outlives a step, so it lives here and in TrainState, not in the pure deltas.py:

    values(prompts) -> (B,)                 B(S) of each prompt, from what was learned so far
    update(prompts, rewards) -> metrics     learn from one step's rewards (B, G); flat
                                            baseline/* metrics of the baseline before the update
    state_dict() / load_state_dict(state)   saved in checkpoints: a resumed run is the same run

The step computes Δ from values() and calls update() with the same rewards only afterwards, so
Δ never compares R with a baseline that has already seen R. Prompts are the toy sort task's
(B, n) token tensors.

Choices, tested in tests/test_baselines.py:
- running_mean keys the mean by the prompt tuple. An unseen prompt's baseline is the running
  mean of every reward seen (the best guess of E[R | S] knowing nothing of S is E[R]), and 0
  before any reward (Δ = R on the first step, the naive gradient). With decay 0 every reward
  weighs the same (the exact mean); with decay d in (0, 1) each step in which a key appears
  moves its mean to d·mean + (1-d)·(that step's mean of its rewards). A key's first step sets
  its mean to that step's mean, whatever d (no bias towards 0).
- value: V(S) = a ReLU MLP of the prompt's token embeddings, concatenated in order. Its output
  layer starts at 0, so Δ = R until V has learnt something; one AdamW step per training step
  on the MSE over the step's rewards. Its initialisation draws from its own seed.
- nan rewards (samples no reward function scored) are left out of every mean and loss.
"""

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lmrl.optim import adamw


class Baseline(Protocol):
    def values(self, prompts: Tensor) -> Tensor: ...

    def update(self, prompts: Tensor, rewards: Tensor) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@torch.no_grad()
def fit_metrics(values: Tensor, rewards: Tensor) -> dict[str, float]:
    """How well B(S) predicted the rewards it is subtracted from. Shapes: values (B,), rewards
    (B, G). explained_variance = 1 - Var(R - B) / Var(R) (1: perfect, 0: no better than a
    constant) is left out when Var(R) = 0, where it is undefined."""
    scored = ~rewards.isnan()
    r = rewards[scored]
    residual = r - values[:, None].expand_as(rewards)[scored]
    out = {"baseline/mean": values.mean().item(), "baseline/mse": residual.pow(2).mean().item()}
    if r.numel() > 1 and bool(r.var() > 0):
        out["baseline/explained_variance"] = 1.0 - (residual.var() / r.var()).item()
    return out


def prompt_keys(prompts: Tensor) -> list[tuple[int, ...]]:
    """(B, n) -> B hashable prompt tuples."""
    return [tuple(row) for row in prompts.tolist()]


class RunningMeanBaseline:
    """B(S) = the running mean of the rewards seen for prompt S (see the module docstring)."""

    def __init__(self, decay: float = 0.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay} must be in [0, 1)")
        self.decay = decay
        self.means: dict[tuple[int, ...], tuple[float, int]] = {}  # prompt -> (mean, count)
        self.overall = (0.0, 0)  # over every reward: the baseline of an unseen prompt

    def values(self, prompts: Tensor) -> Tensor:
        """(B, n) -> (B,) float32."""
        fallback = self.overall
        return torch.tensor([self.means.get(k, fallback)[0] for k in prompt_keys(prompts)],
                            dtype=torch.float32)

    def moved(self, old: tuple[float, int], rewards: list[float]) -> tuple[float, int]:
        """(mean, count) after one step's rewards of a key (or of all keys, for overall)."""
        mean, count = old
        step_mean, k = math.fsum(rewards) / len(rewards), len(rewards)
        if count == 0:
            return step_mean, k
        weight = (1.0 - self.decay) if self.decay else k / (count + k)
        return mean + weight * (step_mean - mean), count + k

    def update(self, prompts: Tensor, rewards: Tensor) -> dict[str, float]:
        """Shapes: prompts (B, n), rewards (B, G). A prompt drawn twice in a step is one key."""
        keys = prompt_keys(prompts)
        metrics = fit_metrics(self.values(prompts), rewards)
        metrics["baseline/seen_frac"] = sum(k in self.means for k in keys) / len(keys)
        by_key: dict[tuple[int, ...], list[float]] = defaultdict(list)
        for key, row in zip(keys, rewards.tolist(), strict=True):
            by_key[key] += [r for r in row if not math.isnan(r)]
        for key, seen in by_key.items():
            if seen:
                self.means[key] = self.moved(self.means.get(key, (0.0, 0)), seen)
        every = [r for seen in by_key.values() for r in seen]
        if every:
            self.overall = self.moved(self.overall, every)
        return metrics

    def state_dict(self) -> dict:
        # float64 tensors hold the Python floats exactly: a resumed run continues bit for bit.
        return {"prompts": torch.tensor(list(self.means), dtype=torch.int64),
                "means": torch.tensor([m for m, _ in self.means.values()], dtype=torch.float64),
                "counts": torch.tensor([c for _, c in self.means.values()], dtype=torch.int64),
                "overall_mean": self.overall[0], "overall_count": self.overall[1]}

    def load_state_dict(self, state: dict) -> None:
        rows = zip(state["prompts"].tolist(), state["means"].tolist(), state["counts"].tolist(),
                   strict=True)
        self.means = {tuple(key): (mean, count) for key, mean, count in rows}
        self.overall = (state["overall_mean"], state["overall_count"])


class ValueNet(nn.Module):
    """V(S): the prompt's token embeddings, concatenated, through a ReLU MLP to one number.

        embedded = E[x_1] ‖ ... ‖ E[x_n]              (B, n·d)
        V        = W_2 · relu(W_1 · embedded + b_1) + b_2   (B,)   (hidden = 0: one linear map)
    """

    def __init__(self, V: int, n: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(V, dim)
        layers = [nn.Linear(n * dim, hidden), nn.ReLU()] if hidden else []
        self.out = nn.Linear(hidden or n * dim, 1)
        self.body = nn.Sequential(*layers)
        # V = 0 at the start: Δ = R until the baseline has seen rewards, never a random offset.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, prompts: Tensor) -> Tensor:
        """(B, n) -> (B,)."""
        return self.out(self.body(self.embedding(prompts).flatten(1))).squeeze(-1)


class ValueBaseline:
    """B(S) = V(S), fit by regression on each step's rewards with its own AdamW."""

    def __init__(self, V: int, n: int, dim: int, hidden: int, lr: float, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):  # its own stream: the run's RNGs stay as they were
            torch.manual_seed(seed)
            self.model = ValueNet(V, n, dim, hidden)
        self.optimizer = adamw(self.model.parameters(), lr, weight_decay=0.0, fused=False)

    @torch.no_grad()
    def values(self, prompts: Tensor) -> Tensor:
        """(B, n) -> (B,)."""
        return self.model(prompts)

    def update(self, prompts: Tensor, rewards: Tensor) -> dict[str, float]:
        """One step on the MSE of V(S) against every scored reward. Shapes: prompts (B, n),
        rewards (B, G). baseline/mse is the value loss before the step."""
        values = self.model(prompts)  # (B,)
        metrics = fit_metrics(values.detach(), rewards)
        scored = ~rewards.isnan()
        if bool(scored.any()):
            # nan_to_num: a nan target would make the gradient nan even where it is masked out.
            loss = (values[:, None] - rewards.nan_to_num()).pow(2)[scored].mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return metrics

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


# Where the value network's initialisation draws from: the run's seed plus this (seed is the
# policy's and the training samples', seed + 1 the held-out samples').
VALUE_SEED_OFFSET = 2


def value_from(cfg: Any) -> ValueBaseline:
    """From a Config (lmrl.config): sized like the toy policy."""
    t, p = cfg.task, cfg.policy
    return ValueBaseline(t.V, t.n, p.dim, p.hidden, cfg.algo.value_lr,
                         cfg.train.seed + VALUE_SEED_OFFSET)


def running_mean_from(cfg: Any) -> RunningMeanBaseline:
    return RunningMeanBaseline(cfg.algo.baseline_decay)


@dataclass(frozen=True)
class BaselineSpec:
    """A learned baseline: its builder (from a Config) and the algo fields it reads (config.py
    refuses them under any other delta)."""

    build: Callable[[Any], Baseline]
    reads: tuple[str, ...]


# Keyed by the delta (deltas.DELTAS, learned_baseline=True) that subtracts it.
BASELINES: dict[str, BaselineSpec] = {
    "value": BaselineSpec(value_from, ("value_lr",)),
    "running_mean": BaselineSpec(running_mean_from, ("baseline_decay",)),
}
