"""The two snapshots GRPO compares against, and their refresh rules.

π_old (for the importance ratio) is never a model: its log-probs are *stored*. Before the first of
the μ gradient steps on a batch the parameters are still θ_old, so the first pass's log-probs,
detached, are exactly log π_old; later passes reuse them. With μ = 1 this costs no pass at all
and the ratio is exactly 1 (see `step.py`). π_old is thereby refreshed every step, by construction.

π_ref (for the KL term) is a frozen in-memory copy of the policy, built only when the KL weight is
> 0, and refreshed every `refresh_every` steps (0 = never: KL to the initial policy), so that it
moves slowly. Under FSDP (sharding.py) the copy is sharded as the policy is. With LoRA it is no
copy: the base model is the policy with its adapters switched off (`AdapterOffReference`), which
is the initial policy, since the adapters start at zero.
"""

import copy

import torch
from torch import Tensor, nn

from lmrl.sharding import like


class ReferencePolicy:
    def __init__(self, policy: nn.Module, refresh_every: int = 0) -> None:
        self.model = copy.deepcopy(policy).requires_grad_(False).eval()
        self.refresh_every = refresh_every
        self.refreshes = 0

    @torch.no_grad()
    def logprobs(self, prompts: Tensor, responses: Tensor, response_mask: Tensor) -> Tensor:
        """log π_ref of each response token. (B, G, T)."""
        return self.model.logprobs(prompts, responses, response_mask)[0]

    def maybe_refresh(self, policy: nn.Module, steps_done: int) -> bool:
        """Copy the policy's weights in after every `refresh_every` completed steps."""
        if self.refresh_every <= 0 or steps_done % self.refresh_every != 0:
            return False
        self.model.load_state_dict(policy.state_dict())
        self.refreshes += 1
        return True

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        """From whole tensors, sliced into shards if the copy is sharded (sharding.py)."""
        self.model.load_state_dict(like(self.model.state_dict(), state["model"]))
        self.refreshes = state["refreshes"]


class AdapterOffReference:
    """π_ref of a LoRA policy: the same model with its adapters disabled, so no second copy of
    the weights exists. It is never refreshed (config.py refuses ref_refresh with LoRA: moving
    the reference would mean merging the adapters into the frozen base)."""

    refresh_every = 0
    refreshes = 0

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy

    @torch.no_grad()
    def logprobs(self, prompts, responses: Tensor, response_mask: Tensor) -> Tensor:
        """log π_ref of each response token. (B, G, T)."""
        with self.policy.adapters_disabled():
            return self.policy.logprobs(prompts, responses, response_mask)[0]

    def maybe_refresh(self, policy: nn.Module, steps_done: int) -> bool:
        return False

    def state_dict(self) -> dict:
        return {"refreshes": 0}  # nothing of its own: the base weights are the policy's

    def load_state_dict(self, state: dict) -> None:
        pass
