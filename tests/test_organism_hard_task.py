"""The second organism's task: a fallible reasoner's traces, their labels, and the organism registry."""

import random

import pytest

from workbench.organism import ORGANISMS, get_organism, hard_task, organism_of, task
from workbench.organism.task import apply_op
from workbench.organism.tokenizer import build_tokenizer

from test_organism_task import pairwise_accuracy


def traces(n=400, seed=0, params=hard_task.PARAMS):
    rng = random.Random(seed)
    return [hard_task.sample_trace(rng, params=params) for _ in range(n)]


def test_labels_from_text_match_the_generator():
    for t in traces(1000):
        got = hard_task.label_response(t.problem, [s.text.strip() for s in t.steps])
        assert got == [(s.label, s.kind) for s in t.steps]


def test_every_mechanism_occurs_with_its_own_label_kind():
    kinds = {(s.label, s.kind) for t in traces(1000) for s in t.steps}
    assert {("critical", "correction"), ("critical", "shortcut"), ("redundant", "slip"),
            ("redundant", "recheck"), ("critical", "compute")} <= kinds
    assert all(label in hard_task.LABELS for label, _ in kinds)
    assert {k for label, k in kinds if label == "critical"} == set(hard_task.CRITICAL_KINDS)
    assert {k for label, k in kinds if label == "redundant"} == set(hard_task.REDUNDANT_KINDS)


def restated(t) -> dict[str, int]:
    """The value the answer F gives each chain variable."""
    words = t.response.split("</think>")[1].split()
    return {words[i - 1]: int(w[1:]) for i, w in enumerate(words) if w.startswith("=")}


def test_a_slip_is_corrected_at_once_or_carried_into_the_answer():
    noticed = unnoticed = 0
    for t in traces(1000):
        steps, answer, p = t.steps, restated(t), t.problem
        for i, s in enumerate(steps):
            if s.kind == "slip":  # noticed: the correction comes next and the answer takes its value
                nxt = steps[i + 1]
                assert nxt.kind == "correction" and nxt.variable == s.variable
                assert answer[s.variable] == int(nxt.words[-2][1:]) != int(s.words[-2][1:])
                noticed += 1
            elif s.kind == "compute":
                d = p.by_name[s.variable]
                x, y = int(s.arithmetic[0]), int(s.arithmetic[-1])
                if y != apply_op(x, d.op, d.constant):  # unnoticed: the answer goes on from the wrong value
                    assert answer[s.variable] == y
                    unnoticed += 1
    assert noticed > 0 and unnoticed > 0, (noticed, unnoticed)


def test_critical_steps_are_what_the_answer_restates():
    """One critical step per chain variable (a shortcut covers two): the computation that wrote
    the value the answer restates, right or wrong, and nothing computes it again afterwards."""
    for t in traces(1000):
        chain, answer = t.problem.chain()[:-1], restated(t)
        critical = [s for s in t.steps if s.label == "critical"]
        assert len(critical) + sum(s.kind == "shortcut" for s in critical) == len(chain)
        for s in critical:
            assert answer[s.variable] == int(s.words[-2][1:])
            assert not [x for x in t.steps[t.steps.index(s) + 1:] if x.arithmetic and x.variable == s.variable
                        and x.kind != "recheck"]


def test_labels_of_a_sampled_response():
    p = hard_task.parse_prompt("c =4 ; a =c+3 ; e =9 ; b =a*2 ; d =e-5 ; What is b ? <think>")
    steps = ["Need b a c .",
             "Now a =c+3 , c =4 , a =4 .",  # a slip ...
             "Wait , no , a =c+3 , c =4 , a =7 .",  # ... and its correction
             "Then d =e-5 , e =9 , d =4 .",
             "Next b =a*2 , a =7 , b =4 .",
             "Wait , no , b =a*2 , a =7 , b =4 . =4",  # corrects nothing: a confirming repeat (a stray word after '.')
             "Let me verify 7 *2 = 4 .",
             "So c =4 from the problem .",
             "Hmm"]
    assert hard_task.label_response(p, steps) == [
        ("plan", "plan"), ("redundant", "slip"), ("critical", "correction"), ("redundant", "distractor"),
        ("critical", "compute"), ("redundant", "repeat"), ("redundant", "recheck"), ("redundant", "restate"),
        ("redundant", "other")]
    # the value in force is first written by the second computation: a slip back and forth, then a repeat
    b_writes = ["Now b =a*2 , a =7 , b =4 .", "Wait , no , b =a*2 , a =7 , b =5 .", "Wait , no , b =a*2 , a =7 , b =4 .",
                "Wait , no , b =a*2 , a =7 , b =4 ."]
    assert hard_task.label_response(p, steps[:3] + b_writes)[3:] == [
        ("redundant", "slip"), ("redundant", "slip"), ("critical", "correction"), ("redundant", "repeat")]
    unnoticed = hard_task.label_response(p, steps[:2] + ["Next b =a*2 , a =4 , b =8 ."])
    assert unnoticed[1:] == [("critical", "compute"), ("critical", "compute")]  # wrong, but what the answer uses


def test_the_reasoner_is_fallible_at_its_stated_rates():
    ts = traces(3000)
    accuracy = sum(hard_task.verify(t.problem, t.response) for t in ts) / len(ts)
    assert 0.65 < accuracy < 0.8  # ~(1 - slip * (1 - notice))^depth, less failed shortcuts
    perfect = hard_task.TaskParams(slip=0.0, shortcut_fail=0.0)
    assert all(hard_task.verify(t.problem, t.response) for t in traces(300, params=perfect))
    redundant = sum(len(s.words) for t in ts for s in t.steps if s.label == "redundant")
    assert redundant / sum(len(t.response.split()) for t in ts) > 0.4


def test_corrections_and_confirming_rechecks_share_their_opener():
    """"Check or go on" is one decision whether or not a check is needed: a correction and half
    the confirming re-checks open with ``Wait ,`` right after a computation."""
    after = {"correction": 0, "recheck": 0}
    for t in traces(1000):
        for prev, s in zip(t.steps, t.steps[1:]):
            if prev.arithmetic and s.words[:2] == ["\nWait", ","] and s.kind in after:
                after[s.kind] += 1
    assert after["correction"] > 100 and after["recheck"] > 100


def test_step_length_and_position_do_not_give_the_labels_away():
    ts = traces(1000)
    assert 0.4 < pairwise_accuracy(lambda i, s: len(s.words), ts) < 0.6  # longer ranks higher
    assert 0.4 < pairwise_accuracy(lambda i, s: -i, ts) < 0.6  # earlier ranks higher


def test_shares_the_first_organisms_problems_and_verifier():
    a, b = random.Random(5), random.Random(5)
    assert task.sample_problem(a).prompt() == hard_task.sample_problem(b).prompt()
    p = hard_task.parse_prompt("a =1 ; b =a*7 ; What is b ? <think>")
    assert hard_task.verify(p, "\nNeed b a . </think> b =7 . \\boxed{ 7 }")


def test_registry_tells_the_organisms_apart_by_tokenizer():
    first, hard = get_organism("organism"), get_organism("organism-hard")
    assert organism_of(first.build_tokenizer()) is first and organism_of(hard.build_tokenizer()) is hard
    assert hard.vocabulary()[: len(first.vocabulary())] == first.vocabulary()  # warm start keeps the ids
    assert organism_of(build_tokenizer(["something else"])) is None
    with pytest.raises(KeyError, match="organism-hard"):
        get_organism("nope")
    assert set(ORGANISMS) >= {"organism", "organism-hard"}


def test_hard_tokenizer_round_trips_every_trace():
    tok = get_organism("organism-hard").build_tokenizer()
    for t in traces(200):
        for text in (t.prompt, t.response):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
