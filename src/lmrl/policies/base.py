"""The policy protocol the step is written against: prepare, sample, logprobs, token budget.

Shapes: prompts (B, ...) in whatever form the task uses; responses (B, G, T) token ids;
response_mask (B, G, T), 1 on response tokens, 0 on padding; log-probs and entropy (B, G, T).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Rollout:
    responses: Tensor  # (B, G, T) sampled token ids
    response_mask: Tensor  # (B, G, T) 1.0 on response tokens


@runtime_checkable
class Policy(Protocol):
    """What the step, the trainer and the snapshots use of a model (the toy ToySortPolicy and a
    causal LM's HFPolicy both satisfy it; tests/test_policy_protocol.py checks). A policy is
    also a torch.nn.Module: the optimizer takes its parameters(), the reference policy is a deep
    copy (with LoRA: the policy itself, adapters off), and checkpoints hold its state_dict()."""

    def prepare(self, prompts):
        """A task's B prompts as the model conditions on them, once per step (sampling and every
        log-prob pass share it): the toy's (B, n) tensor as is, a text task's examples
        tokenized."""
        ...

    def sample(self, prompts, num_samples: int, generator: torch.Generator | None = None,
               temperature: float = 1.0, rows: slice | None = None) -> Rollout:
        """G = num_samples responses per prompt; temperature 0 means greedy. rows (data
        parallel only): sample prompts[rows] alone, with the random draws that sampling all the
        prompts would give them, and leave the generator where that would."""
        ...

    def logprobs(self, prompts, responses: Tensor, response_mask: Tensor,
                 with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """log π(a_t | s_t) of each response token, and optionally the entropy of π(· | s_t)."""
        ...

    @property
    def token_budget(self) -> int:
        """The most response tokens a sample may have: aggregation=constant's normaliser."""
        ...

    def parameters(self, recurse: bool = True):
        ...

    def save_to(self, run_dir: Path, weights: dict[str, Tensor] | None = None) -> None:
        """Write the policy in its loadable form into a run directory, atomically (weights: its
        state dict, whole; None: its own)."""
        ...


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H(softmax(logits)) over the last dim. (..., V) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
