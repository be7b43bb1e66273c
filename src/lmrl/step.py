"""One GRPO step, in the order of the data flow:

    prompts -> rollouts -> rewards -> deltas -> ref log-probs -> μ × (loss -> update)
            -> snapshot refresh

The step is written against the policy protocol (sample / logprobs with a response mask), so the
toy model and a causal LM run through the same code. Shapes: B prompts, G samples each, T
response tokens; per-token tensors (B, G, T), per-response tensors (B, G).
"""

import math
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmrl.config import Config
from lmrl.deltas import compute_deltas
from lmrl.errors import RewardError
from lmrl.losses import (
    KL_ESTIMATORS,
    LOSSES,
    aggregate,
    loss_denominator,
    masked_mean,
    ratio_diagnostics,
)
from lmrl.state import TrainState

if TYPE_CHECKING:
    from lmrl.policies.hf import PromptBatch


@dataclass
class Batch:
    """Everything the μ updates need, fixed for the step."""

    prompts: "Tensor | PromptBatch | list[str]"  # (B, n) for the toy model; B prompts for an LM
    responses: Tensor  # (B, G, T)
    response_mask: Tensor  # (B, G, T)
    delta: Tensor  # (B, G)
    logp_ref: Tensor | None  # (B, G, T), only with a KL term

    def split(self, k: int) -> list["Batch"]:
        """Up to k micro-batches by prompt, so every group stays whole (fewer than k when there
        are fewer prompts, or when Tensor.chunk's equal sizes need fewer parts)."""
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        chunks = {n: _chunk(v, k) for n, v in parts.items()}
        count = len(chunks["delta"])
        return [Batch(**{n: chunks[n][i] for n in parts}) for i in range(count)]

    def groups_with_gradient(self) -> "Batch":
        """The groups with some Δ != 0, when there is no KL term (logp_ref is None).

        Every policy loss is a multiple of Δ (tests/test_losses.py checks each one), so a group
        whose Δ are all 0 contributes exactly 0 to the gradient: the update skips its log-prob
        pass and backward and computes the same gradient for less work (such flat groups are
        common with 0/1 rewards). The loss keeps the whole batch's denominator. The whole batch
        stays when every group has some Δ, and when none has: the optimizer then still steps on
        zero gradients (AdamW's momentum moves the weights), as without the skip."""
        keep = (self.delta != 0).any(dim=-1)  # (B,)
        if self.logp_ref is not None or bool(keep.all()) or not bool(keep.any()):
            return self
        rows = keep.nonzero().squeeze(-1)
        return Batch(**{f.name: _select(getattr(self, f.name), rows) for f in fields(self)})


def _chunk(value, k: int) -> list:
    """Split along the prompt axis as Tensor.chunk does (lists too: list[str] prompts)."""
    if value is None:
        return [None] * k
    if isinstance(value, list):
        size = -(-len(value) // k)
        return [value[i:i + size] for i in range(0, len(value), size)]
    return value.chunk(k)


def _select(value, rows: Tensor):
    """The given prompts (rows (B',) of the prompt axis) of a Batch field."""
    if value is None:
        return None
    if isinstance(value, list):
        return [value[i] for i in rows.tolist()]
    return value[rows.to(value.device)] if isinstance(value, Tensor) else value.select(rows)


# Per-pass numbers that the step reports as sums over its μ passes.
SUMMED_OVER_PASSES = ("time/logprob_seconds", "time/backward_seconds", "time/optimizer_seconds",
                      "train/skipped_nonfinite_loss", "train/skipped_nonfinite_grad")


def policy_inputs(policy, prompts):
    """What the policy conditions on: the toy model takes the prompt tensor as is; a causal LM
    takes text, tokenized once here so that sampling and every log-prob pass share it."""
    if isinstance(prompts, list) and prompts and isinstance(prompts[0], dict):
        return policy.encode([ex["prompt"] for ex in prompts])
    return prompts


def grpo_step(state: TrainState, task, cfg: Config) -> dict[str, float]:
    """Sample, score and update once; returns the step's flat metrics."""
    a, tr = cfg.algo, cfg.train
    policy, t0 = state.policy, time.perf_counter()

    prompts = task.sample_prompts(tr.B, state.generator)  # (B, n) or B examples
    inputs = policy_inputs(policy, prompts)
    with torch.no_grad():
        rollout = policy.sample(inputs, tr.G, generator=state.generator)  # (B, G, T)
    t_sampled = time.perf_counter()
    rewards, table = task.score_rollout(prompts, rollout)  # (B, G), {name: (B, G)}
    if not bool(torch.isfinite(rewards).all()):  # text tasks name the function; this is a net
        raise RewardError(f"the task returned non-finite rewards {rewards.flatten().tolist()}")
    # Text tasks score in float64 (a reward of 1e39 is finite there); the loss is float32, and a
    # Δ that overflows it gives a non-finite loss, whose update is skipped and counted.
    rewards = rewards.to(torch.float32)
    delta = compute_deltas(a.delta, rewards, eps=a.norm_eps)  # (B, G)
    t_scored = time.perf_counter()
    batch = Batch(inputs, rollout.responses, rollout.response_mask, delta, None)
    if state.reference is not None:  # per micro-batch: the logits are the memory peak
        batch.logp_ref = torch.cat([state.reference.logprobs(mb.prompts, mb.responses,
                                                             mb.response_mask)
                                    for mb in batch.split(tr.grad_accum)])
    t_ref = time.perf_counter()

    # The loss is divided by the whole batch's count, whatever the micro-batch split. The
    # constant normaliser is the token budget, fixed across steps (the padded T is not: a
    # causal LM stops sampling when its longest response ends).
    budget = getattr(policy, "max_new_tokens", None)
    denominator = loss_denominator(batch.response_mask, a.aggregation, constant=budget)
    update = batch.groups_with_gradient()  # loss/* and policy/entropy describe these groups
    logp_old: list[Tensor] | None = None
    times: dict[str, float] = {}
    for _ in range(a.mu):
        logp_old, diag = policy_update(state, cfg, update.split(tr.grad_accum), logp_old,
                                       denominator)
        for key in SUMMED_OVER_PASSES:
            times[key] = times.get(key, 0.0) + diag.pop(key)  # summed over the μ passes
    skipped = times["train/skipped_nonfinite_loss"] + times["train/skipped_nonfinite_grad"]
    state.skipped_updates += int(skipped)
    state.skipped_in_a_row = state.skipped_in_a_row + int(skipped) if skipped else 0
    lr = state.optimizer.param_groups[0]["lr"]  # the rate these updates used
    state.scheduler.step()
    state.step += 1
    refreshed = state.reference.maybe_refresh(policy, state.step) if state.reference else False

    t_end = time.perf_counter()
    return {
        **reward_metrics(rewards, table, delta, task, rollout),
        **diag,
        **times,
        "train/lr": lr,
        "train/skipped_updates": state.skipped_updates,  # in the whole run
        "train/updated_group_frac": len(update.delta) / len(batch.delta),
        "train/ref_refreshed": float(refreshed),
        "time/sample_seconds": t_sampled - t0,
        "time/reward_seconds": t_scored - t_sampled,
        "time/ref_seconds": t_ref - t_scored,
        "time/update_seconds": t_end - t_ref,
        "time/step_seconds": t_end - t0,
    }


def policy_update(state: TrainState, cfg: Config, micro: list[Batch],
                  logp_old: list[Tensor] | None, denominator: float
                  ) -> tuple[list[Tensor], dict[str, float]]:
    """One optimizer step over all micro-batches (gradient accumulation).

    The returned loss/* diagnostics are those of this pass; the step reports the last of the μ
    passes, the one furthest from π_old (on the first, r = 1 exactly).

    On the first call logp_old is None: the parameters are still θ_old, so each micro-batch's
    detached log-probs *are* log π_old and are stored for the later μ-1 calls.
    """
    a = cfg.algo
    state.optimizer.zero_grad(set_to_none=True)
    stored, parts = [], []
    clock = {"forward": 0.0, "backward": 0.0}
    for i, mb in enumerate(micro):
        t0 = time.perf_counter()
        mask = mb.response_mask
        logp, entropy = state.policy.logprobs(mb.prompts, mb.responses, mask, with_entropy=True)
        old = logp.detach() if logp_old is None else logp_old[i]
        stored.append(old)
        pg = LOSSES[a.loss](logp, old, mb.delta, mask, ratio_level=a.ratio_level,
                            clip_eps_low=a.eps_low, clip_eps_high=a.eps_high)
        loss_tok = pg
        kl = None
        if mb.logp_ref is not None:
            kl = KL_ESTIMATORS[a.estimator](logp, mb.logp_ref)
            loss_tok = pg + a.kl_weight * kl
        loss = aggregate(loss_tok, mask, a.aggregation, denominator)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        clock["forward"] += t1 - t0
        clock["backward"] += t2 - t1
        diag = micro_diagnostics(cfg, logp, old, mb, pg, kl, entropy, loss)
        parts.append((mask.sum().item(), diag))
    t3 = time.perf_counter()
    grad_norm = grad_clip(state, cfg.train.grad_clip)
    diag = combine(parts)
    diag["loss/total"] = sum(d["loss/total"] for _, d in parts)  # already globally normalised
    diag["policy/grad_norm"] = grad_norm
    # A non-finite loss or gradient would turn every weight into NaN: skip the update (the
    # trainer counts skips and stops the run after train.max_skipped in a row).
    stage = nonfinite_stage(diag["loss/total"], grad_norm)
    if stage is None:
        state.optimizer.step()
        state.optimizer_steps += 1
    else:
        state.optimizer.zero_grad(set_to_none=True)
    diag["train/skipped_nonfinite_loss"] = float(stage == "loss")
    diag["train/skipped_nonfinite_grad"] = float(stage == "gradient")
    # Stage times of this pass (log-prob forward + loss, backward, clip + optimizer).
    diag["time/logprob_seconds"] = clock["forward"]
    diag["time/backward_seconds"] = clock["backward"]
    diag["time/optimizer_seconds"] = time.perf_counter() - t3
    return stored, diag


@torch.no_grad()
def micro_diagnostics(cfg: Config, logp: Tensor, logp_old: Tensor, mb: Batch, pg: Tensor,
                      kl: Tensor | None, entropy: Tensor | None, loss: Tensor) -> dict[str, float]:
    a = cfg.algo
    ratio = ratio_diagnostics(logp, logp_old, mb.delta, mb.response_mask, a.ratio_level, a.eps_low,
                              a.eps_high)
    # clip_frac_* is reported for every loss: for naive/unclipped it says how often clipping
    # *would* have removed the gradient (experiments/losses.py compares them).
    out = {f"loss/{k}": v for k, v in ratio.items()}
    out["loss/pg"] = masked_mean(pg, mb.response_mask).item()
    out["loss/total"] = loss.item()
    if kl is not None:
        out["loss/kl_ref"] = masked_mean(kl, mb.response_mask).item()
    if entropy is not None:
        out["policy/entropy"] = masked_mean(entropy, mb.response_mask).item()
    return out


def combine(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Token-weighted means across micro-batches; min/max keys take the min/max."""
    total = sum(w for w, _ in parts) or 1.0
    out: dict[str, float] = {}
    for key in parts[0][1]:
        values = [d[key] for _, d in parts]
        if key.endswith("_min"):
            out[key] = min(values)
        elif key.endswith("_max"):
            out[key] = max(values)
        else:
            out[key] = sum(w * d[key] for w, d in parts) / total
    return out


def nonfinite_stage(loss: float, grad_norm: float) -> str | None:
    """Where a pass went non-finite: "loss", else "gradient", else None."""
    if not math.isfinite(loss):
        return "loss"
    return None if math.isfinite(grad_norm) else "gradient"


def grad_clip(state: TrainState, max_norm: float) -> float:
    params = [p for p in state.policy.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


@torch.no_grad()
def reward_metrics(rewards: Tensor, table: dict[str, Tensor], delta: Tensor, task,
                   rollout) -> dict[str, float]:
    """What the sampled batch scored: the training reward, each reward function's mean,
    correctness, and (for text) truncation and length. (B, G) in."""
    flat = rewards.amax(dim=-1) == rewards.amin(dim=-1)
    out = {
        "train/reward_mean": rewards.mean().item(),
        "train/reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "train/reward_group_max": rewards.amax(dim=-1).mean().item(),
        # Groups whose samples all scored the same give no gradient under a group baseline.
        "train/flat_group_frac": flat.float().mean().item(),
        "train/delta_abs_mean": delta.abs().mean().item(),
        "train/response_tokens": rollout.response_mask.sum(-1).mean().item(),
    }
    if task.correctness is not None:
        out["train/exact_match"] = task.correct(table).float().mean().item()
    out.update({f"train/reward_{name}": v.float().mean().item() for name, v in table.items()})
    truncated = getattr(rollout, "truncated", None)
    if truncated is not None:
        out["train/truncated_frac"] = truncated.float().mean().item()
    return out
