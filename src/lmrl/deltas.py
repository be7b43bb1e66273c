"""Deltas: the per-response weight Δ(S, A) in  ∇J ≈ E[Δ(S,A) ∇ log π(A|S)].

Every function is pure: rewards of shape (B, G) in (B prompts, G samples each), deltas of the
same shape out. A group is one prompt's G samples; group statistics never cross prompts.

Choices the seed leaves open, fixed here and tested in tests/test_deltas.py:
- normalized uses the unbiased (G-1) standard deviation, and eps is added to the std,
  Δ = (R - mean) / (std + eps), exactly as the seed writes it.
- max_only keeps the *raw reward* R for the samples that reach their group's maximum and sets
  every other sample to 0 (the lecture's `max_rewards` mode). A group whose rewards are all equal
  therefore keeps R for every sample, like raw: max-only has no baseline.
- Group-baseline deltas (centered, normalized, rloo) of a group with equal rewards are exactly 0:
  the centered numerator is set to 0 for such groups (a float mean can be one ulp off), and the
  normalized one divides that 0 by (std + eps), never 0 by 0.
- A reward of nan marks a sample that no reward function scored (TRL's None): as in TRL, it is
  left out of its group's statistics (the delta is computed over the group's scored samples
  only) and its Δ is 0. A group-baseline delta with fewer than 2 scored samples is 0 there.
- A learned baseline B(S) (value, running_mean) is state that outlives the step, so it is not
  computed here: the step passes its values in (`baseline`, (B, 1)) and baselines.py learns it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def raw(rewards: Tensor) -> Tensor:
    """Δ = R (naive policy gradient). Shapes: rewards (B, G) -> (B, G)."""
    return rewards.clone()


def centered(rewards: Tensor) -> Tensor:
    """Δ_i = R_i - mean_j R_j within each group (GRPO's group baseline)."""
    delta = rewards - rewards.mean(dim=-1, keepdim=True)
    # A float mean of equal values can be off by one ulp (mean(0.1, 0.1, 0.1) != 0.1), which
    # would turn "no signal" into tiny noise that normalized then blows up; force exact zeros.
    constant = rewards.amax(dim=-1, keepdim=True) == rewards.amin(dim=-1, keepdim=True)
    return delta.masked_fill(constant, 0.0)


def normalized(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Δ_i = (R_i - mean) / (std + eps), unbiased std over the group."""
    std = rewards.std(dim=-1, keepdim=True, unbiased=True)
    delta = centered(rewards)
    return torch.where(delta == 0, 0.0, delta / (std + eps))  # 0/(0+eps) even when eps = 0


def max_only(rewards: Tensor) -> Tensor:
    """Δ_i = R_i if R_i is its group's maximum (ties included), else 0."""
    group_max = rewards.max(dim=-1, keepdim=True).values
    return torch.where(rewards == group_max, rewards, torch.zeros_like(rewards))


def rloo(rewards: Tensor) -> Tensor:
    """Leave-one-out: Δ_i = R_i - mean_{j≠i} R_j = G/(G-1) · (R_i - mean)."""
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError("rloo needs G >= 2 samples per group (the others are the baseline)")
    return centered(rewards) * (G / (G - 1))


def baseline_subtracted(rewards: Tensor, baseline: Tensor) -> Tensor:
    """Δ = R - B(S), B a baseline of the prompt alone (learned: baselines.py), so no group is
    needed. Shapes: rewards (B, G), baseline (B, 1) or (B, G) -> (B, G)."""
    return rewards - baseline


DeltaFn = Callable[..., Tensor]


@dataclass(frozen=True)
class DeltaSpec:
    """A delta and what the config needs to know about it.

    needs_group: it subtracts a group baseline, so it needs G >= 2 (with one sample the
    baseline is the sample itself); reads_eps: it takes `eps` (algo.norm_eps);
    learned_baseline: it takes `baseline`, B(S) of a learned baseline (baselines.BASELINES).
    Calling the spec calls the delta.
    """

    fn: DeltaFn
    help: str  # the formula: in config.py's --help (a test keeps them equal) and describe()
    needs_group: bool = False
    reads_eps: bool = False
    learned_baseline: bool = False

    def __call__(self, rewards: Tensor, **settings: float) -> Tensor:
        return self.fn(rewards, **settings)


DELTAS: dict[str, DeltaSpec] = {
    "raw": DeltaSpec(raw, "R"),
    "centered": DeltaSpec(centered, "R - mean", needs_group=True),
    "normalized": DeltaSpec(normalized, "(R - mean) / (std + eps)", needs_group=True,
                            reads_eps=True),
    "max_only": DeltaSpec(max_only, "R where R is the group's maximum, else 0"),
    "rloo": DeltaSpec(rloo, "R - mean of the other samples", needs_group=True),
    "value": DeltaSpec(baseline_subtracted, "R - V(S), V a network of the prompt fit to R",
                       learned_baseline=True),
    "running_mean": DeltaSpec(baseline_subtracted, "R - the running mean of R for the prompt",
                              learned_baseline=True),
}
GROUP_BASELINE = {name for name, spec in DELTAS.items() if spec.needs_group}


def compute_deltas(name: str, rewards: Tensor, eps: float = 1e-6,
                   baseline: Tensor | None = None) -> Tensor:
    """Dispatch by name; eps goes only to the deltas that read it (normalized), baseline (B, 1)
    only to those with a learned baseline. nan rewards (unscored samples) get Δ = 0 and stay
    out of their group's statistics."""
    if name not in DELTAS:
        raise ValueError(f"unknown delta {name!r}; valid: {', '.join(DELTAS)}")
    spec = DELTAS[name]
    if spec.learned_baseline:
        if baseline is None:
            raise ValueError(f"delta {name!r} subtracts a learned baseline: pass baseline (B, 1)")
        # Per sample, no group statistics: an unscored sample's Δ is 0, the others' unchanged.
        return torch.where(rewards.isnan(), 0.0, spec.fn(rewards, baseline=baseline))
    settings = {"eps": eps} if spec.reads_eps else {}
    scored = ~rewards.isnan()
    if bool(scored.all()):
        return spec.fn(rewards, **settings)
    delta = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):  # groups differ in size: one at a time (rare)
        keep = scored[b]
        if int(keep.sum()) >= (2 if spec.needs_group else 1):
            delta[b, keep] = spec.fn(rewards[b, keep][None], **settings)[0]
    return delta
