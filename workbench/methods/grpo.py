"""GRPO's outcome advantage on the 0/1 reward: reward minus the group mean, over the group's std
(unbiased, ``+1e-6``, as TRL and verl compute it); a group of one keeps its reward."""

from __future__ import annotations

from workbench.advantages import MethodParams
from workbench.methods import AdvantageInputs, MethodOutput, register_method

EPS = 1e-6


@register_method("grpo", length_penalty=False, scores=None)
def grpo(inputs: AdvantageInputs, params: MethodParams) -> MethodOutput:
    r = inputs.rewards
    if r.shape[-1] == 1:
        return MethodOutput(inputs.broadcast(r))
    return MethodOutput(inputs.broadcast((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + EPS)))
