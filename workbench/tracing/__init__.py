"""Tracing: per-head answer->step attention scores S[layer, head, step] (attnpo-method.md §2).

``trace_step_scores`` scores a list of traces, teacher-forced and batched (right padding), with
the backend of your choice -- all give the same numbers -- and an optional disk cache.
``StepScoreRecorder`` does the same capture inside a forward pass you run yourself (the
trainer's log-prob pass); ``answer_attention`` keeps the answer's attention token by token, for a
few heads (the app's token-level view); ``trace_step_attention`` gives each head's step x step
attention matrix (step_attention.py), for label-free head ranking.  All three are reductions of the
attention rows one recorder computes (native.py's ``AttentionRecorder``).
"""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from workbench.heads import Head, all_heads, check_heads, model_shape
from workbench.models import LoadedModel, model_fingerprint
from workbench.tracing.attention import answer_attention
from workbench.tracing.backends import BACKENDS
from workbench.tracing.cache import ScoreCache
from workbench.tracing.items import TraceItem, check_item
from workbench.tracing.native import StepScoreRecorder
from workbench.tracing.reduce import answer_step_scores, span_means
from workbench.tracing.step_attention import StepAttentionRecorder, step_attention_batches

__all__ = ["TraceItem", "trace_step_scores", "trace_step_attention", "token_batches", "answer_attention",
           "StepScoreRecorder", "StepAttentionRecorder", "ScoreCache", "answer_step_scores", "span_means", "BACKENDS"]


BATCH_TOKENS = 8192  # padded tokens a tracing batch holds at most: long traces go one or two at a time


def token_batches(lengths: list[int], batch_size: int, batch_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` in batches, shortest first: at most ``batch_size`` items and
    ``batch_tokens`` padded tokens a batch (an item longer than that goes alone)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[i] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def trace_step_scores(model, items: list[TraceItem], heads: list[Head] | None = None, backend: str = "native",
                      batch_size: int = 8, cache: ScoreCache | None = None, progress: bool = False,
                      batch_tokens: int = BATCH_TOKENS) -> list[torch.Tensor]:
    """One float32 CPU tensor per item: [L, H, K] for all heads (``heads=None``), else [len(heads), K].

    ``model`` is a ``LoadedModel`` or a bare HF model (the nnsight and transformer_lens backends
    need the tokenizer, so give them a ``LoadedModel``).  Bad items raise ValueError naming the
    trace id before anything runs.  With a ``cache``, every finished trace is stored at once, so
    a killed call loses at most the batch in flight; ``progress`` shows traces done, tokens/s
    and the time left, and says how many traces came from the cache.
    """
    loaded = model if isinstance(model, LoadedModel) else None
    if backend not in BACKENDS:
        raise ValueError(f"unknown tracing backend {backend!r}: choose one of {sorted(BACKENDS)}")
    if backend in ("nnsight", "transformer_lens") and loaded is None:
        raise ValueError(f"backend {backend!r} needs the tokenizer: pass a LoadedModel")
    return _trace(model, items, heads, BACKENDS[backend], batch_size, batch_tokens, cache, progress, "tracing")


def trace_step_attention(model, items: list[TraceItem], heads: list[Head] | None = None, batch_size: int = 1,
                         cache: ScoreCache | None = None, progress: bool = False,
                         batch_tokens: int = BATCH_TOKENS) -> list[torch.Tensor]:
    """One float32 CPU tensor per item: [L, H, K + 1, K] (``heads=None``), else [len(heads), K + 1, K].

    Each head's step x step attention (step_attention.py); the cache keeps these apart from step
    scores; ``cache`` and ``progress`` work as for `trace_step_scores`.
    """
    return _trace(model, items, heads, step_attention_batches, batch_size, batch_tokens, cache, progress,
                  "step attention", what="step_attention")


def _trace(model, items: list[TraceItem], heads: list[Head] | None, run_batches, batch_size: int, batch_tokens: int,
           cache: ScoreCache | None, progress: bool, desc: str, what: str | None = None) -> list[torch.Tensor]:
    """Check the items, look them up in the cache, run the rest shortest first in batches (`token_batches`),
    storing each finished trace in the cache at once."""
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
    todo = [i for i, r in enumerate(results) if r is None]
    if progress and cache is not None and len(todo) < len(items):
        tqdm.write(f"{desc}: {len(items) - len(todo)} of {len(items)} traces reused from the cache in {cache.dir}",
                   file=sys.stderr)
    batches = [[todo[j] for j in b] for b in token_batches([len(items[i].input_ids) for i in todo], batch_size,
                                                           batch_tokens)]
    layers, n_heads, _ = model_shape(hf.config)
    run = run_batches(hf, tokenizer, [[items[i] for i in b] for b in batches], chosen)
    bar = tqdm(total=sum(len(items[i].input_ids) for i in todo), unit="tok", unit_scale=True,
               disable=not (progress and todo), desc=f"{desc} {len(todo)} traces", smoothing=0.1)
    done = 0
    bar.set_postfix_str(f"0/{len(todo)} traces")
    for batch, scores in zip(batches, run):
        for i, s in zip(batch, scores):
            if not torch.isfinite(s).all():
                raise ValueError(f"trace {items[i].trace_id!r}: NaN/inf in the step scores")
            results[i] = s.reshape(layers, n_heads, *s.shape[1:]) if heads is None else s
            if cache is not None:
                cache.put(keys[i], results[i])
        done += len(batch)
        bar.set_postfix_str(f"{done}/{len(todo)} traces", refresh=False)
        bar.update(sum(len(items[i].input_ids) for i in batch))
    bar.close()
    return results
