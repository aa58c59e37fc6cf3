"""The outcome-level baselines of the paper: RLOO on the 0/1 reward (``rloo``) and on the
length-penalised reward (``tlmre``); every token of a response gets its response's advantage."""

from __future__ import annotations

from workbench.advantages import MethodParams, rloo_advantage
from workbench.methods import AdvantageInputs, MethodOutput, register_method


def rloo(inputs: AdvantageInputs, params: MethodParams) -> MethodOutput:
    """Leave-one-out advantage per prompt group, broadcast to the response's tokens."""
    return MethodOutput(inputs.broadcast(rloo_advantage(inputs.rewards)))


register_method("rloo", length_penalty=False, scores=None)(rloo)
register_method("tlmre", length_penalty=True, scores=None)(rloo)
