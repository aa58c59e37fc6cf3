"""Label sources: organism ground truth, labels files, counterfactual self-labels, R1 chunk tags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analyses.labels import (answer_logprobs, chunk_labels, counterfactual_drops, default_labels, file_labels,
                             get_labels, label_codes, organism_labels, threshold_labels, write_labels)
from workbench.models import LoadedModel
from workbench.organism.tokenizer import build_tokenizer
from workbench.steps import segment_text
from workbench.traces import TraceRecord, bundled_r1_traces, reference_organism
from workbench.tracing import ScoreCache

R1 = bundled_r1_traces()  # beside the repository, or $KFH_R1_TRACES


@pytest.fixture(scope="module")
def refs() -> list[TraceRecord]:
    return reference_organism(build_tokenizer(), 12, seed=3)


def test_organism_labels_match_the_generator(refs):
    labels = organism_labels(refs, build_tokenizer())
    for r, lab in zip(refs, labels):
        assert lab == r.meta["labels"]  # the task's own label of every step
        assert lab[0] == "plan" and "critical" in lab
    assert label_codes(["plan", "critical", "redundant", None]).tolist() == [-1, 1, 0, -1]


def test_organism_labels_need_organism_prompts(refs):
    bad = TraceRecord("x", "what is this", refs[0].response, [], [], refs[0].seg)
    with pytest.raises(ValueError, match="trace 'x'"):
        organism_labels([bad], build_tokenizer())


def test_labels_file_round_trip(refs, tmp_path):
    labels = organism_labels(refs, build_tokenizer())
    path = write_labels(tmp_path / "labels.jsonl", refs, labels)
    back = file_labels(path, refs)
    # the plan is not written, so it comes back unlabelled; everything else is identical
    assert back == [[None if x == "plan" else x for x in lab] for lab in labels]
    assert get_labels(f"file:{path}", refs) == back


def test_labels_file_partial_and_aliases(refs, tmp_path):
    path = tmp_path / "judges.jsonl"
    rows = [{"id": refs[0].trace_id, "step_index": 1, "label": 1}, {"trace_id": refs[1].trace_id, "step": 2,
            "label": "redundant"}, {"trace_id": "not-in-this-set", "step": 0, "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = file_labels(path, refs[:2])
    assert got[0][1] == "critical" and got[1][2] == "redundant"
    assert sum(x is not None for lab in got for x in lab) == 2


@pytest.mark.parametrize("row, message", [
    ({"trace_id": "T", "step": 0, "label": "maybe"}, "label 'maybe'"),
    ({"trace_id": "T", "step": 99, "label": "critical"}, "step 99 is out of range"),
    ({"trace_id": "T", "label": "critical"}, "integer step"),
])
def test_labels_file_bad_rows_are_named(refs, tmp_path, row, message):
    row["trace_id"] = refs[0].trace_id if row["trace_id"] == "T" else row["trace_id"]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message) as e:
        file_labels(path, refs)
    assert "bad.jsonl:1" in str(e.value)


def test_labels_file_for_other_traces_is_refused(refs, tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"trace_id": "elsewhere", "step": 0, "label": "critical"}) + "\n")
    with pytest.raises(ValueError, match="no row matches"):
        file_labels(path, refs)
    with pytest.raises(FileNotFoundError):
        file_labels(tmp_path / "missing.jsonl", refs)


def test_threshold_labels():
    drops = [np.array([0.1, 5.0, 2.0, -1.0, 0.0]), np.array([3.0, 3.0])]
    top = threshold_labels(drops, top=0.4)
    assert top[0] == ["redundant", "critical", "critical", "redundant", "redundant"]
    assert top[1] == ["critical", "redundant"]  # at least one critical, never all
    assert threshold_labels(drops, threshold=1.0)[0] == ["redundant", "critical", "critical", "redundant",
                                                         "redundant"]
    with pytest.raises(ValueError, match="exactly one"):
        threshold_labels(drops, top=0.3, threshold=1.0)
    with pytest.raises(ValueError, match="unknown labels source"):
        get_labels("judges", [])


def test_counterfactual_drops_match_unpadded_forwards(tiny_qwen2):
    refs = reference_organism(tiny_qwen2.tokenizer, 3, seed=1)
    drops = counterfactual_drops(tiny_qwen2, refs, batch_size=3, progress=False)

    def logp(ids: list[int], n_answer: int) -> float:
        with torch.no_grad():
            lp = tiny_qwen2.model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        t = len(ids)
        return sum(lp[i - 1, ids[i]].item() for i in range(t - n_answer, t))

    for r, d in zip(refs, drops):
        steps, (a0, a1) = r.seg.absolute(len(r.prompt_ids))
        full = logp(r.input_ids, a1 - a0)
        assert len(d) == r.n_steps
        for k, (s, e) in enumerate(steps):
            assert d[k] == pytest.approx(full - logp(r.input_ids[:s] + r.input_ids[e:], a1 - a0), abs=1e-3)
    labels = get_labels("counterfactual:top=0.5", refs, tiny_qwen2, progress=False)
    assert all(lab.count("critical") == max(1, round(0.5 * len(lab))) for lab in labels)


def test_counterfactual_drops_resume_from_the_cache(tiny_qwen2, tmp_path, monkeypatch):
    """A killed labelling pass keeps its finished traces: the rerun computes only the others."""
    import analyses.labels

    refs = reference_organism(tiny_qwen2.tokenizer, 3, seed=2)
    cache = ScoreCache(tmp_path)
    first = counterfactual_drops(tiny_qwen2, refs[:2], progress=False, cache=cache)
    calls = []
    real = analyses.labels.answer_logprobs
    monkeypatch.setattr(analyses.labels, "answer_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = counterfactual_drops(tiny_qwen2, refs, progress=False, cache=cache)
    assert len(calls) == 1  # the third trace only
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(again[2], counterfactual_drops(tiny_qwen2, refs[2:], progress=False)[0])


def test_default_labels(organism, tiny_qwen2):
    refs = reference_organism(tiny_qwen2.tokenizer, 2, seed=0)
    assert default_labels(organism, refs) == "organism"
    class OtherVocabulary:  # any tokenizer that is not an organism's
        def get_vocab(self) -> dict:
            return {"x": 0}

    plain = LoadedModel(tiny_qwen2.model, OtherVocabulary(), "plain", "x")
    assert default_labels(plain, refs) == "counterfactual"
    for r in refs:
        r.meta["chunks"] = [{"chunk": r.response, "function_tags": ["active_computation"]}]
    assert default_labels(plain, refs) == "chunks"


def test_answer_logprobs_rows_of_different_lengths(tiny_qwen2):
    rows = [[1, 5, 6, 7, 8, 9], [1, 7, 8, 9]]  # same last 2 tokens, different prefixes
    got = answer_logprobs(tiny_qwen2, rows, 2, batch_size=2)
    one = [answer_logprobs(tiny_qwen2, [r], 2)[0] for r in rows]
    assert np.allclose(got, one, atol=1e-4)


def test_long_rows_are_scored_one_at_a_time(tiny_qwen2, monkeypatch):
    """A padded batch builds rows x heads x T^2 attention scores on the masked path: rows whose batch
    would pass the budget go alone, and the numbers do not change."""
    from workbench import generation

    rows = [[1] + list(range(5, 5 + n)) + [7, 8, 9] for n in (3, 40, 4, 5)]
    batched = answer_logprobs(tiny_qwen2, rows, 2, batch_size=4)
    heads = tiny_qwen2.model.config.num_attention_heads
    assert generation._batches(rows, 4, heads) == [[0, 1, 2, 3]]
    monkeypatch.setattr(generation, "PADDED_ATTENTION_ELEMENTS", 2 * heads * 10**2)  # two rows of <= 10 tokens
    assert generation._batches(rows, 4, heads) == [[0], [1], [2, 3]]
    assert np.allclose(answer_logprobs(tiny_qwen2, rows, 2, batch_size=4), batched, atol=1e-4)


def _r1_record(row: dict) -> TraceRecord:
    return TraceRecord(row["id"], row["prompt"], row["response"], [], [], segment_text(row["response"], "r1"),
                       meta={"chunks": row["chunks"]})


def test_chunk_labels_hand_case():
    response = "Okay, let me set up. \nWait, let me check it again twice. \nThen 2+2=4. </think> 4"
    chunks = [{"chunk": "Okay, let me set up.", "function_tags": ["plan_generation"]},
              {"chunk": "Wait, let me check it again twice.", "function_tags": ["self_checking"]},
              {"chunk": "Then 2+2=4.", "function_tags": ["active_computation"]}]
    seg = segment_text(response, "organism")  # one step per newline-led line, no merging
    rec = TraceRecord("t", "", response, [], [], seg, meta={"chunks": chunks})
    assert chunk_labels([rec]) == [["critical", "redundant", "critical"]]
    with pytest.raises(ValueError, match="no 'chunks'"):
        chunk_labels([TraceRecord("u", "", response, [], [], seg)])


@pytest.mark.skipif(not R1.exists(), reason=f"real R1 traces not found at {R1}")
def test_chunk_labels_on_real_r1_traces():
    rows = [json.loads(line) for line in R1.read_text().splitlines()[:4]]
    labels = chunk_labels([_r1_record(r) for r in rows])
    for row, lab in zip(rows, labels):
        assert len(lab) == len(segment_text(row["response"], "r1").step_texts)
        assert "critical" in lab and "redundant" in lab
