"""AttnPO and its ablations: the RLOO advantage of the length-penalised reward, rescaled step by
step (attnpo-method.md §7) from KFH step scores -- or, for ``oracle``, from the task's true step
labels (``advantages.oracle_scores``) in their place."""

from __future__ import annotations

from functools import partial

from workbench.advantages import MethodParams, StepBatch, pass_rate, rloo_advantage, step_gammas, token_advantages
from workbench.methods import AdvantageInputs, MethodOutput, register_method


def rescaled_rloo(inputs: AdvantageInputs, params: MethodParams, pos: bool = True, neg: bool = True) -> MethodOutput:
    """Pos-Adv and/or Neg-Adv attenuation of each rescaled response's steps."""
    adv = rloo_advantage(inputs.rewards).reshape(-1)
    batch = StepBatch(adv, pass_rate(inputs.correct).reshape(-1), inputs.scores, inputs.step_mask,
                      inputs.answer_len, inputs.total_len, inputs.step)
    g = step_gammas(batch, params, pos=pos, neg=neg)
    return MethodOutput(token_advantages(adv, g.gamma, inputs.step_index), g.attenuated, g.protected)


register_method("attnpo", length_penalty=True, scores="kfh")(rescaled_rloo)
register_method("attnpo_pos", length_penalty=True, scores="kfh")(partial(rescaled_rloo, neg=False))
register_method("attnpo_neg", length_penalty=True, scores="kfh")(partial(rescaled_rloo, pos=False))
register_method("oracle", length_penalty=True, scores="oracle")(rescaled_rloo)
