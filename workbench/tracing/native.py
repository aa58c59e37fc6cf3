"""Native tracing: answer->step scores captured inside the model's own (SDPA / flash) forward pass.

No T x T attention is ever built.  While a ``StepScoreRecorder`` is active, the model's attention
implementation is swapped for a registered wrapper (``transformers.AttentionInterface``) that
first computes, for the requested heads, only the answer rows of the attention, from the
post-RoPE queries and keys the model hands it, then calls the original implementation unchanged.
Those rows are reduced at once to step means: O(H·|F|·T) transient memory per layer (less,
as rows are chunked), O(L·H·K) kept.

``AttentionRecorder`` is that mechanism: it computes the attention rows a reduction asks for
(from the answer's first token, or from an earlier one) chunk by chunk, and a subclass says what
they are reduced to -- step scores (``StepScoreRecorder`` here), the answer's token rows
(attention.py) or the step x step matrix (step_attention.py).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from typing import Self

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from workbench.heads import Head, check_heads, kv_head, model_shape
from workbench.tracing.items import Span, TraceItem, check_spans, pad_right
from workbench.tracing.reduce import HeadLayout, span_means

CHUNK_ELEMENTS = 1 << 24  # logits computed per chunk of query rows: at most 64 MB of fp32
_ACTIVE: dict[int, "AttentionRecorder"] = {}  # id(model config) -> the recorder capturing from it


def _capturing(original: str, name: str):
    """An attention function that lets the active recorder see q/k, then runs ``original``."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        recorder = _ACTIVE.get(id(module.config))
        if recorder is not None:
            recorder.capture(module, query, key, attention_mask, kwargs)
        own_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        forward = ALL_ATTENTION_FUNCTIONS.get_interface(original, own_eager)  # as the modeling file does
        module.config._attn_implementation = original  # flash attention picks its kernel by this name
        try:
            return forward(module, query, key, value, attention_mask, **kwargs)
        finally:
            module.config._attn_implementation = name

    return attention


def _register(original: str) -> str:
    """Register (once) the capturing twin of an implementation, with the same mask builder."""
    name = f"kfh_capture_{original}"  # keeps "flash" in the name, which transformers checks for
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _capturing(original, name))
        if original in ALL_MASK_ATTENTION_FUNCTIONS:  # otherwise the model builds no mask for either
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name


def _rows_mask(mask, b: int, r0: int, r1: int, n_keys: int, kwargs: dict, device) -> torch.Tensor:
    """How the model masks query rows [r0, r1) of batch row b, [r1 - r0, n_keys]: a bool tensor
    (True = hidden) or, for eager attention, the model's additive float mask."""
    if mask is not None and mask.dim() == 4:  # SDPA (bool, True = attend) or eager (additive) mask
        m = mask[b if mask.shape[0] > 1 else 0, 0, r0:r1, :n_keys]
        return m.float() if m.is_floating_point() else ~m
    if mask is not None and mask.dim() != 2:
        raise ValueError(f"native tracing cannot read an attention mask of type {type(mask).__name__} "
                         f"with {mask.dim()} dimensions: use sdpa, eager or flash attention")
    q = torch.arange(r0, r1, device=device)[:, None]
    k = torch.arange(n_keys, device=device)[None, :]
    hidden = k > q  # mask None: plain causal (SDPA is_causal / flash); 2D: flash's padding mask
    if kwargs.get("sliding_window"):
        hidden |= k <= q - kwargs["sliding_window"]
    if mask is not None:
        hidden |= ~mask[b, :n_keys].bool()[None, :]
    return hidden


def _kv_runs(heads: list[int], n_heads: int, n_kv: int, device) -> list[tuple[int, slice, torch.Tensor]]:
    """Consecutive query heads of one layer that read the same KV head (GQA): (KV head, where they
    sit in ``heads``, their indices as a tensor on ``device``), so no index is built per forward."""
    runs, start = [], 0
    for kv, run in itertools.groupby(heads, key=lambda h: kv_head(h, n_heads, n_kv)):
        run = list(run)
        runs.append((kv, slice(start, start + len(run)), torch.tensor(run, device=device)))
        start += len(run)
    return runs


class AttentionRecorder:
    """Reduce the attention of ``heads`` during an ordinary forward pass (no second pass).

    ``rows[b] = (steps, answer)`` in padded-tensor coordinates of batch row b; padding is read
    from the attention mask the model builds.  A subclass says from which query row on it reads
    the attention (`first_row`: the answer's first token unless it says otherwise; rows run to the
    answer's end) and what each layer's rows are reduced to (`reduce`).  After the ``with`` block,
    ``scores[b]`` holds every head's reduction, float32 on the CPU, heads first in request order.
    The model's outputs are unchanged.  One forward pass per recorder.
    """

    def __init__(self, model, heads: list[Head], rows: list[tuple[list[Span], Span]], names: list[str] | None = None):
        self.model = model
        self.layout = HeadLayout(check_heads(heads, model.config))
        _, self.n_heads, self.n_kv = model_shape(model.config)
        self.names = names or [f"batch row {b}" for b in range(len(rows))]
        for (steps, answer), name in zip(rows, self.names):
            check_spans(steps, answer, answer[1], name)
        self.rows = rows
        device = next(model.parameters()).device  # per-forward constants built once, here
        self._runs = {layer: _kv_runs(hs, self.n_heads, self.n_kv, device)
                      for layer, hs in self.layout.by_layer.items()}
        self._steps = [torch.tensor(steps, device=device) for steps, _ in rows]
        self.scores: list[torch.Tensor] = []
        self._parts: list[dict[int, torch.Tensor]] = [{} for _ in rows]

    def __enter__(self) -> Self:
        config = self.model.config
        if id(config) in _ACTIVE:
            raise RuntimeError("an attention recorder is already active on this model")
        self._original = config._attn_implementation or "eager"
        config._attn_implementation = _register(self._original)
        _ACTIVE[id(config)] = self
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        _ACTIVE.pop(id(self.model.config), None)
        self.model.config._attn_implementation = self._original
        if exc_type is None:
            self.scores = [self._finish(parts, name) for parts, name in zip(self._parts, self.names)]

    def _finish(self, parts: dict[int, torch.Tensor], name: str) -> torch.Tensor:
        missing = [layer for layer in self.layout.by_layer if layer not in parts]
        if missing:
            raise RuntimeError(f"{name}: no attention call was seen for layers {missing}")
        scores = self.layout.assemble(parts)
        if not torch.isfinite(scores).all():
            raise ValueError(f"{name}: NaN/inf in the step scores (is the answer span padding?)")
        return scores

    @torch.no_grad()
    def capture(self, module, query: torch.Tensor, key: torch.Tensor, mask, kwargs: dict) -> None:
        """query [B, H, T, D], key [B, KV, T, D] after RoPE -> this layer's part of each row's result."""
        heads = self.layout.by_layer.get(module.layer_idx)
        if not heads:
            return
        if query.shape[0] != len(self.rows) or query.shape[2] != key.shape[2]:
            raise ValueError(f"recorder expects a full forward of {len(self.rows)} rows without cache, "
                             f"got queries {tuple(query.shape)} and keys {tuple(key.shape)}")
        if module.layer_idx in self._parts[0]:
            raise RuntimeError(f"layer {module.layer_idx} was captured twice: use one recorder per forward pass")
        if kwargs.get("softcap") or kwargs.get("s_aux") is not None:
            raise ValueError("native tracing does not support attention softcapping or sinks: use the eager backend")
        for b, (_, (a0, a1)) in enumerate(self.rows):
            if a1 > query.shape[2]:
                raise ValueError(f"{self.names[b]}: answer span ({a0}, {a1}) is outside the {query.shape[2]} tokens")
            chunks = self._attention_rows(module.layer_idx, query[b], key[b], mask, b, (self.first_row(b), a1),
                                          kwargs)
            self._parts[b][module.layer_idx] = self.reduce(b, len(heads), chunks)

    def _attention_rows(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask, b: int, span: Span,
                        kwargs: dict) -> Iterator[tuple[slice, int, int, torch.Tensor]]:
        """The attention of query rows ``span`` of batch row b, chunk by chunk: (where the heads sit
        in this layer's list, first row, end row, probabilities ``[g, r1 - r0, r1]``).  A chunk's
        keys stop at its last row (causal: no row before r1 sees a later key)."""
        start, end = span
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        chunk = max(1, CHUNK_ELEMENTS // (len(self.layout.by_layer[layer]) * end))
        all_keys = key[:, :end].float()  # [KV, end, D], converted once for every chunk
        for r0 in range(start, end, chunk):
            r1 = min(r0 + chunk, end)
            keys = all_keys[:, :r1]
            hidden = _rows_mask(mask, b, r0, r1, r1, kwargs, query.device)  # [r1 - r0, r1]
            for kv, at, idx in self._runs[layer]:
                q = query[idx, r0:r1].float()  # [g, r1 - r0, D]
                # one 2-D matmul for the whole run: several times faster on CPU than a batched one
                logits = (q.reshape(-1, q.shape[-1]) @ keys[kv].T).view(len(idx), r1 - r0, r1).mul_(scaling)
                if hidden.dtype == torch.bool:
                    logits.masked_fill_(hidden, -torch.inf)
                else:
                    logits.add_(hidden)
                yield at, r0, r1, logits.softmax(-1)

    def first_row(self, b: int) -> int:
        """The first query row the reduction of batch row b reads: the answer's first token."""
        return self.rows[b][1][0]

    def reduce(self, b: int, n_heads: int, chunks) -> torch.Tensor:
        """One layer's attention rows of batch row b, as `_attention_rows` yields them -> [n_heads, ...]."""
        raise NotImplementedError


class StepScoreRecorder(AttentionRecorder):
    """Answer->step scores: ``scores[b]`` is [len(heads), K_b] (only the answer rows are computed)."""

    def reduce(self, b: int, n_heads: int, chunks) -> torch.Tensor:
        """Each key's attention mass from F, averaged over each step."""
        mass = torch.zeros(n_heads, self.rows[b][1][1], device=self._steps[b].device)
        for at, _, r1, probs in chunks:
            mass[at, :r1] += probs.sum(1)
        return span_means(mass, self._steps[b])


def record_batches(recorder: type[AttentionRecorder], model, batches: list[list[TraceItem]],
                   heads: list[Head]) -> Iterator[list[torch.Tensor]]:
    """Per batch of items, right-padded, one forward of the model's body (no LM head: not needed)
    under ``recorder``: yields its ``scores``, one tensor per item."""
    for batch in batches:
        ids, mask = pad_right(batch, next(model.parameters()).device)
        names = [f"trace {it.trace_id!r}" for it in batch]
        with torch.no_grad(), recorder(model, heads, [(it.steps, it.answer) for it in batch], names) as rec:
            model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        yield rec.scores
