"""The seed's non-autoregressive sorting model.

A token embedding E (V, d); one encode matrix per prompt position, summed into one vector;
one decode matrix per response position; logits of position k = decoded_k · Eᵀ (input and output
share the vocabulary). Every output position is predicted independently given the prompt.

    encoded   = Σ_p E[x_p] · W_enc[p]                 (B, d)
    [hidden   = act(encoded · W_h + b_h)              (B, H)   only when hidden > 0]
    decoded_k = (hidden or encoded) · W_dec[k]        (B, P, d)
    logits    = decoded · Eᵀ                          (B, P, V)

init="lecture" is the lecture's initialisation: E ~ N(0, 1) (nn.Embedding's default) and
W ~ N(0, 1)/√d. Its starting logits are large, so the starting policy is nearly deterministic:
all G samples of a prompt coincide, centered deltas are all zero and learning never starts.
init="scaled" multiplies every weight by init_scale; E enters twice (input and output), so the
logits shrink by init_scale⁴ (init_scale⁵ with the hidden layer) and the start is near uniform.

symmetric_init starts every prompt position's encode matrix from the same random matrix. The
parameters stay position-specific and free to diverge, but the starting policy ignores prompt
order, as sorting does; on T1 (75 training prompts of 125) this lifts held-out exact match from
~0.81 to ~0.99 (bench/targets.py), because what is learnt for (4, 4, 1) then carries over to an
unseen (1, 4, 4).
"""

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from lmrl import files
from lmrl.policies.base import Rollout, entropy_from_logits

INITS = ("lecture", "scaled")


class ToySortPolicy(nn.Module):
    def __init__(self, V: int, n: int, P: int | None = None, dim: int = 10, hidden: int = 0,
                 init: str = "lecture", init_scale: float = 1.0,
                 symmetric_init: bool = False) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
        P = n if P is None else P
        self.V, self.n, self.P, self.hidden = V, n, P, hidden
        self.embedding = nn.Embedding(V, dim)
        encode = torch.randn(1 if symmetric_init else n, dim, dim) / math.sqrt(dim)
        self.encode = nn.Parameter(encode.expand(n, dim, dim).clone())
        width = hidden if hidden > 0 else dim
        if hidden > 0:
            self.hidden_layer = nn.Linear(dim, hidden)
            nn.init.normal_(self.hidden_layer.weight, std=1 / math.sqrt(dim))
            nn.init.zeros_(self.hidden_layer.bias)
        self.decode = nn.Parameter(torch.randn(P, width, dim) / math.sqrt(width))
        if init == "scaled":
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if not name.endswith("bias"):
                        p.mul_(init_scale)

    def logits(self, prompts: Tensor) -> Tensor:
        """(B, n) -> (B, P, V)."""
        encoded = torch.einsum("bpd,pde->be", self.embedding(prompts), self.encode)
        if self.hidden > 0:
            encoded = torch.relu(self.hidden_layer(encoded))
        decoded = torch.einsum("bh,khd->bkd", encoded, self.decode)
        return decoded @ self.embedding.weight.T

    def prepare(self, prompts: Tensor) -> Tensor:
        """The prompt tensor (B, n) is what the model conditions on."""
        return prompts

    @property
    def token_budget(self) -> int:
        return self.P

    def save_to(self, run_dir: Path, weights: dict[str, Tensor] | None = None) -> None:
        """run_dir/model.safetensors (weights: this policy's state dict; None: its own),
        atomically."""
        weights = self.state_dict() if weights is None else weights
        with files.atomic_file(Path(run_dir) / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in weights.items()}, tmp)

    def sample(self, prompts: Tensor, num_samples: int, generator: torch.Generator | None = None,
               temperature: float = 1.0, rows: slice | None = None) -> Rollout:
        """G independent responses per prompt; temperature 0 is greedy. -> (B, G, P).

        rows: sample only prompts[rows] (B' of them -> (B', G, P)), with the random draws that a
        call on all B prompts gives those rows. Data parallel (distributed.py) passes each
        rank's share, so the number of ranks changes no sample."""
        logits = self.logits(prompts if rows is None else prompts[rows])  # (B', P, V)
        B, P, V = logits.shape
        if temperature == 0.0:
            responses = logits.argmax(dim=-1).unsqueeze(1).expand(B, num_samples, P)
        else:
            probs = torch.softmax(logits.reshape(B * P, V) / temperature, dim=-1)
            if rows is not None:
                probs = _in_whole_batch(probs, rows, len(prompts) * P, P)
            draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
            if rows is not None:
                draws = draws[rows.start * P:rows.stop * P]
            responses = draws.reshape(B, P, num_samples).transpose(1, 2)
        return Rollout(responses.contiguous(), torch.ones(responses.shape))

    def logprobs(self, prompts: Tensor, responses: Tensor, response_mask: Tensor,
                 with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """log_softmax + gather. (B, n), (B, G, P) -> (B, G, P) [, entropy (B, G, P)]."""
        logits = self.logits(prompts)  # (B, P, V)
        logp_all = torch.log_softmax(logits, dim=-1)
        G = responses.shape[1]
        logp = logp_all.unsqueeze(1).expand(-1, G, -1, -1).gather(-1, responses.unsqueeze(-1))
        logp = logp.squeeze(-1) * response_mask
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits).unsqueeze(1).expand_as(logp)
        return logp, entropy


def _in_whole_batch(probs: Tensor, rows: slice, total: int, P: int) -> Tensor:
    """probs (B'·P, V) placed at rows' positions in a (B·P, V) table whose other rows are
    uniform: torch.multinomial's draws for a row depend on the table's shape and that row
    only, so sampling the table gives these rows the draws of the whole-batch call."""
    table = probs.new_full((total, probs.shape[1]), 1.0 / probs.shape[1])
    table[rows.start * P:rows.stop * P] = probs
    return table
