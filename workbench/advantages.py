"""Building blocks of the advantage maths of AttnPO and its baselines: pure functions over tensors
(attnpo-method.md §6-7).  The registered methods of ``workbench.methods`` assemble them:

1. ``rloo_advantage(rewards)``: leave-one-out baseline per prompt group, no std normalisation.
2. ``step_baseline``: the difficulty-aware baseline ``S_base = p^beta * |F| / (|q| + |o|)``, the
   score a step would get under uniform attention, scaled down on hard prompts.
3. ``step_gammas`` turns per-step scores into per-step factors gamma:
   Pos-Adv attenuation (A > 0, S < S_base, after the delay ``T * (1 - p) < t``):
   ``gamma = (1 - delta) * [p^lam * S / S_base + 1 - p^lam] + delta``;
   Neg-Adv attenuation (A < 0, S > S_base): ``gamma = 0``; otherwise ``gamma = 1``.
4. ``token_advantages``: step k's tokens get ``gamma_k * A``; ``</think>``, F and every response
   that was not rescaled keep ``A``.

Code reading over paper where they differ (attnpo-method.md §10): the gamma formula, the delay
condition and the ``|q| + |o|`` denominator all follow the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch


@dataclass(frozen=True)
class MethodParams:
    """Hyper-parameters of the reward and the rescaling (paper names; code names in brackets)."""

    alpha: float = 0.2  # length-penalty coefficient [traineff_coff]; methods without the penalty ignore it
    beta: float = 2.0  # baseline exponent [length_penalty.alpha]
    lam: float = 2.0  # gamma exponent [length_penalty.beta]
    delta: float = 0.0  # gamma floor [boardline]
    horizon: int = 1000  # delay horizon T (global steps)


@dataclass
class StepBatch:
    """Inputs of the stepwise rescaling for N responses padded to K steps.

    ``step_mask`` is False on padding and on every step of a response that must not be
    rescaled (incorrect, or segmentation failed / fewer than two steps).
    """

    advantages: torch.Tensor  # [N] RLOO advantage of each response
    pass_rate: torch.Tensor  # [N] p of the response's prompt group
    scores: torch.Tensor  # [N, K] step score (mean over KFHs), anything on padding
    step_mask: torch.Tensor  # [N, K] bool
    answer_len: torch.Tensor  # [N] |F|: response tokens after </think> (incl. EOS)
    total_len: torch.Tensor  # [N] |q| + |o|: prompt + response tokens
    step: int  # global training step t, 1-indexed


@dataclass
class StepGammas:
    gamma: torch.Tensor  # [N, K] factor on the advantage of each step's tokens (1 on padding)
    attenuated: torch.Tensor  # [N, K] bool: Pos-Adv shrank a positive advantage (step judged unimportant)
    protected: torch.Tensor  # [N, K] bool: Neg-Adv removed a negative advantage (step judged important)


def pass_rate(correct: torch.Tensor) -> torch.Tensor:
    """p of each response ``[P, G]``: the share of its group that is correct (binary, before penalties)."""
    return correct.float().mean(-1, keepdim=True).expand(correct.shape)


def rloo_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """``A_i = r_i - mean_{j != i} r_j`` per group ``[P, G]``; a group of one keeps ``A = r``."""
    g = rewards.shape[-1]
    if g == 1:
        return rewards.clone()
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (g - 1)


def step_baseline(pass_rate: torch.Tensor, answer_len: torch.Tensor, total_len: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """``S_base = p^beta * |F| / (|q| + |o|)``: uniform attention's step score, lowered on hard prompts."""
    return pass_rate.double() ** beta * answer_len.double() / total_len.double()


def step_gammas(batch: StepBatch, params: MethodParams, pos: bool = True, neg: bool = True) -> StepGammas:
    """Per-step factors gamma from the Pos-Adv and/or Neg-Adv rules (code semantics, §7)."""
    p = batch.pass_rate.double()[:, None]
    adv = batch.advantages.double()[:, None]
    s_base = step_baseline(batch.pass_rate, batch.answer_len, batch.total_len, params.beta)[:, None]
    s = batch.scores.double()
    valid = batch.step_mask.bool()
    bad = (valid & torch.isnan(s)).nonzero()
    if len(bad):
        raise ValueError(f"step score of response {int(bad[0, 0])}, step {int(bad[0, 1])} is NaN")
    delay_over = params.horizon * (1.0 - p) < batch.step
    attenuated = valid & (adv > 0) & (s < s_base) & delay_over if pos else torch.zeros_like(valid)
    protected = valid & (adv < 0) & (s > s_base) if neg else torch.zeros_like(valid)
    p_lam = p ** params.lam
    ratio = torch.where(attenuated, s / s_base, torch.zeros_like(s))  # only read where attenuated
    pos_gamma = (1 - params.delta) * (p_lam * ratio + 1 - p_lam) + params.delta
    gamma = torch.ones_like(s)
    gamma = torch.where(attenuated, pos_gamma, gamma)
    gamma = torch.where(protected, torch.zeros_like(gamma), gamma)
    return StepGammas(gamma.float(), attenuated, protected)


def oracle_scores(labels: list[str]) -> torch.Tensor:
    """Step scores from true labels: redundant steps 0 (always below the baseline), critical and
    plan steps +inf (always above it: never attenuated, shielded from a negative advantage)."""
    return torch.tensor([0.0 if label == "redundant" else float("inf") for label in labels], dtype=torch.float64)


def step_index(steps: list[list[tuple[int, int]]], width: int) -> torch.Tensor:
    """``[N, width]`` long: the step each response token belongs to, -1 outside every step.

    ``steps[i]`` are the token spans of response i relative to the response start.
    """
    index = torch.full((len(steps), width), -1, dtype=torch.long)
    for i, spans in enumerate(steps):
        for k, (a, b) in enumerate(spans):
            if not 0 <= a <= b <= width:
                raise ValueError(f"response {i}: step {k} span {(a, b)} is outside the {width} response tokens")
            index[i, a:b] = k
    return index


def token_advantages(advantages: torch.Tensor, gammas: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` token advantages: ``gamma_k * A`` on step k's tokens, ``A`` everywhere else."""
    if gammas.shape[1] == 0:
        return advantages[:, None].float().expand(index.shape).clone()
    g = gammas.gather(1, index.clamp(min=0))
    g = torch.where(index >= 0, g, torch.ones_like(g))
    return advantages[:, None].float() * g
