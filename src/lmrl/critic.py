"""PPO's learned value model (critic) for a causal LM: building it, V(s_t), Δ and its update.

The critic is a transformers backbone (no LM head) plus a linear value head: a separate copy of
a model with its own AdamW (critic=separate), or the policy's own backbone (critic=head), whose
value loss is added to the policy's, vf_coef·L_V, and trained by the policy's optimizer. For
response token t, V(s_t) is the value of the state *before* token t is emitted: the prompt plus
the response's first t tokens. That state's last position is the column whose logits give
token t's log-prob in HFPolicy (column L-1+t of prompt + response, L the left-padded prompt's
width), so values line up with log-probs token for token (tests/test_ppo.py checks it), and
advantages.py's convention values[..., t] = V(s_t) holds.

The math (token rewards, GAE, whitening, value loss) is advantages.py's; this module only runs
the model and applies it to a step.Batch:

    collect: fill_advantages  values_old (no grad), token rewards, GAE -> Δ (B, G, T), returns
    update:  critic_pass      separate: each μ pass, value loss over the micro-batches, one
                              step of the critic's AdamW
             value_share      head: a micro-batch's value loss, for step.update_pass to add

Shapes: B prompts, G samples each, N = B*G rows, L prompt columns, T response tokens, H hidden.
"""

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lmrl import files
from lmrl.advantages import (
    gae,
    kl_penalized_rewards,
    outcome_token_rewards,
    value_clip_frac,
    value_loss,
    whiten,
)
from lmrl.losses import aggregate, kl_k1, masked_mean

if TYPE_CHECKING:
    from lmrl.config import Config
    from lmrl.policies.hf import HFPolicy, PromptBatch
    from lmrl.step import Batch

# The critics lmrl builds (config.AlgoConfig.critic); "none" keeps --delta's Δ.
CRITICS = ("none", "separate", "head")
HEAD_FILE = "value_head.safetensors"


class Critic(nn.Module):
    """V(s_t) for every response token: a backbone's hidden states through Linear(H, 1).

    shared: the backbone is the policy's (critic=head); the critic then owns only its head,
    which is all it saves, and the policy's optimizer trains both."""

    def __init__(self, backbone: nn.Module, autocast: torch.dtype | None = None,
                 shared: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.eval()  # no dropout: values_old and the update see one model
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        self.autocast, self.shared = autocast, shared

    def owned(self) -> nn.Module:
        """What this critic alone trains and checkpoints: the head, or everything."""
        return self.head if self.shared else self

    def train(self, mode: bool = True) -> "Critic":
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def values(self, prompts: "PromptBatch", responses: Tensor, response_mask: Tensor) -> Tensor:
        """V(s_t) at each response token, 0 on padding.

        Shapes: prompts B left-padded (B, L), responses and response_mask (B, G, T) -> (B, G, T).
        """
        from lmrl.policies.hf import position_ids

        B, G, T = responses.shape
        ids, prompt_mask = prompts.input_ids.to(self.device), prompts.attention_mask.to(self.device)
        mask = response_mask.reshape(B * G, T).to(self.device)
        input_ids = torch.cat([ids.repeat_interleave(G, dim=0),
                               responses.reshape(B * G, T).to(self.device)], dim=1)
        attention = torch.cat([prompt_mask.repeat_interleave(G, dim=0), mask.long()], dim=1)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention,
                                   position_ids=position_ids(attention)).last_hidden_state
        L = ids.shape[1]
        # Column L-1+t ends the state s_t (prompt + first t tokens): the one predicting token t.
        state = hidden[:, L - 1:L - 1 + T].float()  # (N, T, H)
        v = self.head(state).squeeze(-1)  # (N, T)
        return (v * mask).reshape(B, G, T)

    def save_to(self, run_dir: Path) -> None:
        """run_dir/critic/: the backbone (save_pretrained; not a shared one, which is model/)
        and the value head (safetensors)."""
        from safetensors.torch import save_file

        with files.atomic_dir(Path(run_dir) / "critic") as tmp:
            if not self.shared:
                self.backbone.save_pretrained(tmp, safe_serialization=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      tmp / HEAD_FILE)


def build_critic(cfg: "Config", policy: "HFPolicy") -> Critic:
    """critic=separate: the backbone of algo.critic_model (default: the policy's model) on the
    policy's device; critic=head: the policy's own backbone. The value head is initialised from
    the run's seed (without moving the global RNG)."""
    if cfg.algo.critic == "head":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            critic = Critic(policy.model.base_model, autocast=policy.autocast, shared=True)
        return critic.to(policy.device)
    from transformers import AutoModel

    from lmrl.config import ConfigError
    from lmrl.policies.loading import load_errors, model_source

    path = cfg.algo.critic_model or cfg.policy.model
    with load_errors(path, "its config or weights (config.json, model.safetensors)"):
        backbone = AutoModel.from_pretrained(
            path, dtype=torch.bfloat16 if cfg.policy.dtype == "bfloat16" else torch.float32,
            local_files_only=model_source(path), trust_remote_code=cfg.policy.trust_remote_code)
    vocab = policy.model.get_input_embeddings().num_embeddings
    if backbone.get_input_embeddings().num_embeddings != vocab:
        raise ConfigError(f"algo.critic_model={path} has a vocabulary of "
                          f"{backbone.get_input_embeddings().num_embeddings} tokens and the "
                          f"policy {vocab}: the critic reads the policy's token ids, so it must "
                          "share its tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        critic = Critic(backbone, autocast=policy.autocast)
    return critic.to(policy.device)


@torch.no_grad()
def fill_advantages(critic: Critic, cfg: "Config", batch: "Batch", k: int,
                    logp: Tensor | None) -> dict[str, float]:
    """Set batch.values_old, batch.returns and batch.delta (per-token GAE advantages, whitened
    if asked) from the critic's values, computed in k micro-batches; return their statistics.

    The outcome reward is paid on each response's last real token; with kl_in_reward β, each
    token also pays -β·k1 = -β·(log π - log π_ref), log π being the sampling policy's (logp).
    A sample no reward function scored (nan, TRL's None) gets Δ = 0, as deltas.py gives it, is
    left out of the whitening statistics, and its returns are V_old (the critic keeps its value).
    Shapes: logp (B, G, T) or None; the batch's per-token fields (B, G, T).
    """
    a, dev = cfg.algo, critic.device
    values = torch.cat([critic.values(mb.prompts, mb.responses, mb.response_mask)
                        for mb in batch.split(k)])  # (B, G, T)
    reward = batch.rewards.to(dev)  # (B, G)
    mask = batch.response_mask.to(dev) * ~reward.isnan().unsqueeze(-1)  # scored tokens
    rewards = outcome_token_rewards(reward.nan_to_num(0.0), mask)
    if a.kl_in_reward:
        kl = kl_k1(logp.to(dev), batch.logp_ref.to(dev))
        rewards = kl_penalized_rewards(rewards, kl, a.kl_in_reward, mask)
    advantages, returns = gae(rewards, values, mask, a.gamma, a.lam)
    batch.values_old, batch.returns = values, torch.where(mask.bool(), returns, values)
    batch.delta = whiten(advantages, mask) if a.whiten_advantages else advantages
    return {"train/advantage_mean": masked_mean(advantages, mask).item(),
            "train/advantage_std": masked_std(advantages, mask),
            "critic/explained_variance": explained_variance(values, returns, mask)}


def masked_std(x: Tensor, mask: Tensor) -> float:
    """The population standard deviation over the masked entries. Shapes: x, mask (...)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask).sqrt().item()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens: 1 for a perfect critic, 0 for one no better
    than a constant, negative for worse (CleanRL's explained_var); nan when the returns are
    constant. Shapes: values, returns, mask (...)."""
    var = masked_std(returns, mask) ** 2
    return float("nan") if var == 0 else 1.0 - masked_std(returns - values, mask) ** 2 / var


def critic_pass(critic: Critic, optimizer: torch.optim.Optimizer, cfg: "Config",
                micro: list["Batch"], denominator: float) -> dict[str, float]:
    """One optimizer step of the critic over all micro-batches (gradient accumulation).

    The value loss is aggregated like the policy loss (same aggregation, the whole batch's
    denominator), so its scale follows --aggregation just as the policy's does, and the critic's
    gradient clip is train.grad_clip. A non-finite value loss or gradient skips the step
    (critic/skipped).
    """
    clip = cfg.algo.cliprange_value or None
    optimizer.zero_grad(set_to_none=True)
    total, parts = 0.0, []  # parts: (tokens, diagnostics) per micro-batch
    for mb in micro:
        mask = mb.response_mask.to(critic.device)
        v = critic.values(mb.prompts, mb.responses, mb.response_mask)  # (B', G, T)
        loss = aggregate(value_loss(v, mb.values_old, mb.returns, mask, clip), mask,
                         cfg.algo.aggregation, denominator)
        loss.backward()
        total += loss.item()  # each share is already divided by the whole batch's count
        parts.append((mask.sum().item(), value_diagnostics(v.detach(), mb, mask, clip)))
    params = [p for p in critic.parameters() if p.grad is not None]
    max_norm = cfg.train.grad_clip
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm) if max_norm > 0
                 else torch.nn.utils.get_total_norm([p.grad for p in params]))
    finite = math.isfinite(total) and math.isfinite(norm)
    if finite:
        optimizer.step()
    weight = sum(w for w, _ in parts) or 1.0
    means = {k: sum(w * d[k] for w, d in parts) / weight for k in parts[0][1]}
    return {"critic/value_loss": total, **means, "critic/grad_norm": norm,
            "critic/skipped": float(not finite)}


@torch.no_grad()
def value_diagnostics(v: Tensor, mb: "Batch", mask: Tensor, clip: float | None
                      ) -> dict[str, float]:
    """A micro-batch's mean value, mean return and value clip fraction (0 without clipping).
    Shapes: v, mask and mb's per-token fields (B', G, T)."""
    frac = value_clip_frac(v, mb.values_old, mb.returns, mask, clip) if clip else 0.0
    return {"critic/values_mean": masked_mean(v, mask).item(),
            "critic/returns_mean": masked_mean(mb.returns, mask).item(), "critic/clip_frac": frac}


def value_share(critic: Critic, cfg: "Config", mb: "Batch", denominator: float
                ) -> tuple[Tensor, dict[str, float]]:
    """critic=head: a micro-batch's share of the value loss (aggregated as the policy loss is,
    over the whole batch's denominator) and its diagnostics, for the caller to add vf_coef times
    to the policy's loss. The values come from a second forward through the shared backbone
    (transformers' own forward, whichever forward the log-probs used)."""
    clip = cfg.algo.cliprange_value or None
    mask = mb.response_mask.to(critic.device)
    v = critic.values(mb.prompts, mb.responses, mb.response_mask)  # (B', G, T)
    loss = aggregate(value_loss(v, mb.values_old, mb.returns, mask, clip), mask,
                     cfg.algo.aggregation, denominator)
    return loss, value_diagnostics(v.detach(), mb, mask, clip)
