"""Advantage rules of AttnPO and its baselines against hand-computed cases (attnpo-method.md §6-7)."""

import pytest
import torch

from workbench import advantages as adv
from workbench.advantages import AttnPOParams, StepBatch


def close(t, expected, atol=1e-6):
    torch.testing.assert_close(t.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def batch(scores, a, p, step=2000, answer_len=10, total_len=100, mask=None) -> StepBatch:
    """One response per row; S_base = p^2 * answer_len / total_len with the default beta = 2."""
    s = torch.tensor(scores, dtype=torch.float64)
    n = s.shape[0]
    return StepBatch(
        advantages=torch.tensor(a, dtype=torch.float32),
        pass_rate=torch.tensor(p, dtype=torch.float32),
        scores=s,
        step_mask=torch.ones_like(s, dtype=torch.bool) if mask is None else torch.tensor(mask),
        answer_len=torch.full((n,), answer_len),
        total_len=torch.full((n,), total_len),
        step=step,
    )


P = AttnPOParams()  # beta = lam = 2, delta = 0, T = 1000


def test_rloo_leave_one_out_without_std_normalisation():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.9, 0.5, 0.0]])
    a = adv.rloo_advantage(r)
    assert a[0].tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    assert a[1].tolist() == pytest.approx([0.9 - 1.4 / 3, 0.9 - 1.4 / 3, 0.5 - 1.8 / 3, 0.0 - 2.3 / 3])
    close(adv.rloo_advantage(torch.tensor([[0.7], [0.0]])), [[0.7], [0.0]])


def test_pass_rate_is_binary_accuracy_of_the_group():
    correct = torch.tensor([[True, False, True, True], [False] * 4])
    assert adv.pass_rate(correct).tolist() == [[0.75] * 4, [0.0] * 4]


def test_baseline_is_difficulty_scaled_uniform_attention():
    base = adv.step_baseline(torch.tensor([1.0, 0.5]), torch.tensor([10, 10]), torch.tensor([100, 100]), beta=2)
    assert base.tolist() == pytest.approx([0.1, 0.025])


def test_pos_adv_p1_worked_example():
    # p = 1: S_base = 10/100 = 0.1; S/S_base = 0.3 -> gamma = 0.3; a step above the baseline keeps 1
    g = adv.step_gammas(batch([[0.03, 0.2]], [0.5], [1.0], step=1), P, pos=True, neg=True)
    assert g.gamma[0].tolist() == pytest.approx([0.3, 1.0])
    assert g.attenuated[0].tolist() == [True, False]
    assert not g.protected.any()


def test_pos_adv_p_half_worked_example_and_delay():
    # p = 0.5: S_base = 0.25 * 0.1 = 0.025; S/S_base = 0.3 -> gamma = 0.25 * 0.3 + 0.75 = 0.825
    b = batch([[0.0075, 0.05]], [0.2], [0.5], step=501)
    assert adv.step_gammas(b, P).gamma[0].tolist() == pytest.approx([0.825, 1.0])
    # T * (1 - p) = 500 is not < t = 500: the delay is not over yet, nothing is attenuated
    b.step = 500
    g = adv.step_gammas(b, P)
    assert g.gamma[0].tolist() == [1.0, 1.0] and not g.attenuated.any()
    # a shorter horizon ends the delay earlier
    assert adv.step_gammas(b, AttnPOParams(horizon=999)).gamma[0].tolist() == pytest.approx([0.825, 1.0])


def test_delta_floors_the_pos_adv_factor():
    # gamma = (1 - delta) * (p^lam * S/S_base + 1 - p^lam) + delta = 0.5 * 0.3 + 0.5
    g = adv.step_gammas(batch([[0.03]], [1.0], [1.0], step=1), AttnPOParams(delta=0.5))
    assert g.gamma.item() == pytest.approx(0.65)
    g0 = adv.step_gammas(batch([[0.0]], [1.0], [1.0], step=1), AttnPOParams(delta=0.2))
    assert g0.gamma.item() == pytest.approx(0.2)  # a step with no attention still keeps delta


def test_neg_adv_zeroes_steps_above_the_baseline_without_delay():
    # A < 0, p = 0.5 at step 1 (the Pos-Adv delay would still be running): S_base = 0.025
    g = adv.step_gammas(batch([[0.01, 0.03, 0.025]], [-0.3], [0.5], step=1), P)
    assert g.gamma[0].tolist() == [1.0, 0.0, 1.0]  # strictly above the baseline only
    assert g.protected[0].tolist() == [False, True, False]
    assert not g.attenuated.any()


def test_positive_advantage_never_protects_and_negative_never_attenuates():
    g = adv.step_gammas(batch([[0.01, 0.5], [0.01, 0.5]], [0.4, -0.4], [1.0, 1.0], step=1), P)
    close(g.gamma, [[0.1, 1.0], [1.0, 0.0]])
    z = adv.step_gammas(batch([[0.01, 0.5]], [0.0], [1.0], step=1), P)
    assert z.gamma.tolist() == [[1.0, 1.0]]  # A = 0: no rule applies


def test_masked_steps_and_padding_keep_gamma_one():
    b = batch([[0.01, 0.01], [0.01, 0.5]], [0.4, -0.4], [1.0, 1.0], step=1, mask=[[True, False], [False, False]])
    g = adv.step_gammas(b, P)
    close(g.gamma, [[0.1, 1.0], [1.0, 1.0]])


def test_nan_score_is_an_error_naming_the_step():
    with pytest.raises(ValueError, match="response 0, step 1"):
        adv.step_gammas(batch([[0.01, float("nan")]], [0.4], [1.0]), P)


def test_registered_methods_switch_the_rules():
    b = batch([[0.01, 0.5], [0.01, 0.5]], [0.4, -0.4], [1.0, 1.0], step=1)
    gam = {name: adv.get_method(name).rescale(b, P).gamma for name in adv.METHODS}
    close(gam["attnpo"], [[0.1, 1.0], [1.0, 0.0]])
    close(gam["attnpo_pos"], [[0.1, 1.0], [1.0, 1.0]])
    close(gam["attnpo_neg"], [[1.0, 1.0], [1.0, 0.0]])
    assert gam["rloo"].tolist() == gam["tlmre"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert not adv.get_method("rloo").length_penalty and adv.get_method("tlmre").length_penalty
    assert adv.get_method("attnpo").scores == "kfh" and adv.get_method("oracle").scores == "oracle"
    assert adv.get_method("tlmre").scores is None


def test_oracle_attenuates_redundant_and_protects_critical_steps():
    s = adv.oracle_scores(["plan", "critical", "redundant", "critical", "redundant"])
    b = batch([s.tolist(), s.tolist()], [0.5, -0.5], [1.0, 1.0], step=1)
    g = adv.get_method("oracle").rescale(b, P)
    assert g.gamma[0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]  # p = 1: redundant steps lose all credit
    assert g.gamma[1].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]  # needed steps shielded from the penalty
    half = adv.get_method("oracle").rescale(batch([s.tolist()], [0.5], [0.5], step=1000), P)
    assert half.gamma[0].tolist() == [1.0, 1.0, 0.75, 1.0, 0.75]  # p = 0.5: 1 - p^2


def test_token_advantages_scale_step_tokens_only():
    # response of 9 tokens: steps [0,3) and [3,6), </think> at 6, F = [7, 9)
    index = adv.step_index([[(0, 3), (3, 6)], []], width=9)
    assert index[0].tolist() == [0, 0, 0, 1, 1, 1, -1, -1, -1] and (index[1] == -1).all()
    gammas = torch.tensor([[0.5, 0.0], [1.0, 1.0]])
    t = adv.token_advantages(torch.tensor([2.0, -1.0]), gammas, index)
    assert t[0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    assert t[1].tolist() == [-1.0] * 9
    none = adv.token_advantages(torch.tensor([0.3]), torch.zeros((1, 0)), adv.step_index([[]], 4))
    close(none, [[0.3] * 4])


def test_step_index_rejects_spans_outside_the_response():
    with pytest.raises(ValueError, match="response 1: step 0"):
        adv.step_index([[(0, 2)], [(3, 12)]], width=10)


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(KeyError, match="unknown advantage method 'grpo'.*attnpo"):
        adv.get_method("grpo")
    with pytest.raises(ValueError, match="registered twice"):
        adv.register_method("attnpo", length_penalty=True, scores="kfh")(lambda b, p: None)
