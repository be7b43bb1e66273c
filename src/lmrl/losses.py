"""Per-token policy losses, KL estimators and loss aggregation: pure tensor functions.

Shapes: per-token tensors are (..., T) — (B, G, T) in the trainer — with a 0/1 `mask` of the
same shape marking response tokens. `delta` is either per response, (...) i.e. (B, G), and then
broadcast to every token of that response (an outcome reward is one number per response), or
per token, (..., T) i.e. (B, G, T), as an advantage estimator with a value model gives
(lmrl.advantages.gae). `per_token` is the one place that tells the two apart.

Every loss returns the per-token loss matrix. How it is reduced to a scalar is a separate choice
(`aggregate`), split into a numerator and a denominator so that gradient accumulation and data
parallelism can divide by a *global* count and optimise exactly the same objective.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over positions where mask is 1 (0 if the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def per_token(delta: Tensor, logp: Tensor) -> Tensor:
    """Δ as a per-token tensor: a per-response Δ gets a token axis, a per-token Δ is returned as is.

    Shapes: delta (...) or (..., T), logp (..., T) -> (..., 1) or (..., T), broadcastable to logp.
    """
    return delta.unsqueeze(-1) if delta.dim() < logp.dim() else delta


# ---------------------------------------------------------------- importance ratios

RATIO_LEVELS = ("token", "sequence", "geometric")


def importance_ratio(logp: Tensor, logp_old: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """r = π_θ / π_old with logp_old treated as a constant (detached).

    level="token": r_t = exp(logp_t - logp_old_t), the per-token ratio GRPO/PPO code uses.
    level="sequence": r = exp(Σ_t (logp_t - logp_old_t)) = π_θ(A|S)/π_old(A|S), the per-response
    ratio exactly as the seed defines it.
    level="geometric": s = exp(mean_t (logp_t - logp_old_t)) = (π_θ(A|S)/π_old(A|S))^(1/|A|), the
    geometric mean of the token ratios: GSPO's length-normalised sequence ratio (Zheng et al.
    2025, arXiv 2507.18071; TRL's importance_sampling_level="sequence"). GSPO is
    `--loss clipped --ratio-level geometric --aggregation sequence_mean` (the paper's ε are
    3e-4 / 4e-4). It is *not* `sequence`, whose product grows with the response's length.
    At both per-response levels every token carries the value r, but token t's gradient is
    r·∇logp_t (GSPO's "GSPO-token" form, sg[r]·π_θ(y_t)/sg[π_θ(y_t)]). For sequence, summed
    over the response that is r·∇log π(A|S), so aggregation does not multiply each response's
    gradient by its length; for geometric, the response's token mean (sequence_mean) is
    s·mean_t ∇logp_t = ∇s, GSPO's gradient.
    Shapes: logp, logp_old, mask (..., T) -> (..., T).
    """
    diff = torch.where(mask.bool(), logp - logp_old.detach(), 0.0)
    if level == "token":
        return torch.exp(diff)
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; valid: {', '.join(RATIO_LEVELS)}")
    log_r = diff.sum(dim=-1, keepdim=True)
    if level == "geometric":
        log_r = log_r / mask.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.exp(log_r).detach() * torch.exp(diff - diff.detach())


# ---------------------------------------------------------------- policy losses

def naive_loss(logp: Tensor, logp_old: Tensor, delta: Tensor, mask: Tensor) -> Tensor:
    """-Δ · log π_θ per token (its sum over tokens is -Δ log π_θ(A|S)). logp_old unused."""
    return -per_token(delta, logp) * logp


def unclipped_loss(
    logp: Tensor, logp_old: Tensor, delta: Tensor, mask: Tensor, ratio_level: str = "token",
) -> Tensor:
    """-r · Δ per token: the importance-weighted surrogate with no trust region."""
    return -importance_ratio(logp, logp_old, mask, ratio_level) * per_token(delta, logp)


def clipped_loss(
    logp: Tensor, logp_old: Tensor, delta: Tensor, mask: Tensor, ratio_level: str = "token",
    clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
) -> Tensor:
    """-min(r·Δ, clip(r, 1-ε_low, 1+ε_high)·Δ) per token (PPO/GRPO clipped surrogate)."""
    ratio = importance_ratio(logp, logp_old, mask, ratio_level)
    d = per_token(delta, logp)
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    return -torch.minimum(ratio * d, clipped_ratio * d)


LossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A policy loss and what the config needs to know about it.

    uses_ratio: it takes `ratio_level` (it weights by the importance ratio r = π_θ/π_old);
    clips: it takes `clip_eps_low` and `clip_eps_high`. `bind_loss` passes exactly these.
    Calling the spec calls the loss.
    """

    fn: LossFn
    help: str  # the formula: in config.py's --help (a test keeps them equal) and describe()
    uses_ratio: bool = False
    clips: bool = False

    def __call__(self, logp: Tensor, logp_old: Tensor, delta: Tensor, mask: Tensor,
                 **settings: object) -> Tensor:
        return self.fn(logp, logp_old, delta, mask, **settings)


LOSSES: dict[str, LossSpec] = {
    "naive": LossSpec(naive_loss, "-Δ log π"),
    "unclipped": LossSpec(unclipped_loss, "-rΔ", uses_ratio=True),
    "clipped": LossSpec(clipped_loss, "-min(rΔ, clip(r)Δ)", uses_ratio=True, clips=True),
}


def bind_loss(
    name: str, *, ratio_level: str = "token", clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """LOSSES[name] with its settings bound: f(logp, logp_old, delta, mask) -> (..., T).

    Each loss gets only the settings its spec says it reads, so no loss needs a catch-all
    **kwargs, and a misspelt keyword (here or to a loss) is a TypeError, not silently dropped.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    settings: dict[str, object] = {}
    if spec.uses_ratio:
        settings["ratio_level"] = ratio_level
    if spec.clips:
        settings.update(clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high)
    return functools.partial(spec.fn, **settings)


@torch.no_grad()
def ratio_diagnostics(
    logp: Tensor, logp_old: Tensor, delta: Tensor, mask: Tensor, ratio_level: str = "token",
    clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
) -> dict[str, float]:
    """How far the policy moved from π_old, and how often clipping removed the gradient.

    clip_frac_low: tokens with Δ < 0 and r < 1-ε_low; clip_frac_high: Δ > 0 and r > 1+ε_high —
    exactly the tokens where the clipped branch is the minimum and the gradient is zero.
    approx_kl_old is the k3 estimate of KL(π_old || π_θ) over the response tokens.
    """
    ratio = importance_ratio(logp, logp_old, mask, ratio_level)
    d = per_token(delta, logp).expand_as(ratio)
    low = ((d < 0) & (ratio < 1.0 - clip_eps_low)).float()
    high = ((d > 0) & (ratio > 1.0 + clip_eps_high)).float()
    log_r = torch.where(mask.bool(), logp - logp_old, 0.0)
    on = mask.bool()
    return {
        "clip_frac_low": masked_mean(low, mask).item(),
        "clip_frac_high": masked_mean(high, mask).item(),
        "ratio_mean": masked_mean(ratio, mask).item(),
        "ratio_min": ratio[on].min().item() if on.any() else 1.0,
        "ratio_max": ratio[on].max().item() if on.any() else 1.0,
        "approx_kl_old": masked_mean(torch.expm1(log_r) - log_r, mask).item(),
    }


# ---------------------------------------------------------------- KL to the reference policy
# Samples come from the policy P = π_θ; Q = π_ref. Each estimator is a per-token value whose
# expectation under P is (k1, k3) or approximates (k2) KL(P || Q) = E_P[log P/Q].
# The seed writes k3 as "E_Q[Q/P - log(Q/P) - 1]"; the expectation is over the sampling policy P
# (the Q/P weighting is what makes it unbiased under P), which is what is implemented and tested.
#
# As a *loss*, differentiated only through the sampled tokens' log P (the samples are fixed), the
# estimators pull differently (tests/test_losses.py computes the exact expectations):
#   k1: E_P[∇ log P] = 0 — no pull at all in expectation;
#   k2: ∇ KL(P ‖ Q), the reverse KL, an entropy-like pull towards a near-uniform Q;
#   k3: ∇ KL(Q ‖ P), the forward KL, which lifts every token Q likes (label-smoothing-like).
# k3 is the default (the seed's); the linear toy model needs k2 (presets.linear, T4).

def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k1 = log P/Q: unbiased, high variance, can be negative per sample."""
    return logp - logp_ref


def kl_k2(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k2 = ½ (log P/Q)²: biased but low variance, never negative."""
    return 0.5 * (logp - logp_ref) ** 2


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k3 = Q/P - log(Q/P) - 1: unbiased, never negative, 0 iff Q = P (the seed's estimator)."""
    log_q_over_p = logp_ref - logp
    return torch.expm1(log_q_over_p) - log_q_over_p


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


# ---------------------------------------------------------------- aggregation

AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def loss_numerator(loss: Tensor, mask: Tensor, mode: str) -> Tensor:
    """The sum part of an aggregation; additive over micro-batches and ranks.

    token_mean / constant: Σ over response tokens.  sequence_mean: Σ over responses of the
    response's own token mean.  Shapes: loss, mask (..., T) -> scalar.
    """
    if mode in ("token_mean", "constant"):
        return (loss * mask).sum()
    if mode == "sequence_mean":
        per_seq = (loss * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
        return per_seq.sum()
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def loss_denominator(mask: Tensor, mode: str, constant: float | None = None) -> float:
    """The count part: response tokens, responses, or responses × a constant length.

    `constant` (mode "constant" only) is the per-response normaliser L; it defaults to the padded
    length T, so the loss is Σ tokens / (N·L) whatever each response's length (Dr. GRPO).
    """
    num_seqs = mask[..., 0].numel()
    if mode == "token_mean":
        return float(mask.sum().item())
    if mode == "sequence_mean":
        return float(num_seqs)
    if mode == "constant":
        return float(num_seqs * (constant if constant is not None else mask.shape[-1]))
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def aggregate(
    loss: Tensor, mask: Tensor, mode: str, denominator: float | None = None,
    constant: float | None = None,
) -> Tensor:
    """Reduce a per-token loss to a scalar: numerator / denominator.

    Pass the *global* denominator (over all micro-batches and ranks) when the batch is split;
    then Σ_micro aggregate(micro, denominator=global) equals aggregate(full batch).
    """
    if denominator is None:
        denominator = loss_denominator(mask, mode, constant)
    return loss_numerator(loss, mask, mode) / max(denominator, 1e-12)
