"""Deltas: the per-response weight Δ(S, A) in  ∇J ≈ E[Δ(S,A) ∇ log π(A|S)].

Every function is pure: rewards of shape (B, G) in (B prompts, G samples each), deltas of the
same shape out. A group is one prompt's G samples; group statistics never cross prompts, except
in the deltas whose spec says `batch_stats` (reinforce_pp), whose statistics span all B·G samples.

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
  A batch-statistics delta (reinforce_pp) takes its statistics over the batch's scored samples.
- reinforce_pp uses the biased (N) standard deviation over the batch; see its docstring.
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


def dr_grpo(rewards: Tensor) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783):
    Δ_i = R_i - mean_j R_j, GRPO's advantage without the division by the group's std (which
    weights prompts by how consistent their rewards are: too easy or too hard ones get more).

    The paper's second change, dropping GRPO's 1/|o_i| length normalisation, is not a delta but
    the loss's reduction: in lmrl it is `--aggregation constant` (Σ tokens / (N·L) with a fixed
    L), to be chosen alongside; this delta does not change the aggregation.
    The math is `centered`'s; the name exists so a run says which paper it follows.
    Shapes: rewards (B, G) -> (B, G).
    """
    return centered(rewards)


def reinforce_pp(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """REINFORCE++ (Hu et al. 2025, arXiv 2501.03262) with outcome rewards, no critic and no group:
    Δ = (R - mean) / (std + eps), mean and std over the WHOLE batch (all B·G samples, every
    prompt), the paper's global advantage normalisation, instead of GRPO's per-prompt group.

    Choices fixed here: the std is the biased (population, 1/N) one, the batch's own spread (the
    paper normalises by the batch's σ; with N = B·G samples the N-1 correction hardly matters),
    and eps is added to the std as in `normalized`, so algo.norm_eps means the same in both.
    (OpenRLHF's implementation whitens over tokens and floors the variance at eps instead.)
    The paper's KL-in-reward term is not part of Δ here; lmrl's KL is the separate loss term.
    This function sees only the batch it is given: under data parallelism step.deltas_of gives
    it every rank's rewards. A batch whose rewards are all equal gets 0.
    Shapes: rewards (B, G) -> (B, G); G = 1 is fine.
    """
    if bool(rewards.amax() == rewards.amin()):  # as in centered: exact zeros, never ulp noise
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def baseline_subtracted(rewards: Tensor, baseline: Tensor) -> Tensor:
    """Δ = R - B(S), B a baseline of the prompt alone (learned: baselines.py), so no group is
    needed. Shapes: rewards (B, G), baseline (B, 1) or (B, G) -> (B, G)."""
    return rewards - baseline


DeltaFn = Callable[..., Tensor]


@dataclass(frozen=True)
class DeltaSpec:
    """A delta and what the config needs to know about it.

    needs_group: it subtracts a group baseline, so it needs G >= 2 (with one sample the
    baseline is the sample itself); reads_eps: it takes `eps` (algo.norm_eps); batch_stats: its
    statistics span the whole batch, not one group (so unscored samples leave the batch's
    statistics, and step.deltas_of pools them over data-parallel ranks);
    learned_baseline: it takes `baseline`, B(S) of a learned baseline (baselines.BASELINES).
    Calling the spec calls the delta.
    """

    fn: DeltaFn
    help: str  # the formula: in config.py's --help (a test keeps them equal) and describe()
    needs_group: bool = False
    reads_eps: bool = False
    batch_stats: bool = False
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
    "dr_grpo": DeltaSpec(dr_grpo, "R - mean (pair with --aggregation constant)",
                         needs_group=True),
    "reinforce_pp": DeltaSpec(reinforce_pp, "(R - batch mean) / (batch std + eps)",
                              reads_eps=True, batch_stats=True),
    "value": DeltaSpec(baseline_subtracted, "R - V(S), V a network of the prompt fit to R",
                       learned_baseline=True),
    "running_mean": DeltaSpec(baseline_subtracted, "R - the running mean of R for the prompt",
                              learned_baseline=True),
}
GROUP_BASELINE = {name for name, spec in DELTAS.items() if spec.needs_group}


def compute_deltas(name: str, rewards: Tensor, eps: float = 1e-6,
                   baseline: Tensor | None = None) -> Tensor:
    """Dispatch by name; eps goes only to the deltas that read it (normalized, reinforce_pp),
    baseline (B, 1) only to those with a learned baseline. nan rewards (unscored samples) get
    Δ = 0 and stay out of their group's statistics (out of the batch's, for a batch-statistics
    delta)."""
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
    if spec.batch_stats:  # the scored samples as one batch: (1, number scored)
        if bool(scored.any()):
            delta[scored] = spec.fn(rewards[scored][None], **settings)[0]
        return delta
    for b in range(rewards.shape[0]):  # groups differ in size: one at a time (rare)
        keep = scored[b]
        if int(keep.sum()) >= (2 if spec.needs_group else 1):
            delta[b, keep] = spec.fn(rewards[b, keep][None], **settings)[0]
    return delta
