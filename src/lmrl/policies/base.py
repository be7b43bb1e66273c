"""The policy protocol the step is written against: sample(...) and logprobs(...).

Shapes: prompts (B, ...) in whatever form the task uses; responses (B, G, T) token ids;
response_mask (B, G, T), 1 on response tokens, 0 on padding; log-probs and entropy (B, G, T).
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class Rollout:
    responses: Tensor  # (B, G, T) sampled token ids
    response_mask: Tensor  # (B, G, T) 1.0 on response tokens


class Policy(Protocol):
    def sample(self, prompts: Tensor, num_samples: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> Rollout:
        """G = num_samples responses per prompt; temperature 0 means greedy."""
        ...

    def logprobs(self, prompts: Tensor, responses: Tensor, response_mask: Tensor,
                 with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """log π(a_t | s_t) of each response token, and optionally the entropy of π(· | s_t)."""
        ...


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H(softmax(logits)) over the last dim. (..., V) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
