"""Step ablation: pass@k against its closed form, step choice, the ablated prefix, the sampler, the run."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch

import analyses.ablation
from analyses.ablation import (ablated_prefix, ablation_figure, ablation_warnings, choose_steps, pass_at_k, resolve_m,
                               run_ablation, sample_continuations)
from workbench.cache import JsonCache
from workbench.traces import reference_organism
from workbench.verifiers import grade_organism


@pytest.mark.parametrize("n", [1, 2, 5, 16, 32, 40])
def test_pass_at_k_equals_the_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(32, 0, 1) == 0.0 and pass_at_k(32, 32, 32) == 1.0
    assert pass_at_k(32, 8, 1) == pytest.approx(0.25)
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)  # C(n, k) overflows floats; the product does not
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_resolve_m():
    assert resolve_m(2, 10) == 2 and resolve_m(0.25, 10) == 2 and resolve_m(0.01, 10) == 1
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError):
            resolve_m(bad, 10)


def test_choose_steps():
    scores = np.array([9.0, 0.1, 5.0, 3.0, 0.2, 5.0])
    rng = np.random.default_rng(0)
    assert choose_steps(scores, 2, "high", rng) == [2, 5]  # step 0 (the plan) is protected despite 9.0
    assert choose_steps(scores, 2, "low", rng) == [1, 4]
    assert choose_steps(scores, 2, "none", rng) == []
    draws = {tuple(choose_steps(scores, 2, "random", rng)) for _ in range(50)}
    assert len(draws) > 3 and all(0 not in d and len(set(d)) == 2 for d in draws)
    with pytest.raises(ValueError, match="cannot remove 6 of 5"):
        choose_steps(scores, 6, "high", rng)


def test_ablated_prefix(tiny_qwen2):
    r = reference_organism(tiny_qwen2.tokenizer, 1, seed=2)[0]
    (s1, e1), (s2, e2) = r.seg.steps[1], r.seg.steps[2]
    forced = ablated_prefix(r, [1, 2], "forced")
    assert forced == r.prompt_ids + r.response_ids[: s1] + r.response_ids[e2 : r.seg.answer[0]]
    assert tiny_qwen2.tokenizer.decode(forced[-1:]) == "</think>"
    cont = ablated_prefix(r, [1], "continue")
    assert cont == r.prompt_ids + r.response_ids[:s1] + r.response_ids[e1 : r.seg.steps[-1][1]]
    assert ablated_prefix(r, [], "forced") == r.prompt_ids + r.response_ids[: r.seg.answer[0]]


def test_greedy_continuations_match_generate(tiny_qwen2):
    model, tok = tiny_qwen2.model, tiny_qwen2.tokenizer
    prefix = reference_organism(tok, 1, seed=4)[0].prompt_ids
    rows = sample_continuations(model, prefix, 3, 12, 0.0, eos_id=tok.eos_token_id, batch_size=2)
    ref = model.generate(torch.tensor([prefix]), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)[0, len(prefix) :].tolist()
    ref = ref[: ref.index(tok.eos_token_id) + 1] if tok.eos_token_id in ref else ref
    assert rows == [ref] * 3


def test_sampled_continuations_stop_at_eos(tiny_qwen2):
    torch.manual_seed(0)
    eos = tiny_qwen2.tokenizer.eos_token_id
    rows = sample_continuations(tiny_qwen2.model, [1, 20, 21], 7, 30, 5.0, eos_id=eos, batch_size=3)
    assert len(rows) == 7 and len({tuple(r) for r in rows}) > 1
    for r in rows:
        assert len(r) <= 30 and (eos not in r or r.index(eos) == len(r) - 1)


def test_run_ablation_counts_and_skips(tiny_qwen2):
    refs = reference_organism(tiny_qwen2.tokenizer, 3, seed=5)
    scores = [np.arange(r.n_steps, dtype=float) for r in refs]
    m = min(r.n_steps for r in refs) - 1  # the shortest trace would keep no removable step: skipped
    too_short = [r.trace_id for r in refs if r.n_steps - 1 <= m]
    assert 0 < len(too_short) < 3
    res = run_ablation(tiny_qwen2, refs, scores, m, grade_organism, n_samples=4, ks=(1, 2, 4), seed=0,
                       max_new_tokens=6, progress=False)
    assert set(res["conditions"]) == {"none", "high", "low", "random"}
    assert res["skipped_too_few_steps"] == too_short
    assert res["n_traces"] == 3 - len(too_short) == res["conditions"]["high"]["n_traces"]
    for row in res["per_trace"]:
        assert row["removed"]["none"] == [] and len(row["removed"]["high"]) == m
        assert all(0 <= c <= 4 for c in row["correct"].values())
    with pytest.raises(ValueError, match="k <= n samples"):
        run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, n_samples=4, ks=(8,), progress=False)
    assert len(ablation_figure(res).data) == 6  # pass@k bars per condition, log p(F) and of the reference


def test_ablation_figure_has_ci_error_bars_over_traces():
    rows = [{"trace_id": str(i), "removed": {}, "correct": {"none": 4, "high": c, "low": 4, "random": 3}}
            for i, c in enumerate([0, 2, 4])]
    conditions = {c: {"pass@1": 0.5, "pass@4": 0.9, "n_traces": 3} for c in ("none", "high", "low", "random")}
    result = {"n_traces": 3, "m": 1, "mode": "forced", "n_samples": 4, "ks": [1, 4], "per_trace": rows,
              "conditions": conditions}
    fig = ablation_figure(result)
    high = next(t for t in fig.data if "highest" in t.name)
    p1 = [pass_at_k(4, c, 1) for c in (0, 2, 4)]  # 0, 0.5, 1
    assert high.error_y.array[0] == pytest.approx(1.96 * np.std(p1, ddof=1) / np.sqrt(3))
    none = next(t for t in fig.data if t.name.startswith("none"))
    assert list(none.error_y.array) == [0.0, 0.0]  # every trace the same: no spread
    assert not ablation_figure({**result, "per_trace": []}).data[0].error_y.visible  # shipped files without rows


def test_ablation_keeps_answers_and_warns_when_intact_fails(tiny_qwen2):
    """A random model fails every answer: the result says so, and the answers are there to look at."""
    refs = reference_organism(tiny_qwen2.tokenizer, 2, seed=6)
    scores = [np.arange(r.n_steps, dtype=float) for r in refs]
    res = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, n_samples=4, ks=(1, 4), max_new_tokens=6,
                       progress=False, keep_answers=3)
    assert res["conditions"]["none"]["pass@4"] == 0
    assert len(res["warnings"]) == 1 and "intact condition (no step removed) is already at 0" in res["warnings"][0]
    for row in res["per_trace"]:
        for cond, answers in row["answers"].items():
            assert len(answers) == 3 and all(a["correct"] is False and a["text"].startswith("</think>")
                                             for a in answers)
    assert ablation_warnings({"none": {"pass@1": 0.25, "n_traces": 2}}, "forced") == []
    every_one_skipped = run_ablation(tiny_qwen2, refs, scores, 50, grade_organism, n_samples=4, ks=(1,),
                                     progress=False)
    assert every_one_skipped["warnings"] == ["all 2 traces have at most m=50 removable steps and were skipped: "
                                             "lower --m"]


def test_ablation_resumes_from_its_cache(tiny_qwen2, tmp_path, monkeypatch):
    """Each trace is seeded on its own, so a run cut after one trace and resumed from the cache samples only
    the rest and gives what an uncached run gives."""
    refs = reference_organism(tiny_qwen2.tokenizer, 3, seed=7)
    scores = [np.arange(r.n_steps, dtype=float)[::-1] for r in refs]
    kw = {"n_samples": 4, "ks": (1, 2), "max_new_tokens": 6, "temperature": 1.0, "seed": 3, "progress": False}
    whole = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, **kw)
    calls = []
    real = analyses.ablation.sample_continuations
    monkeypatch.setattr(analyses.ablation, "sample_continuations", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = JsonCache(tmp_path / "cache")
    run_ablation(tiny_qwen2, refs[:1], scores[:1], 1, grade_organism, cache=cache, **kw)  # then "killed"
    assert len(calls) == 4  # one trace x 4 conditions
    resumed = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, cache=cache, **kw)
    assert len(calls) == 4 + 2 * 4  # only the two unfinished traces were sampled
    assert resumed == whole



def test_logprob_ablation_resumes_from_its_cache_and_both_reuses_each_measure(tiny_qwen2, tmp_path, monkeypatch):
    """The log-prob part is cached per trace like pass@k: a killed logprob run resumes scoring only the
    unfinished traces, and a later ``both`` run reuses the logprob and passk runs' parts, computing nothing."""
    refs = reference_organism(tiny_qwen2.tokenizer, 3, seed=7)
    scores = [np.arange(r.n_steps, dtype=float)[::-1] for r in refs]
    kw = {"n_samples": 2, "ks": (1, 2), "max_new_tokens": 4, "seed": 3, "n_boot": 50, "progress": False}
    whole = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, measure="logprob", **kw)
    scored, sampled = [], []
    real_score, real_sample = analyses.ablation.continuation_logprobs, analyses.ablation.sample_continuations
    monkeypatch.setattr(analyses.ablation, "continuation_logprobs",
                        lambda *a, **k: scored.append(1) or real_score(*a, **k))
    monkeypatch.setattr(analyses.ablation, "sample_continuations",
                        lambda *a, **k: sampled.append(1) or real_sample(*a, **k))
    cache = JsonCache(tmp_path / "cache")
    run_ablation(tiny_qwen2, refs[:1], scores[:1], 1, grade_organism, measure="logprob", cache=cache, **kw)
    assert len(scored) == 4  # one trace x 4 conditions, then "killed"
    resumed = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, measure="logprob", cache=cache, **kw)
    assert len(scored) == 4 + 2 * 4 and resumed == whole
    passk = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, measure="passk", cache=cache, **kw)
    assert len(sampled) == 3 * 4
    both = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, measure="both", cache=cache, **kw)
    assert len(scored) == 12 and len(sampled) == 12  # nothing computed again
    assert both == run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, measure="both", **kw)
    for row, p, lp in zip(both["per_trace"], passk["per_trace"], resumed["per_trace"]):
        assert row == {**p, **lp}

def test_head_ablation_matches_plain_hooks(tiny_qwen2):
    """nnsight's zero/mean ablation of heads during generation == a forward pre-hook on o_proj."""
    from nnsight import TransformersModel

    from analyses.causal import ablated_answers, forced_prefixes, head_means, random_head_sets

    model, tok = tiny_qwen2.model, tiny_qwen2.tokenizer
    prefixes = forced_prefixes(reference_organism(tok, 3, seed=6))
    lm = TransformersModel(model, tokenizer=tok)
    heads = [(0, 1), (1, 0), (1, 3)]
    d = model.config.hidden_size // model.config.num_attention_heads
    means = head_means(lm, prefixes, [0, 1], tok.pad_token_id, 2, tiny_qwen2.device)

    def expected(fill: dict[int, torch.Tensor] | None) -> list[list[int]]:
        def hook(layer):
            def pre(mod, args):
                x = args[0].clone()
                for l, h in heads:
                    if l == layer:
                        x[..., h * d : (h + 1) * d] = 0 if fill is None else fill[layer][h * d : (h + 1) * d]
                return (x,)
            return pre
        handles = [model.model.layers[l].self_attn.o_proj.register_forward_pre_hook(hook(l)) for l in (0, 1)]
        try:
            return [sample_continuations(model, p, 1, 8, 0.0, tok.eos_token_id)[0] for p in prefixes]
        finally:
            for h in handles:
                h.remove()

    assert ablated_answers(lm, tiny_qwen2, prefixes, heads, 8, 1) == expected(None)
    assert ablated_answers(lm, tiny_qwen2, prefixes, heads, 8, 1, means) == expected(means)
    intact = ablated_answers(lm, tiny_qwen2, prefixes, [], 8, 1)
    assert intact == [sample_continuations(model, p, 1, 8, 0.0, tok.eos_token_id)[0] for p in prefixes]
    draws = random_head_sets(model.config, heads, 3, 4, seed=0)
    assert all(len(s) == 3 and not set(s) & set(heads) for s in draws) and len({tuple(s) for s in draws}) > 1
    with pytest.raises(ValueError, match="cannot draw 6 random heads from the 5"):
        random_head_sets(model.config, heads, 6, 1, seed=0)


def test_head_ablation_refuses_another_layout(tiny_qwen2):
    """A model without model.layers[i].self_attn.o_proj (here GPT-2) is refused by name, before any work."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from analyses.causal import run_causal
    from workbench.models import LoadedModel

    tok = tiny_qwen2.tokenizer
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=64, vocab_size=len(tok)))
    loaded = LoadedModel(gpt2, tok, "tiny-gpt2", "gpt2-fingerprint")
    with pytest.raises(TypeError, match="self_attn.o_proj.*GPT2LMHeadModel"):
        run_causal(loaded, reference_organism(tok, 1, seed=0), [(0, 0)], grade_organism, progress=False)


# ---------------------------------------------------------------- the log-prob measure

def _direct_tail_logprobs(model, ids: list[int], n: int) -> np.ndarray:
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return np.array([logp[t - 1, ids[t]].item() for t in range(len(ids) - n, len(ids))])


def test_answer_targets_find_the_boxed_reference(tiny_qwen2):
    from dataclasses import replace

    from analyses.ablation import answer_targets

    tok = tiny_qwen2.tokenizer
    r = reference_organism(tok, 1, seed=3)[0]
    t = answer_targets(r, tok)
    assert t.f_ids == r.response_ids[r.seg.answer[0] : r.seg.answer[1]]
    assert tok.convert_ids_to_tokens(t.box_ids) == ["\\boxed{"] and tok.decode(t.ref_ids).strip() == r.answer
    wrong = str((int(r.answer) + 1) % 10)
    t2 = answer_targets(replace(r, answer=wrong, correct=False), tok)  # F boxes another answer: re-spelled
    assert t2.box_ids == t.box_ids and tok.decode(t2.ref_ids).strip() == wrong
    assert answer_targets(replace(r, answer=None), tok).ref_ids is None


def test_condition_logprobs_equal_a_direct_forward(tiny_qwen2):
    from analyses.ablation import answer_targets, condition_logprobs

    model, tok = tiny_qwen2.model, tiny_qwen2.tokenizer
    r = reference_organism(tok, 1, seed=8)[0]
    t = answer_targets(r, tok)
    removed = {"none": [], "high": [1, 2], "low": [3]}
    got = condition_logprobs(tiny_qwen2, r, removed, t)
    for cond, steps in removed.items():
        prefix = ablated_prefix(r, steps, "forced")
        f = _direct_tail_logprobs(model, prefix + t.f_ids, len(t.f_ids))
        ref = _direct_tail_logprobs(model, prefix + t.box_ids + t.ref_ids, len(t.ref_ids))
        assert got[cond]["F_total"] == pytest.approx(f.sum(), abs=1e-4)
        assert got[cond]["F_per_token"] == pytest.approx(f.mean(), abs=1e-5)
        assert got[cond]["reference_total"] == pytest.approx(ref.sum(), abs=1e-4)
    assert ablated_prefix(r, [], "forced") + t.f_ids == r.input_ids  # nothing removed: the trace itself
    assert got["high"]["F_total"] != got["none"]["F_total"]


def test_logprob_only_ablation_samples_nothing_and_removes_the_same_steps(tiny_qwen2, monkeypatch):
    import analyses.ablation as ablation

    refs = reference_organism(tiny_qwen2.tokenizer, 4, seed=9)
    scores = [np.random.default_rng(i).random(r.n_steps) for i, r in enumerate(refs)]
    both = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, n_samples=2, ks=(1, 2), seed=3,
                        max_new_tokens=4, n_boot=50, progress=False)

    def no_sampling(*args, **kwargs):
        raise AssertionError("the log-prob measure sampled")

    with monkeypatch.context() as patch:
        patch.setattr(ablation, "sample_continuations", no_sampling)
        lp = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, n_samples=2, ks=(1, 2), seed=3,
                          measure="logprob", n_boot=50, progress=False)
    assert lp["measure"] == "logprob" and lp["ks"] == [] and lp["n_samples"] is None
    for a, b in zip(both["per_trace"], lp["per_trace"]):
        assert a["removed"] == b["removed"] and a["logprob"] == b["logprob"] and "correct" not in b
    for cond in ("none", "high", "low", "random"):
        c = lp["conditions"][cond]
        assert not any(k.startswith("pass@") for k in c)
        v = c["logprob"]["F_total"]
        assert v["n"] == 4 and v["ci_low"] <= v["mean"] <= v["ci_high"]
        assert v["mean"] == pytest.approx(np.mean([row["logprob"][cond]["F_total"] for row in lp["per_trace"]]))
    gap = lp["gaps"]["low - high"]["F_total"]
    assert gap["mean"] == pytest.approx(lp["conditions"]["low"]["logprob"]["F_total"]["mean"]
                                        - lp["conditions"]["high"]["logprob"]["F_total"]["mean"])
    assert "pass@1" in both["gaps"]["low - high"] and "pass@1" not in lp["gaps"]["low - high"]
    passk = run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, n_samples=2, ks=(1, 2), seed=3,
                         max_new_tokens=4, measure="passk", progress=False)
    assert "logprob" not in passk["per_trace"][0] and "logprob" not in passk["conditions"]["high"]
    assert [len(ablation_figure(r).data) for r in (lp, both, passk)] == [2, 6, 4]
    with pytest.raises(ValueError, match="unknown measure 'pass'"):
        run_ablation(tiny_qwen2, refs, scores, 1, grade_organism, measure="pass", progress=False)


def test_logprob_measure_separates_high_from_low_on_the_organism(organism):
    """The shipped KFHs: removing their two highest-score steps costs log p(F) far more than removing
    the two lowest (the gap's CI excludes 0)."""
    from workbench.kfh import load_kfh
    from workbench.traces import sample_organism
    from workbench.tracing import trace_step_scores

    sel = load_kfh("configs/organism/kfh.json", organism)
    records = sample_organism(organism, 12, seed=11, correct_only=True, progress=False)
    scores = [s.numpy().mean(0) for s in trace_step_scores(organism, [r.item() for r in records], heads=sel.heads)]
    res = run_ablation(organism, records, scores, 2, grade_organism, measure="logprob", n_boot=500, progress=False)
    gap = res["gaps"]["low - high"]
    assert gap["F_total"]["ci_low"] > 1.0 and gap["F_per_token"]["ci_low"] > 0
    assert gap["reference_total"]["mean"] > 0
