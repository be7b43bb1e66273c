"""DAPO's dynamic sampling (Yu et al. 2025, "DAPO", arXiv 2503.14476, §3.2): "over-sample and
filter out prompts with accuracy equal to 1 and 0".

Under a group baseline a group whose rewards are all equal has Δ = 0 everywhere and gives no
gradient, so a batch with many such flat groups learns from few prompts. Dynamic sampling drops
the flat groups and samples B fresh prompts more (from the run's own generator, so runs stay
deterministic) until B varied groups are kept or `max_rounds` batches were sampled; the step
then trains on the first B kept groups, or on fewer when the rounds ran out, and on the last
sampled batch as it is when no group varied at all (the flat-batch warnings then fire).

Δ and the reference's log-probs are computed afterwards, on the final batch only (step.collect).
Shapes: B prompts, G samples each, T response tokens.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Scored:
    """One sampled and scored batch, before its Δ: what the rest of step.collect reads."""

    prompts: "Tensor | list"  # the task's prompts as it scores them: (B, n) or B examples
    inputs: object  # what the policy conditions on: policy.prepare(prompts)
    responses: Tensor  # (B, G, T)
    response_mask: Tensor  # (B, G, T)
    rewards: Tensor  # (B, G) float32; nan where no reward function scored the sample
    table: dict[str, Tensor]  # every reward function's (B, G)
    truncated: Tensor | None = None  # (B, G), a causal LM's responses that hit the token budget
    logp: Tensor | None = None  # (B, G, T), a causal LM's sampling log-probs

    def __len__(self) -> int:
        return len(self.rewards)


def varied(rewards: Tensor) -> Tensor:
    """Whether each group has at least two distinct scored rewards: the groups a group baseline
    learns from (nan, unscored, is left out, as the deltas leave it out). (B, G) -> (B,) bool.

    >>> varied(torch.tensor([[0., 1.], [1., 1.], [0., float("nan")]])).tolist()
    [True, False, False]
    """
    scored = ~rewards.isnan()
    low = rewards.masked_fill(~scored, math.inf).amin(dim=-1)
    high = rewards.masked_fill(~scored, -math.inf).amax(dim=-1)
    return high > low  # False when nothing is scored: inf > -inf is not


def fill(draw: Callable[[], Scored], B: int, max_rounds: int, prepare: Callable
         ) -> tuple[Scored, dict[str, float]]:
    """Draw batches (each B prompts) until B varied groups are kept or max_rounds were drawn.
    Returns the first B kept groups (fewer if the rounds ran out; the last drawn batch as it is
    if none varied) and the metrics train/sample_rounds and train/kept_group_frac (the varied
    share of every group drawn). prepare re-tokenizes the kept prompts (policy.prepare)."""
    kept: list[Scored] = []
    have = drawn = varied_count = rounds = 0
    last = None
    while rounds < max_rounds and have < B:
        last = draw()
        rounds += 1
        drawn += len(last)
        rows = varied(last.rewards).nonzero().squeeze(-1)  # (B',)
        varied_count += len(rows)
        rows = rows[:B - have]  # the first B kept groups, in the order they were drawn
        if len(rows):
            kept.append(select(last, rows))
            have += len(rows)
    stats = {"train/sample_rounds": float(rounds), "train/kept_group_frac": varied_count / drawn}
    return (concatenate(kept, prepare) if kept else last), stats


def select(scored: Scored, rows: Tensor) -> Scored:
    """The groups at rows (B',) of a scored batch; inputs are left to concatenate's prepare."""
    prompts = (scored.prompts[rows] if isinstance(scored.prompts, Tensor)
               else [scored.prompts[i] for i in rows.tolist()])

    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows.to(t.device)]

    return Scored(prompts, None, pick(scored.responses), pick(scored.response_mask),
                  pick(scored.rewards), {k: pick(v) for k, v in scored.table.items()},
                  pick(scored.truncated), pick(scored.logp))


def concatenate(parts: list[Scored], prepare: Callable) -> Scored:
    """One batch of the parts' groups, in order. Per-token tensors are right-padded with 0 to
    the longest T: masked, and a causal LM's log-prob of a token does not depend on the tokens
    after it, so any id may stand there (the step asks a policy only for the protocol's
    members, not its pad id). The prompts are prepared again as one batch (a causal LM
    left-pads them to the longest prompt, which moves no log-prob: positions count real
    tokens only)."""
    T = max(p.responses.shape[-1] for p in parts)

    def cat(name: str) -> Tensor | None:
        values = [getattr(p, name) for p in parts]
        if values[0] is None:
            return None
        return torch.cat([torch.nn.functional.pad(v, (0, T - v.shape[-1]))
                          if v.dim() == 3 else v for v in values])

    prompts = (torch.cat([p.prompts for p in parts]) if isinstance(parts[0].prompts, Tensor)
               else [ex for p in parts for ex in p.prompts])
    table = {k: torch.cat([p.table[k] for p in parts]) for k in parts[0].table}
    return Scored(prompts, prepare(prompts), cat("responses"), cat("response_mask"),
                  cat("rewards"), table, cat("truncated"), cat("logp"))
