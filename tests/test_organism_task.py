"""The organism's task: problems, reference traces, labels, verifier and tokenizer."""

import random

import pytest

from workbench.organism import task
from workbench.organism.tokenizer import build_tokenizer


def traces(n=300, seed=0):
    rng = random.Random(seed)
    return [task.sample_trace(rng) for _ in range(n)]


def test_reference_traces_verify_and_answer_matches_chain():
    for t in traces():
        p = t.problem
        assert task.verify(p, t.response)
        chain = p.chain()
        assert chain[0] == p.query and p.by_name[chain[-1]].operand is None
        # the answer restates every computed chain variable, in computation order
        words = t.response.split("</think>")[1].split()
        restated = [words[i - 1] for i, w in enumerate(words) if w.startswith("=")]
        assert restated == list(reversed(chain[:-1]))


def test_each_chain_variable_is_computed_exactly_once_as_critical():
    for t in traces():
        critical = [s for s in t.steps if s.label == "critical"]
        chain = set(t.problem.chain()[:-1])
        computed = {s.variable for s in critical}
        shortcuts = [s for s in critical if s.kind == "shortcut"]
        assert computed <= chain
        assert len(computed) + len(shortcuts) == len(chain)


def test_steps_are_labelled_and_redundancy_is_large():
    red_steps = total = 0
    for t in traces(1000):
        assert t.steps[0].label == "plan"
        assert all(s.label in task.LABELS for s in t.steps)
        assert all(s.kind in task.REDUNDANT_KINDS for s in t.steps if s.label == "redundant")
        red_steps += sum(s.label == "redundant" for s in t.steps)
        total += len(t.steps)
    assert red_steps / total > 0.5


def test_rechecks_follow_the_step_they_check():
    for t in traces():
        for i, s in enumerate(t.steps):
            if s.kind == "recheck":
                n = len(s.arithmetic)
                assert s.arithmetic in [s.words[j : j + n] for j in range(len(s.words))]
                assert any(prev.arithmetic == s.arithmetic for prev in t.steps[:i])


def test_label_response_reproduces_reference_labels():
    for t in traces():
        got = task.label_response(t.problem, [s.text.strip() for s in t.steps])
        assert got == [(s.label, s.kind) for s in t.steps]


def test_label_response_marks_repeats_and_unknown_steps_redundant():
    t = traces(1)[0]
    texts = [s.text.strip() for s in t.steps]
    critical = next(x for x, s in zip(texts, t.steps) if s.label == "critical")
    labels = task.label_response(t.problem, texts + [critical, "Hmm nothing"])
    assert labels[-2] == ("redundant", "repeat") and labels[-1] == ("redundant", "other")


@pytest.mark.parametrize("bad", [
    "a =1 ; b =a+2 ; What is b ? </think> \\boxed{ 3 }",  # <think> in the response
    "no think close \\boxed{ 3 }",
    "x </think> y </think> \\boxed{ 3 }",
    "x </think> no box",
])
def test_verifier_rejects_broken_format(bad):
    p = task.parse_prompt("a =1 ; b =a+2 ; What is b ? <think>")
    assert p.answer == 3
    assert not task.verify(p, bad.replace("a =1 ; b =a+2 ; What is b ? ", "<think> "))


def test_verifier_takes_last_box_after_think():
    p = task.parse_prompt("a =1 ; b =a*7 ; What is b ? <think>")
    assert task.verify(p, "\nNeed b a . </think> b =7 . \\boxed{ 3 } \\boxed{ 7 }")
    assert not task.verify(p, "\nNeed b a . \\boxed{ 7 } </think> b =7 . \\boxed{ 3 }")


def test_parse_prompt_names_the_bad_clause():
    with pytest.raises(ValueError, match="q = = 3"):
        task.parse_prompt("a =1 ; q = = 3 ; What is a ? <think>")
    with pytest.raises(ValueError, match="q =b/3"):  # an operator the task does not have
        task.parse_prompt("a =1 ; b =a+1 ; q =b/3 ; What is a ? <think>")
    with pytest.raises(ValueError, match="question clause"):
        task.parse_prompt("a =1 ; Tell me a")
    with pytest.raises(ValueError, match="variable 'z' but never defines it"):
        task.parse_prompt("a =z+1 ; What is a ? <think>")
    with pytest.raises(ValueError, match="in terms of itself"):
        task.parse_prompt("a =b+1 ; b =a*2 ; What is b ? <think>")


def test_prompt_roundtrip():
    for t in traces(100):
        p = task.parse_prompt(t.prompt)
        assert p.answer == t.problem.answer and p.chain() == t.problem.chain()


def test_mod10_arithmetic():
    assert task.apply_op(7, "*", 2) == 4 and task.apply_op(0, "-", 6) == 4 and task.apply_op(6, "+", 8) == 4
    with pytest.raises(ValueError, match="/"):
        task.apply_op(1, "/", 2)


def test_tokenizer_roundtrips_exactly_with_no_unknown_words(tmp_path):
    from transformers import Qwen2Config

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    Qwen2Config(vocab_size=len(tok)).save_pretrained(tmp_path)  # a qwen2 config beside it, as in a checkpoint
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for t in traces(200):
        for text in (t.prompt, t.response):
            ids = loaded(text, add_special_tokens=False)["input_ids"]
            assert loaded.unk_token_id not in ids
            assert loaded.decode(ids) == text
    assert loaded("a")["input_ids"][0] == loaded.bos_token_id


def pairwise_accuracy(key, ts) -> float:
    """SRA of a trivial step ranker over reference traces: (critical, redundant) pairs it orders right."""
    per_trace = []
    for t in ts:
        steps = [(i, s) for i, s in enumerate(t.steps) if s.label != "plan"]
        crit = [key(i, s) for i, s in steps if s.label == "critical"]
        red = [key(i, s) for i, s in steps if s.label == "redundant"]
        if crit and red:
            per_trace.append(sum((a > b) + 0.5 * (a == b) for a in crit for b in red) / (len(crit) * len(red)))
    return sum(per_trace) / len(per_trace)


def test_step_length_and_position_do_not_give_the_labels_away():
    ts = traces(600)
    assert 0.4 < pairwise_accuracy(lambda i, s: len(s.words), ts) < 0.6  # longer ranks higher
    assert 0.4 < pairwise_accuracy(lambda i, s: -i, ts) < 0.6  # earlier ranks higher


def test_every_fact_a_step_reads_follows_a_name_in_one_token():
    """The lookups the design promises: the ``=x+k`` of each chain variable appears once in the prompt,
    and a critical step's ``c =4`` / ``a =7`` are the tokens right after the names it reads and writes."""
    for t in traces(200):
        p, words = t.problem, t.prompt.split()
        for name in p.chain()[1:]:
            assert sum(w.startswith(f"={name}") and len(w) == 4 for w in words) == 1
        for s in t.steps:
            if s.kind == "compute":
                d = p.by_name[s.variable]
                assert s.words[1:] == [*d.words(), ",", d.operand, task.value_word(p.value(d.operand)), ",",
                                       s.variable, task.value_word(p.value(s.variable)), "."]
