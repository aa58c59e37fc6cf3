"""The length-penalised outcome reward of TLMRE / AttnPO (attnpo-method.md §6).

``r_i = 1[correct_i] * (1 - alpha * sigmoid(z_i))`` where ``z_i`` standardises the response
length over the *correct* responses of the same prompt group (population std, ``+1e-8``), so
a correct answer shorter than its correct siblings earns more, and a lone correct answer
(z = 0) earns ``1 - alpha / 2``.  ``alpha = 0`` gives the plain 0/1 reward.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def length_penalised_reward(correct: torch.Tensor, lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """Rewards ``[P, G]`` from correctness ``[P, G]`` (bool) and response lengths ``[P, G]``.

    Lengths count the valid response tokens including EOS.  Rows are prompt groups.
    """
    if correct.shape != lengths.shape or correct.dim() != 2:
        raise ValueError(f"correct {tuple(correct.shape)} and lengths {tuple(lengths.shape)} must both be [P, G]")
    c = correct.bool()
    n = c.sum(-1, keepdim=True).clamp(min=1).double()
    length = lengths.double()
    mean = (length * c).sum(-1, keepdim=True) / n
    std = (((length - mean) ** 2) * c).sum(-1, keepdim=True).div(n).sqrt()
    z = (length - mean) / (std + EPS)
    reward = 1.0 - alpha * torch.sigmoid(z)
    return torch.where(c, reward, torch.zeros_like(reward)).float()
