"""Advantage rules of AttnPO and its baselines against hand-computed cases (attnpo-method.md §6-7), and the
method seam (``workbench.methods``) that dispatches on them."""

import pytest
import torch

from workbench import advantages as adv
from workbench import methods
from workbench.advantages import MethodParams, StepBatch
from workbench.rewards import length_penalised_reward


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


P = MethodParams()  # beta = lam = 2, delta = 0, T = 1000


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
    assert adv.step_gammas(b, MethodParams(horizon=999)).gamma[0].tolist() == pytest.approx([0.825, 1.0])


def test_delta_floors_the_pos_adv_factor():
    # gamma = (1 - delta) * (p^lam * S/S_base + 1 - p^lam) + delta = 0.5 * 0.3 + 0.5
    g = adv.step_gammas(batch([[0.03]], [1.0], [1.0], step=1), MethodParams(delta=0.5))
    assert g.gamma.item() == pytest.approx(0.65)
    g0 = adv.step_gammas(batch([[0.0]], [1.0], [1.0], step=1), MethodParams(delta=0.2))
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


def run_method(name, scores, rewards, correct, step=1):
    """``name``'s output on responses of 8 tokens: steps [0, 3) and [3, 6), then </think> and F."""
    s = torch.tensor(scores, dtype=torch.float64)
    n = s.shape[0]
    inputs = methods.AdvantageInputs(
        rewards=torch.tensor(rewards), correct=torch.tensor(correct), lengths=torch.full((1, n), 8),
        steps=[[(0, 3), (3, 6)]] * n, scores=s, step_mask=torch.ones_like(s, dtype=torch.bool),
        answer_len=torch.full((n,), 10.0), total_len=torch.full((n,), 100), step=step, width=8)
    return methods.get_method(name).fn(inputs, P)


def test_registered_methods_switch_the_rules():
    # rewards [0.4, 0] in one group of two correct responses: RLOO A = [0.4, -0.4], p = 1, S_base = 0.1
    out = {name: run_method(name, [[0.01, 0.5], [0.01, 0.5]], [[0.4, 0.0]], [[True, True]])
           for name in ("rloo", "tlmre", "attnpo", "attnpo_pos", "attnpo_neg")}
    gam = {name: o.tokens[:, [0, 3]] / torch.tensor([[0.4], [-0.4]]) for name, o in out.items()}
    close(gam["attnpo"], [[0.1, 1.0], [1.0, 0.0]])
    close(gam["attnpo_pos"], [[0.1, 1.0], [1.0, 1.0]])
    close(gam["attnpo_neg"], [[1.0, 1.0], [1.0, 0.0]])
    close(gam["rloo"], [[1.0, 1.0], [1.0, 1.0]])
    assert torch.equal(out["rloo"].tokens, out["tlmre"].tokens) and out["rloo"].attenuated is None
    close(out["attnpo"].tokens[0], [0.04] * 3 + [0.4] * 5)  # </think> and F keep A
    assert out["attnpo"].attenuated.tolist() == [[True, False], [False, False]]
    assert out["attnpo"].protected.tolist() == [[False, False], [False, True]]
    assert not methods.get_method("rloo").length_penalty and methods.get_method("tlmre").length_penalty
    assert methods.get_method("attnpo").scores == "kfh" and methods.get_method("oracle").scores == "oracle"
    assert methods.get_method("tlmre").scores is None


def test_oracle_attenuates_redundant_and_protects_critical_steps():
    s = adv.oracle_scores(["plan", "critical", "redundant", "critical", "redundant"])
    b = batch([s.tolist(), s.tolist()], [0.5, -0.5], [1.0, 1.0], step=1)
    g = adv.step_gammas(b, P)
    assert g.gamma[0].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]  # p = 1: redundant steps lose all credit
    assert g.gamma[1].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]  # needed steps shielded from the penalty
    half = adv.step_gammas(batch([s.tolist()], [0.5], [0.5], step=1000), P)
    assert half.gamma[0].tolist() == [1.0, 1.0, 0.75, 1.0, 0.75]  # p = 0.5: 1 - p^2
    o = run_method("oracle", [[0.0, float("inf")]], [[1.0, 0.0]], [[True, True]])  # A = [1, -1]
    assert o.tokens[0, :6].tolist() == [0.0] * 3 + [1.0] * 3


def test_compute_advantages_runs_reward_method_and_checks():
    correct = torch.tensor([[True, True, True, True]])  # response 2: correct but not segmented (no steps)
    lengths = torch.tensor([[6, 10, 7, 8]])
    steps = [[(0, 2), (2, 4)], [(0, 5), (5, 8)], [], [(0, 3), (3, 6)]]
    scores = [torch.tensor([0.001, 0.5]), torch.tensor([0.001, 0.5]), None, torch.tensor([0.5, 0.5])]
    args = (correct, lengths, steps, scores, torch.full((4,), 2.0), lengths.reshape(-1) + 20, 5000, P)
    out = methods.compute_advantages("attnpo", *args)
    rewards = length_penalised_reward(correct, lengths, 0.2)
    close(out.rewards, rewards.tolist())
    a = adv.rloo_advantage(rewards).reshape(-1)
    assert out.tokens.shape == (4, 10) and out.step_mask.tolist() == [[True] * 2, [True] * 2, [False] * 2, [True] * 2]
    assert a[0] > 0 > a[1] and a[3] < 0  # the shortest correct response gains, the longer ones lose
    close(out.tokens[2], [float(a[2])] * 10)  # not rescaled: uniform
    assert out.attenuated.tolist() == [[True, False], [False, False], [False, False], [False, False]]
    assert out.protected.tolist() == [[False, False], [False, True], [False, False], [True, True]]
    close(out.tokens[0, :4], [0.001 / (2 / 26) * float(a[0])] * 2 + [float(a[0])] * 2, atol=1e-6)
    close(out.tokens[1, :8], [float(a[1])] * 5 + [0.0] * 3)
    plain = methods.compute_advantages("rloo", *args)  # rloo ignores the scores and the length penalty
    close(plain.tokens[:, 0], [0.0] * 4)  # all correct: the 0/1 reward leaves nothing to prefer
    assert not plain.attenuated.any() and not plain.protected.any()
    with pytest.raises(ValueError, match="response 1: 2 steps but 1 step scores"):
        methods.compute_advantages("attnpo", correct, lengths, steps, [scores[0], scores[0][:1], None, scores[3]],
                                   *args[4:])
    with pytest.raises(ValueError, match="response 0: 2 steps but no step scores"):
        methods.compute_advantages("oracle", correct, lengths, steps, None, *args[4:])


def test_grpo_is_one_registered_module_with_std_normalisation():
    out = methods.compute_advantages("grpo", torch.tensor([[True, True, False, False], [True, False, False, False]]),
                                     torch.tensor([[5, 9, 6, 7], [4, 4, 4, 4]]), [[]] * 8, None,
                                     torch.zeros(8), torch.full((8,), 20), 1, P)
    # group 1: mean 0.5, unbiased std sqrt(1/3); group 2: mean 0.25, std 0.5; 0/1 reward, no length penalty
    close(out.tokens[:, 0], [0.5 / 3 ** -0.5] * 2 + [-0.5 / 3 ** -0.5] * 2 + [1.5, -0.5, -0.5, -0.5], atol=1e-5)
    assert out.tokens.shape == (8, 9) and (out.tokens == out.tokens[:, :1]).all()
    single = methods.compute_advantages("grpo", torch.tensor([[True]]), torch.tensor([[3]]), [[]], None,
                                        torch.zeros(1), torch.full((1,), 9), 1, P)
    close(single.tokens, [[1.0] * 3])


def test_a_new_method_is_one_registration():
    @methods.register_method("test_sign", length_penalty=False, scores=None)
    def sign(inputs, params):
        return methods.MethodOutput(inputs.broadcast(inputs.rewards * 2 - 1))

    try:
        out = methods.compute_advantages("test_sign", torch.tensor([[True, False]]), torch.tensor([[2, 3]]), [[], []],
                                         None, torch.zeros(2), torch.full((2,), 5), 1, P)
        close(out.tokens, [[1.0] * 3, [-1.0] * 3])
        from workbench.config import load_config

        assert load_config(None, ["method.name=test_sign"]).method.name == "test_sign"
    finally:
        del methods.METHODS["test_sign"]


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
    with pytest.raises(KeyError, match="unknown advantage method 'ppo_magic'.*attnpo"):
        methods.get_method("ppo_magic")
    with pytest.raises(ValueError, match="registered twice"):
        methods.register_method("attnpo", length_penalty=True, scores="kfh")(lambda b, p: None)
    with pytest.raises(ValueError, match="scores must be None, 'kfh' or 'oracle'"):
        methods.register_method("x", length_penalty=True, scores="labels")
