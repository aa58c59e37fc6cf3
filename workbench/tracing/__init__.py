"""Tracing: per-head answer->step attention scores S[layer, head, step] (attnpo-method.md §2).

``trace_step_scores`` scores a list of traces, teacher-forced and batched (right padding), with
the backend of your choice -- all give the same numbers -- and an optional disk cache.
``StepScoreRecorder`` does the same capture inside a forward pass you run yourself (the
trainer's log-prob pass).  ``trace_step_attention`` gives each head's step x step attention
matrix instead (step_attention.py), for label-free head ranking.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from workbench.heads import Head, all_heads, check_heads, model_shape
from workbench.models import LoadedModel, model_fingerprint
from workbench.tracing.backends import BACKENDS
from workbench.tracing.cache import ScoreCache
from workbench.tracing.items import TraceItem, check_item
from workbench.tracing.native import StepScoreRecorder
from workbench.tracing.reduce import answer_step_scores, span_means
from workbench.tracing.step_attention import StepAttentionRecorder, step_attention_batches

__all__ = ["TraceItem", "trace_step_scores", "trace_step_attention", "StepScoreRecorder", "StepAttentionRecorder",
           "ScoreCache", "answer_step_scores", "span_means", "BACKENDS"]


def trace_step_scores(model, items: list[TraceItem], heads: list[Head] | None = None, backend: str = "native",
                      batch_size: int = 8, cache: ScoreCache | None = None,
                      progress: bool = False) -> list[torch.Tensor]:
    """One float32 CPU tensor per item: [L, H, K] for all heads (``heads=None``), else [len(heads), K].

    ``model`` is a ``LoadedModel`` or a bare HF model (the nnsight and transformer_lens backends
    need the tokenizer, so give them a ``LoadedModel``).  Bad items raise ValueError naming the
    trace id before anything runs.
    """
    loaded = model if isinstance(model, LoadedModel) else None
    if backend not in BACKENDS:
        raise ValueError(f"unknown tracing backend {backend!r}: choose one of {sorted(BACKENDS)}")
    if backend in ("nnsight", "transformer_lens") and loaded is None:
        raise ValueError(f"backend {backend!r} needs the tokenizer: pass a LoadedModel")
    return _trace(model, items, heads, BACKENDS[backend], batch_size, cache, progress, "tracing")


def trace_step_attention(model, items: list[TraceItem], heads: list[Head] | None = None, batch_size: int = 1,
                         cache: ScoreCache | None = None, progress: bool = False) -> list[torch.Tensor]:
    """One float32 CPU tensor per item: [L, H, K + 1, K] (``heads=None``), else [len(heads), K + 1, K].

    Each head's step x step attention (step_attention.py); the cache keeps these apart from step scores.
    """
    return _trace(model, items, heads, step_attention_batches, batch_size, cache, progress, "step attention",
                  what="step_attention")


def _trace(model, items: list[TraceItem], heads: list[Head] | None, run_batches, batch_size: int,
           cache: ScoreCache | None, progress: bool, desc: str, what: str | None = None) -> list[torch.Tensor]:
    """Check the items, look them up in the cache, run the rest shortest first in batches."""
    loaded = model if isinstance(model, LoadedModel) else None
    hf = loaded.model if loaded else model
    tokenizer = loaded.tokenizer if loaded else None
    chosen = all_heads(hf.config) if heads is None else check_heads(heads, hf.config)
    for item in items:
        check_item(item, getattr(hf.config, "max_position_embeddings", None))

    results: list[torch.Tensor | None] = [None] * len(items)
    keys: list[str] = []
    if cache is not None:
        fingerprint = loaded.fingerprint if loaded else model_fingerprint(hf)
        keys = [cache.key(fingerprint, it, None if heads is None else chosen, what) for it in items]
        results = [cache.get(k) for k in keys]
    todo = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: len(items[i].input_ids))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    layers, n_heads, _ = model_shape(hf.config)
    run = run_batches(hf, tokenizer, [[items[i] for i in b] for b in batches], chosen)
    for batch, scores in zip(batches, tqdm(run, total=len(batches), disable=not progress, desc=desc)):
        for i, s in zip(batch, scores):
            if not torch.isfinite(s).all():
                raise ValueError(f"trace {items[i].trace_id!r}: NaN/inf in the step scores")
            results[i] = s.reshape(layers, n_heads, *s.shape[1:]) if heads is None else s
            if cache is not None:
                cache.put(keys[i], results[i])
    return results
