"""One GRPO step, in the order of the data flow:

    collect: prompts -> rollouts -> rewards -> deltas -> ref log-probs   (a Batch)
    update:  μ × (log-probs -> loss -> backward -> optimizer step)
    then the learned baseline's update (delta=value / running_mean) and the snapshot refresh

The step is written against the policy protocol (sample / logprobs with a response mask), so the
toy model and a causal LM run through the same code. `collect` and `update` are the seam between
sampling a batch and learning from it: tests build or alter a Batch and run the real update.
Shapes: B prompts, G samples each, T response tokens; per-token tensors (B, G, T), per-response
tensors (B, G); B' prompts in a micro-batch.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lmrl import distributed, dynamic_sampling
from lmrl.config import AlgoConfig, Config
from lmrl.critic import critic_pass, fill_advantages, value_share
from lmrl.deltas import DELTAS, compute_deltas
from lmrl.dynamic_sampling import Scored
from lmrl.errors import RewardError
from lmrl.losses import (
    KL_ESTIMATORS,
    aggregate,
    bind_loss,
    loss_denominator,
    masked_mean,
    ratio_diagnostics,
)
from lmrl.state import TrainState
from lmrl.stopwatch import Stopwatch
from lmrl.tasks.registry import at_step, score_training

if TYPE_CHECKING:
    from lmrl.async_rollouts import RolloutsAhead
    from lmrl.policies.hf import PromptBatch

# The fields the μ updates read, each with the prompt axis first; split and groups_with_gradient
# cut these and leave the scores (metrics only) with the whole batch.
UPDATE_FIELDS = ("prompts", "responses", "response_mask", "delta", "logp_ref", "values_old",
                 "returns", "logp_old")


@dataclass
class Batch:
    """One step's sample: everything the μ updates need, fixed for the step, and the scores the
    step's train/* metrics describe."""

    prompts: "Tensor | PromptBatch | list[str]"  # (B, n) for the toy model; B prompts for an LM
    responses: Tensor  # (B, G, T)
    response_mask: Tensor  # (B, G, T)
    delta: Tensor  # (B, G); with a critic (B, G, T), per-token advantages
    logp_ref: Tensor | None  # (B, G, T), only with a KL term
    rewards: Tensor | None = None  # (B, G) float32, what Δ was computed from
    table: dict[str, Tensor] = field(default_factory=dict)  # every reward function's (B, G)
    truncated: Tensor | None = None  # (B, G), a causal LM's responses that hit the token budget
    values_old: Tensor | None = None  # (B, G, T), the critic's V(s_t) at collection
    returns: Tensor | None = None  # (B, G, T), GAE's returns: the critic's targets
    stats: dict[str, float] = field(default_factory=dict)  # collect's: critic, dynamic sampling
    # (B, G, T) log π_old when it is not the current policy: the sampler's stored log-probs
    # (async_rollouts.py). None: the current policy's, detached, on the first update pass.
    logp_old: Tensor | None = None

    def split(self, k: int) -> list["Batch"]:
        """Up to k micro-batches by prompt, so every group stays whole (fewer than k when there
        are fewer prompts, or when Tensor.chunk's equal sizes need fewer parts)."""
        chunks = {n: _chunk(getattr(self, n), k) for n in UPDATE_FIELDS}
        count = len(chunks["delta"])
        return [Batch(**{n: chunks[n][i] for n in UPDATE_FIELDS}) for i in range(count)]

    def groups_with_gradient(self) -> "Batch":
        """The groups with some Δ != 0, when there is no KL term (logp_ref is None).

        Every policy loss is a multiple of Δ (tests/test_losses.py checks each one), so a group
        whose Δ are all 0 contributes exactly 0 to the gradient: the update skips its log-prob
        pass and backward and computes the same gradient for less work (such flat groups are
        common with 0/1 rewards). The loss keeps the whole batch's denominator. The whole batch
        stays when every group has some Δ, and when none has: the optimizer then still steps on
        zero gradients (AdamW's momentum moves the weights), as without the skip. With a critic
        (returns set) every group stays: the value loss learns from each of them."""
        keep = (self.delta != 0).flatten(1).any(dim=-1)  # (B,), per-response or per-token Δ
        if (self.logp_ref is not None or self.returns is not None or bool(keep.all())
                or not bool(keep.any())):
            return self
        rows = keep.nonzero().squeeze(-1)
        return Batch(**{n: _select(getattr(self, n), rows) for n in UPDATE_FIELDS})


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


def grpo_step(state: TrainState, task, cfg: Config,
              ahead: "RolloutsAhead | None" = None) -> dict[str, float]:
    """Sample, score and update once; returns the step's flat metrics. ahead: the batch comes
    from async_rollouts.RolloutsAhead, which collects the next one during the update."""
    clock = Stopwatch()
    with clock("step"):
        if ahead is None:
            batch = collect(state, task, cfg, clock)  # times sample, reward, ref
        else:
            batch = ahead.next_batch(state, clock)
        with clock("update"):
            metrics = update(state, cfg, batch, clock)  # times logprob, backward, optimizer
            learned = update_baseline(state, batch)
            if ahead is not None:  # before the refresh changes the reference it reads
                ahead.finish_pending()
            # After the update and state.step += 1: the refresh rule counts completed steps.
            refreshed = (state.reference.maybe_refresh(state.policy, state.step)
                         if state.reference else False)
    return {**reward_metrics(gathered(batch), task), **batch.stats, **metrics, **learned,
            "train/ref_refreshed": float(refreshed), **clock.metrics()}


def update_baseline(state: TrainState, batch: Batch) -> dict[str, float]:
    """Fit the learned baseline (if any) to this step's rewards, after Δ was computed from it,
    so Δ never compares R with a baseline that has seen R. Here and not in collect: the
    pre-flight's collect must leave the run unchanged, and a step that fails before its update
    must leave the baseline as it was (recovery.save_after_failure repeats that step).
    Every rank learns from the whole batch, so their copies stay equal."""
    if state.baseline is None:
        return {}
    prompts = distributed.gather(batch.prompts)  # (B, n)
    return state.baseline.update(prompts, distributed.gather(batch.rewards))


def gathered(batch: Batch) -> Batch:
    """With several ranks, the scores of the whole batch (every rank's share, in rank order),
    so that train/* describes the B prompts as one process would; the batch itself with one."""
    if distributed.world() == 1:
        return batch
    fields = {n: getattr(batch, n) for n in ("rewards", "delta", "truncated")}
    fields = {n: None if v is None else distributed.gather(v) for n, v in fields.items()}
    # A causal LM's ranks stop sampling at different lengths T: padded to the longest.
    fields["response_mask"] = distributed.gather(batch.response_mask, pad_last=True)
    table = {name: distributed.gather(v) for name, v in batch.table.items()}
    return Batch(batch.prompts, batch.responses, logp_ref=None, table=table, **fields)


def collect(state: TrainState, task, cfg: Config, clock: Stopwatch | None = None,
            sampler_old: bool = False) -> Batch:
    """Sample B prompts and G responses to each, score them, and fix Δ and the reference's
    log-probs: the batch that the step's μ updates learn from. With dynamic sampling, the
    batch is the varied groups of up to max_sample_rounds such samples (dynamic_sampling.py).
    sampler_old: the sampling policy's log-probs become the batch's π_old (async rollouts)."""
    tr, policy, clock = cfg.train, state.policy, clock or Stopwatch()
    stats: dict[str, float] = {}
    if tr.dynamic_sampling:
        scored, stats = dynamic_sampling.fill(lambda: sample_scored(state, task, cfg, clock),
                                              tr.B, tr.max_sample_rounds, policy.prepare)
    else:
        scored = sample_scored(state, task, cfg, clock)
    with clock("reward"):
        # With a critic, Δ are its per-token advantages, filled in below (fill_advantages).
        delta = (deltas_of(state, cfg, scored.prompts, scored.rewards) if cfg.algo.critic == "none"
                 else torch.zeros_like(scored.rewards))  # (B, G)
    batch = Batch(scored.inputs, scored.responses, scored.response_mask, delta, None,
                  scored.rewards, scored.table, scored.truncated, stats=stats)
    with clock("ref"):
        if state.reference is not None:  # per micro-batch: the logits are the memory peak
            batch.logp_ref = torch.cat([state.reference.logprobs(mb.prompts, mb.responses,
                                                                 mb.response_mask)
                                        for mb in batch.split(tr.grad_accum)])
    if state.critic is not None:
        with clock("critic"):  # Δ becomes the critic's per-token advantages
            batch.stats = fill_advantages(state.critic, cfg, batch, tr.grad_accum, scored.logp)
    if sampler_old:
        batch.logp_old = scored.logp
        if batch.logp_old is None:  # a policy whose sample stores none (the toy model)
            with torch.no_grad():
                batch.logp_old = policy.logprobs(batch.prompts, batch.responses,
                                                 batch.response_mask)[0]
    return batch


def sample_scored(state: TrainState, task, cfg: Config, clock: Stopwatch) -> Scored:
    """B fresh prompts from the run's generator, G responses to each, and their rewards
    (B, G): this rank's share B' of them with several ranks."""
    tr, policy = cfg.train, state.policy
    with clock("sample"):
        # Every rank draws the same B prompts; with several ranks each keeps its share, B'.
        prompts = task.sample_prompts(tr.B, state.generator)  # (B, n) or B examples
        inputs = policy.prepare(prompts)  # tokenized once for sampling and every pass
        with torch.no_grad():
            if distributed.world() == 1:
                rollout = policy.sample(inputs, tr.G, generator=state.generator)  # (B, G, T)
            else:
                rows = distributed.share(tr.B)
                rollout = policy.sample(inputs, tr.G, generator=state.generator, rows=rows)
                share = torch.arange(rows.start, rows.stop)
                prompts, inputs = _select(prompts, share), _select(inputs, share)  # B' prompts
    with clock("reward"):
        at_step(task, state.step, tr.steps)
        rewards, table = score_training(task, prompts, rollout)  # (B, G), {name: (B, G)}
        # Text tasks name the failing function themselves; this is a net. nan marks a sample no
        # reward function scored, which only a task that says so (TRL-style None) may return.
        unscored_ok = getattr(task, "may_leave_unscored", False)
        if bool((rewards.isinf() | (rewards.isnan() & (not unscored_ok))).any()):
            raise RewardError(f"the task returned non-finite rewards {rewards.flatten().tolist()}")
    # Text tasks score in float64 (a reward of 1e39 is finite there); the loss is float32,
    # and a Δ that overflows it gives a non-finite loss, whose update is skipped and counted.
    return Scored(prompts, inputs, rollout.responses, rollout.response_mask,
                  rewards.to(torch.float32), table, getattr(rollout, "truncated", None),
                  getattr(rollout, "logp", None))


def deltas_of(state: TrainState, cfg: Config, prompts, rewards: Tensor) -> Tensor:
    """Δ (B', G) of this rank's rewards (B', G). A batch-statistics delta (reinforce_pp) takes
    them over every rank's samples, as one process would over the B prompts, then keeps this
    rank's share; a learned baseline reads its values of these prompts."""
    a = cfg.algo
    if DELTAS[a.delta].batch_stats and distributed.world() > 1:
        whole = compute_deltas(a.delta, distributed.gather(rewards), eps=a.norm_eps)
        return whole[distributed.share(cfg.train.B)]
    baseline = state.baseline.values(prompts)[:, None] if state.baseline else None  # (B', 1)
    return compute_deltas(a.delta, rewards, eps=a.norm_eps, baseline=baseline)


def update(state: TrainState, cfg: Config, batch: Batch,
           clock: Stopwatch | None = None) -> dict[str, float]:
    """The μ optimizer steps on one collected batch, then the learning-rate schedule and the
    step count move on. Returns the last pass's loss/* and policy/* diagnostics (the one
    furthest from π_old; on the first, r = 1 exactly) and the train/* counters."""
    a, clock = cfg.algo, clock or Stopwatch()
    # The loss is divided by the whole batch's count, whatever the micro-batch split. The
    # constant normaliser is the token budget, fixed across steps (the padded T is not: a
    # causal LM stops sampling when its longest response ends).
    denominator = loss_denominator(batch.response_mask, a.aggregation,
                                   constant=state.policy.token_budget)
    denominator = distributed.all_reduce([denominator])[0]  # the count over all ranks
    kept = batch.groups_with_gradient()  # loss/* and policy/entropy describe these groups
    micro = kept.split(cfg.train.grad_accum)
    idle = idle_passes(len(micro)) if cfg.train.fsdp else 0
    logp_old = None if batch.logp_old is None else [mb.logp_old for mb in micro]
    skipped = {"loss": 0.0, "gradient": 0.0}  # passes skipped, by where they went non-finite
    frozen = state.step < a.critic_warmup  # PPO's warm-up: only the critic learns
    diag, critic = {}, {}
    for _ in range(a.mu):
        if not frozen:
            logp_old, diag, stage = update_pass(state, cfg, micro, logp_old, denominator, clock,
                                                idle)
            if stage is not None:
                skipped[stage] += 1
        if state.critic is not None and not state.critic.shared:  # its own optimizer
            with clock("critic_update"):
                critic = critic_pass(state.critic, state.critic_optimizer, cfg, micro,
                                     denominator)
    count = int(skipped["loss"] + skipped["gradient"])
    state.skipped_updates += count
    state.skipped_in_a_row = state.skipped_in_a_row + count if count else 0
    lr = state.optimizer.param_groups[0]["lr"]  # the rate these updates used
    with warnings.catch_warnings():  # in the critic's warm-up the schedule moves on unstepped
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
        state.scheduler.step()
    state.step += 1
    groups = distributed.all_reduce([len(kept.delta), len(batch.delta)])
    return {
        **diag,
        **critic,
        **({"critic/policy_frozen": float(frozen)} if state.critic is not None else {}),
        "train/skipped_nonfinite_loss": skipped["loss"],  # passes of this step
        "train/skipped_nonfinite_grad": skipped["gradient"],
        "train/lr": lr,
        "train/skipped_updates": state.skipped_updates,  # in the whole run
        "train/updated_group_frac": groups[0] / groups[1],
    }


def idle_passes(count: int) -> int:
    """Under FSDP: how many more log-prob passes than its `count` micro-batches this rank must
    make. Each forward and backward is a collective there, and ranks that skipped different
    numbers of flat groups (groups_with_gradient) can have fewer micro-batches than others."""
    return int(distributed.all_reduce([count], "max")[0]) - count


def update_pass(state: TrainState, cfg: Config, micro: list[Batch], logp_old: list[Tensor] | None,
                denominator: float, clock: Stopwatch, idle: int = 0
                ) -> tuple[list[Tensor], dict[str, float], str | None]:
    """One optimizer step over all micro-batches (gradient accumulation). Returns each
    micro-batch's log π_old, this pass's diagnostics, and where it went non-finite (None: the
    optimizer stepped). idle: passes that add a zero gradient (idle_passes).

    On the first pass logp_old is None: the parameters are still θ_old, so each micro-batch's
    detached log-probs *are* log π_old and are kept for the later μ-1 passes.
    """
    state.optimizer.zero_grad(set_to_none=True)
    stored, parts = [], []
    head = state.critic if state.critic is not None and state.critic.shared else None
    value_total = 0.0
    for i, mb in enumerate(micro):
        with clock("logprob"):  # the forward pass and the loss
            logp, entropy = state.policy.logprobs(mb.prompts, mb.responses, mb.response_mask,
                                                  with_entropy=True)
            old = logp.detach() if logp_old is None else logp_old[i]
            pg, kl, loss = micro_loss(cfg.algo, logp, old, mb, denominator)
            if head is not None:  # critic=head: one loss trains the policy and its value head
                value, value_diag = value_share(head, cfg, mb, denominator)
                loss = loss + cfg.algo.vf_coef * value
                value_total += value.item()
        with clock("backward"):
            loss.backward()
        stored.append(old)
        diag = micro_diagnostics(cfg, logp, old, mb, pg, kl, entropy, loss)
        if head is not None:
            diag.update(value_diag)
        parts.append((mb.response_mask.sum().item(), diag))
    for _ in range(idle):
        with clock("logprob"):
            logp = state.policy.logprobs(micro[0].prompts, micro[0].responses,
                                         micro[0].response_mask)[0]
        with clock("backward"):
            (logp.sum() * 0.0).backward()
    if distributed.world() > 1 and not cfg.train.fsdp:  # FSDP's backward sums them itself
        with clock("all_reduce"):  # the gradient of the whole batch, before clipping sees it
            distributed.sum_gradients(list(state.policy.parameters()))
    with clock("optimizer"):  # clipping, the finiteness check and the step
        grad_norm = grad_clip(state, cfg.train.grad_clip)
        diag = combine(parts)
        diag["loss/total"] = sum(d["loss/total"] for _, d in parts)  # already globally normalised
        if head is not None:
            diag["critic/value_loss"] = value_total  # its shares are globally normalised too
        if distributed.world() > 1:  # every rank then skips, or steps, alike
            diag = combine_ranks(diag, sum(w for w, _ in parts))
        diag["policy/grad_norm"] = grad_norm
        # A non-finite loss or gradient would turn every weight into NaN: skip the update (the
        # trainer counts skips and stops the run after train.max_skipped in a row).
        stage = nonfinite_stage(diag["loss/total"], grad_norm)
        if stage is None:
            state.optimizer.step()
            state.optimizer_steps += 1
        else:
            state.optimizer.zero_grad(set_to_none=True)
    return stored, diag, stage


def micro_loss(a: AlgoConfig, logp: Tensor, logp_old: Tensor, mb: Batch, denominator: float
               ) -> tuple[Tensor, Tensor | None, Tensor]:
    """A micro-batch's per-token policy loss and KL to the reference (None without one), both
    (B', G, T), and its share of the step's scalar loss (divided by the whole batch's count)."""
    policy_loss = bind_loss(a.loss, ratio_level=a.ratio_level, clip_eps_low=a.eps_low,
                            clip_eps_high=a.eps_high)
    pg = policy_loss(logp, logp_old, mb.delta, mb.response_mask)
    if mb.logp_ref is None:
        return pg, None, aggregate(pg, mb.response_mask, a.aggregation, denominator)
    kl = KL_ESTIMATORS[a.estimator](logp, mb.logp_ref)
    return pg, kl, aggregate(pg + a.kl_weight * kl, mb.response_mask, a.aggregation, denominator)


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


def combine_ranks(diag: dict[str, float], weight: float) -> dict[str, float]:
    """combine over ranks: token-weighted means, min/max, and loss/total summed (each rank's
    share is already divided by the whole batch's count)."""
    keys = sorted(diag)
    lows = [k for k in keys if k.endswith("_min")]
    highs = [k for k in keys if k.endswith("_max")]
    means = [k for k in keys if k not in lows and k not in highs and k != "loss/total"]
    sums = distributed.all_reduce([weight * diag[k] for k in means] + [weight, diag["loss/total"]])
    total = sums[-2] or 1.0
    out = {k: v / total for k, v in zip(means, sums[:-2], strict=True)}
    out["loss/total"] = sums[-1]
    out.update(zip(lows, distributed.all_reduce([diag[k] for k in lows], "min"), strict=True))
    out.update(zip(highs, distributed.all_reduce([diag[k] for k in highs], "max"), strict=True))
    return out


def nonfinite_stage(loss: float, grad_norm: float) -> str | None:
    """Where a pass went non-finite: "loss", else "gradient", else None."""
    if not math.isfinite(loss):
        return "loss"
    return None if math.isfinite(grad_norm) else "gradient"


def grad_clip(state: TrainState, max_norm: float) -> float:
    """Clip to max_norm (0: do not) and return the norm before clipping: the whole gradient's,
    a sharded model's (DTensor gradients) too, and a critic=head value head's (the optimizer's
    parameters: the policy's trainable ones and that head)."""
    params = [p for group in state.optimizer.param_groups for p in group["params"]
              if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


@torch.no_grad()
def reward_metrics(batch: Batch, task) -> dict[str, float]:
    """What the sampled batch scored: the training reward, each reward function's mean,
    correctness, and (for text) truncation and length. With dynamic sampling, the final batch
    (the kept groups), not every group sampled: train/kept_group_frac says how many varied."""
    rewards, table = batch.rewards, batch.table  # (B, G), {name: (B, G)}
    flat = rewards.amax(dim=-1) == rewards.amin(dim=-1)
    out = {
        "train/reward_mean": rewards.mean().item(),
        "train/reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        "train/reward_group_max": rewards.amax(dim=-1).mean().item(),
        # Groups whose samples all scored the same give no gradient under a group baseline.
        "train/flat_group_frac": flat.float().mean().item(),
        "train/delta_abs_mean": batch.delta.abs().mean().item(),
        "train/response_tokens": batch.response_mask.sum(-1).mean().item(),
    }
    if task.correctness is not None:
        out["train/exact_match"] = mean_of_scored(task.correct(table))
    out.update({f"train/reward_{name}": mean_of_scored(v) for name, v in table.items()})
    # The share of samples each function passed on (None): 1 means it applies to nothing here.
    out.update({f"train/reward_{name}_none_frac": v.isnan().float().mean().item()
                for name, v in table.items() if bool(v.isnan().any())})
    # Each function's spread: 0 says it gave every sample one value (preflight.py warns).
    out.update({f"train/reward_{name}_std": spread(v[~v.isnan()]) for name, v in table.items()})
    if batch.truncated is not None:
        out["train/truncated_frac"] = batch.truncated.float().mean().item()
    if bool(rewards.isnan().any()):  # a TRL-style None: the statistics of what was scored
        out.update(scored_metrics(rewards, table))
    logged = getattr(task, "logged", None)  # what reward functions sent to log_metric
    means = distributed.pooled_means(dict(logged.metrics) if logged else {})
    for name, mean in means.items():
        key = f"train/{name}"  # as TRL names it, unless that is one of lmrl's own keys
        out[f"train/log_metric/{name}" if key in out else key] = mean
    return out


def scored_metrics(rewards: Tensor, table: dict[str, Tensor]) -> dict[str, float]:
    """reward_metrics' reward statistics over the samples some reward function scored, for a
    batch where some returned None (nan); train/unscorable_frac counts the rest."""
    scored = ~rewards.isnan()
    values = rewards[scored]
    low = rewards.masked_fill(~scored, math.inf).amin(dim=-1)
    high = rewards.masked_fill(~scored, -math.inf).amax(dim=-1)
    any_scored = scored.any(dim=-1)
    out = {
        "train/unscorable_frac": 1.0 - scored.float().mean().item(),
        "train/reward_mean": values.mean().item() if len(values) else math.nan,
        "train/reward_std": values.std().item() if len(values) > 1 else 0.0,
        "train/reward_group_max": high[any_scored].mean().item() if any_scored.any()
        else math.nan,
        # A group with at most one distinct scored value gives no gradient.
        "train/flat_group_frac": (~any_scored | (high == low)).float().mean().item(),
    }
    return out


def mean_of_scored(values: Tensor) -> float:
    """The mean over the samples a function scored (all of them unless it returned None)."""
    values = values.float()
    return (values.nanmean() if bool(values.isnan().any()) else values.mean()).item()


def spread(values: Tensor) -> float:
    """The standard deviation, exactly 0 when every value is equal (a float mean can be one ulp
    off, which would give a std of ~1e-17) and when there is one value."""
    if values.numel() < 2 or bool(values.amax() == values.amin()):
        return 0.0
    return values.double().std().item()
