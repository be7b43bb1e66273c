"""Advantage-based Δ with a learned value model (PPO): token rewards, GAE, whitening, value loss.

The seed's "advantage-based: Δ approximates A(S,A) = Q(S,A) - V(S)", per token: the state s_t
is the prompt plus the response's first t tokens, the action is token t, and a value model
(critic) predicts V(s_t). Everything here is pure: tensors and plain numbers in, tensors out.

Shapes: per-token tensors are (..., T) — (B, G, T) in the trainer — with a 0/1 `mask` marking
response tokens, right-padded (a response's real tokens come first). values[..., t] = V(s_t),
the value model's output at the position whose logits give token t's log-prob. The value after
the last real token is 0: the response has ended (terminal), there is nothing more to earn.
Padding is ignored on the way in and is 0 on the way out.

One step of PPO with a critic, with these pieces:
    r = outcome_token_rewards(R, mask)               # R on the last real token, 0 elsewhere
    r = kl_penalized_rewards(r, kl, beta, mask)      # optional: classic RLHF's -β·kl_t
    advantages, returns = gae(r, values, mask, gamma, lam)
    delta = whiten(advantages, mask)                 # optional: a per-token Δ for losses.py
    loss_v = aggregate(value_loss(v_new, values, returns, mask, clip_eps), mask, mode)
"""

import torch
from torch import Tensor

from lmrl.losses import masked_mean


def outcome_token_rewards(reward: Tensor, mask: Tensor) -> Tensor:
    """r_t = R on each response's last real token, 0 on every other token and on padding.

    An outcome reward is earned when the response ends, so every earlier token's advantage
    comes from the value model and (γ, λ). An empty response gets no reward token; an unscored
    (nan) reward stays nan on its last token, for the caller to decide about.
    Shapes: reward (...), mask (..., T) -> (..., T).
    """
    last = mask.sum(dim=-1, keepdim=True).long() - 1  # right-padded: the last real position
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(positions == last, reward.unsqueeze(-1), 0.0)


def kl_penalized_rewards(token_rewards: Tensor, kl: Tensor, beta: float, mask: Tensor) -> Tensor:
    """r_t - β·kl_t on response tokens, 0 on padding: classic RLHF PPO's KL penalty (Ziegler et
    al. 2019; Ouyang et al. 2022), the KL to the reference paid as a reward, token by token.

    `kl` is a per-token estimate (losses.KL_ESTIMATORS, k1 = log π/π_ref in those papers). It is
    detached: a reward is a constant of the update, and its KL pull reaches the policy only
    through the advantages (unlike lmrl's KL loss term, which is differentiated).
    Shapes: token_rewards, kl, mask (..., T) -> (..., T).
    """
    return torch.where(mask.bool(), token_rewards - beta * kl.detach(), 0.0)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
        ) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438).

    δ_t = r_t + γ V(s_{t+1}) - V(s_t), with V(s_{t+1}) = 0 after the last real token;
    A_t = Σ_l (γλ)^l δ_{t+l};   returns R_t = A_t + V(s_t), the value model's targets.
    λ = 0 is the one-step TD error; λ = 1 is the discounted return minus V(s_t), so with γ = 1
    and an outcome reward A_t = R - V(s_t) (the seed's R - V(S), at every token).
    values are detached: advantages weight the policy gradient and returns are regression
    targets, neither is differentiated into the value model.
    Shapes: rewards, values, mask (..., T) -> advantages, returns (..., T), 0 on padding.
    """
    on = mask.bool()
    v = torch.where(on, values.detach(), 0.0)
    r = torch.where(on, rewards, 0.0)
    v_next = torch.nn.functional.pad(v[..., 1:], (0, 1))  # V(s_{t+1}); padding's 0 is terminal
    td = torch.where(on, r + gamma * v_next - v, 0.0)  # (..., T)
    running = torch.zeros_like(td[..., 0])
    advantages = []
    for t in reversed(range(td.shape[-1])):  # A_t = δ_t + γλ A_{t+1}, from the end
        running = td[..., t] + gamma * lam * running
        advantages.append(running)
    adv = torch.stack(advantages[::-1], dim=-1)
    return adv, torch.where(on, adv + v, 0.0)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over all real tokens of the batch: PPO's advantage whitening.

    mean and the biased (population) variance are taken over the masked tokens together (not
    per response), so the result has masked mean 0 and std 1. shift_mean=False adds the mean
    back (scale only, keeping the sign of an all-positive batch, as TRL's `whiten` offers).
    Under data parallelism the statistics would have to be pooled over ranks. Padding -> 0.
    Shapes: x, mask (..., T) -> (..., T).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0.0)


def value_loss(values: Tensor, values_old: Tensor, returns: Tensor, mask: Tensor,
               clip_eps: float | None) -> Tensor:
    """Per-token value loss, to be reduced by losses.aggregate like the policy loss.

    clip_eps=None: ½ (V - R)².  With clip_eps (PPO2's value clipping, as in OpenAI baselines):
    ½ max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²). Where the clipped branch is the
    larger (V moved more than ε from V_old, and the clipped value is further from R), the
    token's gradient is 0, as where the policy's clip is active. values_old and returns are
    constants (detached).
    Shapes: values, values_old, returns, mask (..., T) -> (..., T), 0 on padding.
    """
    returns, values_old = returns.detach(), values_old.detach()
    loss = (values - returns) ** 2
    if clip_eps is not None:
        clipped = values_old + (values - values_old).clamp(-clip_eps, clip_eps)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return torch.where(mask.bool(), 0.5 * loss, 0.0)


@torch.no_grad()
def value_clip_frac(values: Tensor, values_old: Tensor, returns: Tensor, mask: Tensor,
                    clip_eps: float) -> float:
    """Fraction of response tokens where the clipped value branch is strictly larger, i.e. the
    tokens whose value-loss gradient clipping set to 0 (the value model's clip_frac).
    Shapes: values, values_old, returns, mask (..., T) -> a float.
    """
    clipped = values_old + (values - values_old).clamp(-clip_eps, clip_eps)
    active = ((clipped - returns) ** 2 > (values - returns) ** 2).to(values.dtype)
    return masked_mean(active, mask).item()
