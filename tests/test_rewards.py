"""The length-penalised reward r = 1[correct] * (1 - alpha * sigmoid(z)) against hand-computed cases,
and the verifiers that decide ``correct``."""

import math
import random

import pytest
import torch

from workbench.organism import task
from workbench.rewards import length_penalised_reward
from workbench.verifiers import format_ok, get_verifier, grade_math, grade_organism, last_boxed


def close(t, expected, atol=1e-6):
    torch.testing.assert_close(t.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_z_uses_only_correct_responses_and_population_std():
    correct = torch.tensor([[True, True, False, True]])
    lengths = torch.tensor([[10, 20, 5, 30]])
    r = length_penalised_reward(correct, lengths, alpha=0.2)
    std = math.sqrt((100 + 0 + 100) / 3)  # ddof=0 over 10, 20, 30; the wrong 5 is ignored
    expected = [1 - 0.2 * sig(-10 / std), 0.9, 0.0, 1 - 0.2 * sig(10 / std)]
    assert r[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert r[0, 0] > r[0, 1] > r[0, 3]  # shorter correct answers earn more


def test_single_correct_gets_z_zero_and_all_wrong_gets_zero():
    correct = torch.tensor([[False, True, False], [False, False, False]])
    lengths = torch.tensor([[50, 7, 3], [1, 2, 3]])
    r = length_penalised_reward(correct, lengths, alpha=0.2)
    close(r, [[0.0, 0.9, 0.0], [0.0, 0.0, 0.0]])


def test_equal_lengths_give_z_zero_and_alpha_zero_gives_plain_accuracy():
    correct = torch.tensor([[True, True, False]])
    r = length_penalised_reward(correct, torch.tensor([[12, 12, 40]]), alpha=0.4)
    close(r, [[0.8, 0.8, 0.0]])
    r0 = length_penalised_reward(correct, torch.tensor([[3, 90, 40]]), alpha=0.0)
    assert r0.tolist() == [[1.0, 1.0, 0.0]]


def test_groups_are_independent():
    correct = torch.tensor([[True, True], [True, True]])
    r = length_penalised_reward(correct, torch.tensor([[10, 30], [1000, 3000]]), alpha=0.2)
    assert r[0].tolist() == pytest.approx(r[1].tolist())
    assert r[0].tolist() == pytest.approx([1 - 0.2 * sig(-1), 1 - 0.2 * sig(1)], abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must both be"):
        length_penalised_reward(torch.tensor([True, False]), torch.tensor([1, 2]), 0.2)


# --- verifiers: AttnPO's format rules + the graders ----------------------------------------------

def test_format_rules():
    assert format_ok("reasoning </think> answer")
    assert not format_ok("no close at all")  # truncated inside the think block
    assert not format_ok("a </think> b </think> c")
    assert not format_ok("<think> again </think> x")


def test_last_boxed_handles_nesting_and_takes_the_last():
    assert last_boxed(r"\boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{ 7 }") == "7"
    assert last_boxed(r"no box") is None and last_boxed(r"\boxed{unclosed") is None


def test_math_grader_uses_math_verify_after_think():
    assert grade_math("", r"so 0.5 </think> The answer is \boxed{\frac{1}{2}}", "0.5")
    assert grade_math("", r"</think> \boxed{12}", "12")
    assert not grade_math("", r"</think> \boxed{13}", "12")
    assert not grade_math("", r"\boxed{12} but never closed", "12")
    assert not grade_math("", r"\boxed{12} </think> no box after the think block", "12")
    with pytest.raises(ValueError, match="reference answer"):
        grade_math("", "</think> \\boxed{1}", None)


def test_organism_grader_rebuilds_the_problem_from_the_prompt():
    trace = task.sample_trace(random.Random(4))
    assert grade_organism(trace.prompt, trace.response)
    answer = trace.problem.answer
    wrong = trace.response.replace(f"\\boxed{{ {answer} }}", f"\\boxed{{ {(answer + 1) % 10} }}")
    assert not grade_organism(trace.prompt, wrong)
    with pytest.raises(ValueError, match="not an organism"):
        grade_organism("What is 2 + 2?", trace.response)
    with pytest.raises(KeyError, match="unknown verifier 'exact'"):
        get_verifier("exact")
