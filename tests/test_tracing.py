"""Tracing: every backend equals the score formula over eager ``output_attentions``; the native
capture keeps the model's outputs; bad input names the trace; the cache does not re-trace."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from workbench.heads import kv_head, model_shape
from workbench.models import LoadedModel
from workbench.organism import task
from workbench.tracing import (ScoreCache, StepScoreRecorder, TraceItem, answer_attention, answer_step_scores,
                               token_batches, trace_step_attention, trace_step_scores)
from workbench.tracing import backends

BACKENDS = ["native", "nnsight", "transformer_lens", "eager"]


# ---------------------------------------------------------------- traces

def organism_item(tok, seed: int) -> TraceItem:
    """A real organism trace: steps start at the newline-led words, F is everything after </think>."""
    trace = task.sample_trace(random.Random(seed))
    ids = tok(trace.prompt + " " + trace.response).input_ids + [tok.eos_token_id]
    words = tok.convert_ids_to_tokens(ids)
    close = words.index(task.THINK_CLOSE)
    starts = [i for i, w in enumerate(words) if w.startswith("\n")] + [close]
    return TraceItem(ids, list(zip(starts[:-1], starts[1:])), (close + 1, len(ids)), f"organism-{seed}")


def random_item(vocab: int, length: int, seed: int) -> TraceItem:
    """Random tokens with a prompt, steps of random length (gaps allowed) and a final answer."""
    rng = random.Random(seed)
    ids = [rng.randrange(3, vocab) for _ in range(length)]
    answer = (length - rng.randint(4, 12), length)
    steps, pos = [], rng.randint(3, 10)
    while pos < answer[0] - 2:
        end = min(pos + rng.randint(1, 9), answer[0] - 1)
        steps.append((pos, end))
        pos = end + rng.randint(0, 1)
    return TraceItem(ids, steps, answer, f"random-{seed}")


def items_for(loaded: LoadedModel) -> list[TraceItem]:
    if loaded.name in ("organism", "tiny-qwen2"):  # the organism's tokenizer
        return [organism_item(loaded.tokenizer, s) for s in (1, 2, 3)]
    return [random_item(len(loaded.tokenizer), n, s) for s, n in ((1, 70), (2, 45), (3, 58))]


def eager_reference(model, item: TraceItem) -> torch.Tensor:
    """[L, H, K] straight from the formula over eager ``output_attentions``, item alone, no padding."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([item.input_ids]), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
    a0, a1 = item.answer
    return torch.stack([
        torch.stack([torch.tensor([p[0, h, a0:a1, s:e].double().sum().item() / (e - s) for s, e in item.steps])
                     for h in range(p.shape[1])])
        for p in out.attentions]).float()


@pytest.fixture(params=["organism", "smollm2", "tiny_qwen2"])
def loaded(request) -> LoadedModel:
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- the formula

def test_reduction_equals_formula_on_hand_made_pattern():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 4, 12, generator=g)  # 3 heads, 4 answer rows, 12 keys
    steps = [(0, 2), (2, 7), (9, 10)]
    got = answer_step_scores(probs, steps)
    want = torch.tensor([[sum(probs[h, m, n].item() for m in range(4) for n in range(s, e)) / (e - s)
                          for s, e in steps] for h in range(3)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    one_hot = torch.zeros(1, 2, 6)
    one_hot[0, :, 4] = 1.0  # both answer rows look only at key 4
    assert answer_step_scores(one_hot, [(0, 4), (4, 6)]).tolist() == [[0.0, 1.0]]


# ---------------------------------------------------------------- backends vs eager

@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_eager_output_attentions(loaded, backend):
    items = items_for(loaded)
    assert len({len(it.input_ids) for it in items}) > 1  # the batch is padded
    got = trace_step_scores(loaded, items, backend=backend, batch_size=3)
    layers, n_heads, _ = model_shape(loaded.model.config)
    for item, scores in zip(items, got):
        assert scores.dtype == torch.float32 and scores.shape == (layers, n_heads, len(item.steps))
        torch.testing.assert_close(scores, eager_reference(loaded.model, item), atol=1e-5, rtol=0)


def test_backends_leave_the_model_as_it_was(tiny_qwen2):
    model = tiny_qwen2.model
    ids = torch.tensor([organism_item(tiny_qwen2.tokenizer, 7).input_ids])
    with torch.no_grad():
        before = model(ids).logits
    types = [type(m) for m in model.modules()]
    for backend in BACKENDS:
        trace_step_scores(tiny_qwen2, items_for(tiny_qwen2), backend=backend)
        assert model.config._attn_implementation == "sdpa"
        assert [type(m) for m in model.modules()] == types
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_gqa_each_query_head_reads_its_own_kv_head(tiny_qwen2):
    """Zero the keys of KV head 1: its query heads attend uniformly (row m gives 1/(m+1) to each
    visible key), while the query heads of KV head 0 do not."""
    model = copy.deepcopy(tiny_qwen2.model)
    _, n_heads, n_kv = model_shape(model.config)
    d = model.model.layers[0].self_attn.head_dim
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight[d : 2 * d] = 0
            layer.self_attn.k_proj.bias[d : 2 * d] = 0
    item = organism_item(tiny_qwen2.tokenizer, 4)
    uniform = torch.tensor([sum(1 / (m + 1) for m in range(*item.answer))] * len(item.steps))
    for backend in BACKENDS:
        scores = trace_step_scores(LoadedModel(model, tiny_qwen2.tokenizer, "gqa", "x"), [item], backend=backend)[0]
        for h in range(n_heads):
            is_uniform = torch.allclose(scores[:, h], uniform.expand_as(scores[:, h]), atol=1e-5)
            assert is_uniform == (kv_head(h, n_heads, n_kv) == 1), (backend, h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_subset_is_the_slice_of_all_heads(tiny_qwen2, backend):
    items = items_for(tiny_qwen2)
    heads = [(1, 3), (0, 0), (1, 1), (0, 2)]
    full = trace_step_scores(tiny_qwen2, items, backend=backend)
    sub = trace_step_scores(tiny_qwen2, items, heads=heads, backend=backend)
    for f, s in zip(full, sub):
        assert s.shape == (len(heads), f.shape[-1])
        torch.testing.assert_close(s, torch.stack([f[l, h] for l, h in heads]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- token-level answer attention

def eager_patterns(model, item: TraceItem) -> tuple[torch.Tensor, ...]:
    """Every layer's [1, H, T, T] pattern from eager ``output_attentions``, item alone."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(torch.tensor([item.input_ids]), output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(before)


@pytest.mark.parametrize("name", ["organism", "tiny_qwen2"])
def test_answer_attention_equals_eager_rows(request, name):
    loaded = request.getfixturevalue(name)
    heads = [(1, 3), (0, 0), (1, 1), (0, 1)]  # out of layer order, both KV groups of the GQA model
    for item in items_for(loaded):
        got = answer_attention(loaded, item, heads)
        a0, a1 = item.answer
        assert got.dtype == torch.float32 and got.shape == (len(heads), a1 - a0, a1)
        patterns = eager_patterns(loaded.model, item)
        want = torch.stack([patterns[layer][0, head, a0:a1, :a1] for layer, head in heads]).float()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.sum(-1), torch.ones(len(heads), a1 - a0), atol=1e-5, rtol=0)


def test_answer_attention_summed_over_f_gives_the_step_scores(tiny_qwen2):
    item = items_for(tiny_qwen2)[0]
    heads = [(0, 2), (1, 0)]
    rows = answer_attention(tiny_qwen2, item, heads)
    torch.testing.assert_close(answer_step_scores(rows, item.steps),
                               trace_step_scores(tiny_qwen2, [item], heads=heads)[0], atol=1e-5, rtol=0)


def test_answer_attention_refuses_bad_heads_and_spans(tiny_qwen2):
    item = items_for(tiny_qwen2)[0]
    with pytest.raises(ValueError, match="L2H0"):
        answer_attention(tiny_qwen2, item, [(2, 0)])
    with pytest.raises(ValueError, match="1 to"):
        answer_attention(tiny_qwen2, item, [])
    with pytest.raises(ValueError, match="bad-7.*does not come after"):
        answer_attention(tiny_qwen2, TraceItem(item.input_ids, [(3, 8), (8, 25)], (20, 30), "bad-7"), [(0, 0)])


# ---------------------------------------------------------------- the recorder in a normal forward

@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["organism", "tiny_qwen2"])
def test_recorder_in_padded_forward_equals_tracing_and_keeps_logits(request, name, side):
    loaded = request.getfixturevalue(name)
    items = items_for(loaded)
    heads = [(0, 1), (1, 2), (1, 0)]
    width = max(len(it.input_ids) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    rows = []
    for b, it in enumerate(items):
        shift = width - len(it.input_ids) if side == "left" else 0
        ids[b, shift : shift + len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[b, shift : shift + len(it.input_ids)] = 1
        rows.append(([(s + shift, e + shift) for s, e in it.steps], (it.answer[0] + shift, it.answer[1] + shift)))
    model = loaded.model
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with StepScoreRecorder(model, heads, rows) as recorder:
            recorded = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(recorded, plain)
    for got, want in zip(recorder.scores, trace_step_scores(loaded, items, heads=heads)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _probe_sdpa(module, *args, **kwargs):
    """A custom attention implementation that needs to see its own name, as flash attention does."""
    assert module.config._attn_implementation == "probe_sdpa"
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, *args, **kwargs)


@pytest.mark.parametrize("implementation", ["eager", "probe_sdpa"])
def test_recorder_wraps_whatever_implementation_the_model_uses(tiny_qwen2, implementation):
    AttentionInterface.register("probe_sdpa", _probe_sdpa)
    AttentionMaskInterface.register("probe_sdpa", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = copy.deepcopy(tiny_qwen2.model)
    model.set_attn_implementation(implementation)
    items = items_for(tiny_qwen2)[:1]
    ids = torch.tensor([items[0].input_ids])
    with torch.no_grad():
        plain = model(ids).logits
        with StepScoreRecorder(model, [(1, 3), (0, 0)], [(items[0].steps, items[0].answer)]) as recorder:
            recorded = model(ids).logits
    assert torch.equal(recorded, plain) and model.config._attn_implementation == implementation
    want = trace_step_scores(tiny_qwen2, items, heads=[(1, 3), (0, 0)])[0]
    torch.testing.assert_close(recorder.scores[0], want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("steps, answer, message", [
    ([(3, 8), (8, 60)], (60, 62), "outside"),
    ([(3, 8), (7, 12)], (20, 30), "overlaps"),
    ([(3, 8), (8, 8)], (20, 30), "empty"),
    ([(3, 8), (8, 25)], (20, 30), "does not come after"),
    ([(3, 8)], (20, 20), "empty"),
    ([], (20, 30), "no steps"),
])
def test_bad_spans_raise_naming_the_trace(tiny_qwen2, steps, answer, message):
    item = TraceItem(list(range(3, 43)), steps, answer, "bad-trace-7")
    with pytest.raises(ValueError, match=f"bad-trace-7.*{message}"):
        trace_step_scores(tiny_qwen2, [random_item(60, 40, 1), item])


def test_trace_longer_than_context_raises(tiny_qwen2):
    n = tiny_qwen2.model.config.max_position_embeddings + 1
    item = TraceItem([5] * n, [(1, 5)], (n - 3, n), "too-long")
    with pytest.raises(ValueError, match="too-long.*context"):
        trace_step_scores(tiny_qwen2, [item])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_scores_raise_naming_the_trace(tiny_qwen2, backend):
    model = copy.deepcopy(tiny_qwen2.model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.bias[0] = float("nan")
    broken = LoadedModel(model, tiny_qwen2.tokenizer, "broken", "y")
    with pytest.raises(ValueError, match="organism-2.*NaN"):
        trace_step_scores(broken, [organism_item(tiny_qwen2.tokenizer, 2)], backend=backend)


def test_unknown_backend_and_bad_heads(tiny_qwen2):
    with pytest.raises(ValueError, match="unknown tracing backend 'flash'"):
        trace_step_scores(tiny_qwen2, items_for(tiny_qwen2), backend="flash")
    with pytest.raises(ValueError, match="L2H0"):
        trace_step_scores(tiny_qwen2, items_for(tiny_qwen2), heads=[(2, 0)])


# ---------------------------------------------------------------- cache

def test_cache_hits_without_retracing(tiny_qwen2, tmp_path, monkeypatch):
    items = items_for(tiny_qwen2)
    cache = ScoreCache(tmp_path)
    first = trace_step_scores(tiny_qwen2, items, cache=cache)
    assert len(list(tmp_path.glob("*.safetensors"))) == len(items)
    assert not list(tmp_path.glob(".tmp-*"))

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again despite the cache")
        yield

    monkeypatch.setitem(backends.BACKENDS, "nnsight", no_tracing)  # any backend hits the same entries
    again = trace_step_scores(tiny_qwen2, items, backend="nnsight", cache=cache)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    # Another head set, other spans or another model are other entries.
    keys = {ScoreCache.key(tiny_qwen2.fingerprint, items[0], None),
            ScoreCache.key(tiny_qwen2.fingerprint, items[0], [(0, 1)]),
            ScoreCache.key("another-model", items[0], None),
            ScoreCache.key(tiny_qwen2.fingerprint, TraceItem(items[0].input_ids, items[0].steps[1:],
                                                             items[0].answer), None)}
    assert len(keys) == 4


# ---------------------------------------------------------------- the step x step attention

def eager_step_attention(model, item: TraceItem) -> torch.Tensor:
    """[L, H, K + 1, K] block means of eager ``output_attentions``: segments = steps + F, columns = steps."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([item.input_ids]), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
    segments = [*item.steps, item.answer]
    return torch.stack([
        torch.stack([torch.stack([p[0, :, m0:m1, n0:n1].double().mean((-2, -1)) for n0, n1 in item.steps], -1)
                     for m0, m1 in segments], -2)
        for p in out.attentions]).float()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_step_attention_matches_eager_output_attentions(loaded, batch_size):
    items = items_for(loaded)
    got = trace_step_attention(loaded, items, batch_size=batch_size)
    layers, n_heads, _ = model_shape(loaded.model.config)
    for item, matrix in zip(items, got):
        k = len(item.steps)
        assert matrix.dtype == torch.float32 and matrix.shape == (layers, n_heads, k + 1, k)
        torch.testing.assert_close(matrix, eager_step_attention(loaded.model, item), atol=1e-6, rtol=1e-5)


def test_step_attention_answer_row_is_the_step_score_and_is_causal(tiny_qwen2):
    items = items_for(tiny_qwen2)
    for item, matrix, scores in zip(items, trace_step_attention(tiny_qwen2, items),
                                    trace_step_scores(tiny_qwen2, items)):
        answer_len = item.answer[1] - item.answer[0]
        torch.testing.assert_close(matrix[..., -1, :] * answer_len, scores, atol=1e-5, rtol=0)
        k = len(item.steps)
        assert torch.all(matrix[..., :k, :].triu(1) == 0)  # a step never sees a later one
        assert torch.all(matrix.diagonal(dim1=-2, dim2=-1) > 0)


def test_step_attention_chunks_heads_and_gaps(tiny_qwen2, monkeypatch):
    """Rows split into chunks of 7 (across segment boundaries), steps with gaps between them, a head
    subset: the same numbers as one chunk and all heads."""
    from workbench.tracing import native

    items = [random_item(len(tiny_qwen2.tokenizer), n, s) for s, n in ((4, 80), (5, 61))]
    assert any(s1 > e0 for it in items for (_, e0), (s1, _) in zip(it.steps, it.steps[1:]))  # gaps
    whole = trace_step_attention(tiny_qwen2, items, batch_size=2)
    heads = [(1, 2), (0, 3), (0, 0)]
    monkeypatch.setattr(native, "CHUNK_ELEMENTS", 7 * 2 * 80)  # 7 rows for a run of 2 heads
    chunked = trace_step_attention(tiny_qwen2, items, heads=heads, batch_size=2)
    for w, c in zip(whole, chunked):
        torch.testing.assert_close(c, torch.stack([w[l, h] for l, h in heads]), atol=1e-6, rtol=0)


def test_step_attention_cache_is_apart_from_step_scores(tiny_qwen2, tmp_path):
    items = items_for(tiny_qwen2)[:1]
    cache = ScoreCache(tmp_path)
    scores = trace_step_scores(tiny_qwen2, items, cache=cache)[0]
    matrix = trace_step_attention(tiny_qwen2, items, cache=cache)[0]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert matrix.dim() == 4 and scores.dim() == 3
    assert torch.equal(trace_step_attention(tiny_qwen2, items, cache=cache)[0], matrix)


def test_answer_rows_in_chunks_give_the_same_step_scores_and_token_rows(tiny_qwen2, monkeypatch):
    """The recorder's answer rows split into chunks of 3 (each chunk's keys stop at its last row):
    step scores and token rows as in one chunk."""
    from workbench.tracing import native

    items = items_for(tiny_qwen2)
    heads = [(1, 3), (0, 0), (1, 1)]
    whole = trace_step_scores(tiny_qwen2, items, heads=heads)
    rows = [answer_attention(tiny_qwen2, it, heads) for it in items]
    a1 = max(it.answer[1] for it in items)
    assert any(it.answer[1] - it.answer[0] > 3 for it in items)
    monkeypatch.setattr(native, "CHUNK_ELEMENTS", 3 * 2 * a1)  # at most 3 rows for a run of 2 heads
    for w, c in zip(whole, trace_step_scores(tiny_qwen2, items, heads=heads)):
        torch.testing.assert_close(c, w, atol=1e-6, rtol=0)
    for it, r in zip(items, rows):
        torch.testing.assert_close(answer_attention(tiny_qwen2, it, heads), r, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- batching and progress

def test_token_batches_bound_items_and_padded_tokens():
    lengths = [5000, 100, 3000, 120, 4000, 110, 9000]
    batches = token_batches(lengths, batch_size=2, batch_tokens=8192)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in batches] == [[100, 110], [120, 3000], [4000], [5000], [9000]]
    assert token_batches(lengths, batch_size=8, batch_tokens=8192)[0] == [1, 5, 3]  # short ones share a batch


def test_progress_counts_traces_tokens_per_second_and_cache_hits(tiny_qwen2, tmp_path, capsys):
    items = items_for(tiny_qwen2)
    cache = ScoreCache(tmp_path)
    trace_step_scores(tiny_qwen2, items[:2], cache=cache, progress=True)
    err = capsys.readouterr().err
    assert f"{2}/{2} traces" in err and "tok/s" in err and "reused" not in err
    trace_step_scores(tiny_qwen2, items, cache=cache, progress=True)
    err = capsys.readouterr().err
    assert f"tracing: 2 of {len(items)} traces reused from the cache" in err
    assert f"tracing {len(items) - 2} traces" in err and f"{len(items) - 2}/{len(items) - 2} traces" in err
