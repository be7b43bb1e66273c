"""The Bradley-Terry loss and the pairwise metrics of a reward model: pure tensor functions.

Under the Bradley-Terry model, P(chosen ≻ rejected) = sigmoid(r_chosen - r_rejected), so the
per-pair loss is its negative log-likelihood. TRL's RewardTrainer (1.16, `compute_loss`) adds an
optional per-pair margin m, subtracted inside the sigmoid:

    loss = -log sigmoid(r_chosen - r_rejected - m)

so a positive m asks the chosen reward to beat the rejected one by at least about m (the loss
at gap = m is log 2 ≈ 0.693, as at gap 0 without a margin). Same names and sign as TRL.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, margin: Tensor | None = None
                       ) -> Tensor:
    """Per-pair loss -log sigmoid(r_chosen - r_rejected - margin). (P,) x 2 [+ (P,)] -> (P,).

    Example: r_chosen 2, r_rejected 0: -log sigmoid(2) = 0.1269; with margin 2: log 2 = 0.6931.
    logsigmoid keeps it finite for any gap (softplus(-gap) underneath).
    """
    gap = r_chosen - r_rejected
    if margin is not None:
        gap = gap - margin
    return -F.logsigmoid(gap)


def mean_loss(per_pair: Tensor) -> Tensor:
    """The batch's loss: the mean over its pairs (TRL's reduction). (P,) -> ()."""
    return per_pair.mean()


@torch.no_grad()
def pair_metrics(r_chosen: Tensor, r_rejected: Tensor) -> dict[str, float]:
    """accuracy: the fraction of pairs with r_chosen > r_rejected (strictly: a tie is a miss,
    as in TRL); gap_mean: the mean of r_chosen - r_rejected. (P,) x 2 -> floats.

    Example: chosen [1, 0, 2], rejected [0, 0, 3] -> accuracy 1/3, gap_mean 0.
    """
    gap = (r_chosen - r_rejected).float()
    return {"accuracy": float((gap > 0).float().mean()), "gap_mean": float(gap.mean())}
