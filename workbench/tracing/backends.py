"""Tracing backends.  Each is a generator: set up once, then yield, per batch of items, one
[len(heads), K] float32 CPU tensor per item, heads in request order.

- ``native``: the capture inside the model's own SDPA/flash forward (native.py), the default.
- ``nnsight``: eager attention on a copy, traced with nnsight; ``self_attn.output[1]`` is reduced
  inside the trace, so only one layer's pattern is alive at a time.
- ``transformer_lens``: a ``TransformerBridge`` over a copy; ``hook_pattern`` reduced in a hook.
- ``eager``: the reference -- ``output_attentions`` of the model itself switched to eager
  (restored afterwards), one unpadded item at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from workbench.heads import Head, hook_name
from workbench.tracing.items import TraceItem, pad_right
from workbench.tracing.native import StepScoreRecorder, record_batches
from workbench.tracing.reduce import HeadLayout, pattern_step_scores

Batches = list[list[TraceItem]]


def _rows(batch: list[TraceItem]):
    return [(it.steps, it.answer) for it in batch]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def attn_implementation(model, name: str):
    """Run with another attention implementation, restoring the model's own afterwards."""
    before = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield model
    finally:
        model.config._attn_implementation = before


def native(model, tokenizer, batches: Batches, heads: list[Head]) -> Iterator[list[torch.Tensor]]:
    return record_batches(StepScoreRecorder, model, batches, heads)


def eager(model, tokenizer, batches: Batches, heads: list[Head]) -> Iterator[list[torch.Tensor]]:
    layout = HeadLayout(heads)
    for batch in batches:
        out = []
        for it in batch:
            ids = torch.tensor([it.input_ids], device=_device(model))
            with torch.no_grad(), attn_implementation(model, "eager"):
                patterns = model.base_model(input_ids=ids, output_attentions=True, use_cache=False).attentions
            out.append(layout.assemble({layer: pattern_step_scores(patterns[layer], _rows([it]), hs)[0]
                                        for layer, hs in layout.by_layer.items()}))
        yield out


def nnsight(model, tokenizer, batches: Batches, heads: list[Head]) -> Iterator[list[torch.Tensor]]:
    import nnsight as ns
    from nnsight import TransformersModel

    layout = HeadLayout(heads)
    twin = copy.deepcopy(model)
    twin.config._attn_implementation = "eager"
    lm = TransformersModel(twin, tokenizer=tokenizer)
    layers = getattr(lm, twin.base_model_prefix).layers
    for batch in batches:
        ids, mask = pad_right(batch, _device(model))
        saved: dict[int, list[torch.Tensor]] = {}  # created outside the trace, so it comes back
        with torch.no_grad(), lm.trace(ids, attention_mask=mask, use_cache=False, logits_to_keep=1):
            for layer, hs in layout.by_layer.items():
                saved[layer] = ns.save(pattern_step_scores(layers[layer].self_attn.output[1], _rows(batch), hs))
        yield [layout.assemble({layer: saved[layer][b] for layer in saved}) for b in range(len(batch))]


def transformer_lens(model, tokenizer, batches: Batches, heads: list[Head]) -> Iterator[list[torch.Tensor]]:
    from transformer_lens.model_bridge import TransformerBridge

    layout = HeadLayout(heads)
    # The bridge rebuilds a tokenizer from disk unless told that it already adds BOS; we pass ids.
    bridge_tok = copy.deepcopy(tokenizer)
    bridge_tok.init_kwargs.update(add_bos_token=True, name_or_path=tokenizer.name_or_path)
    bridge = TransformerBridge.boot_transformers(
        model.name_or_path or model.config.model_type, hf_model=copy.deepcopy(model), tokenizer=bridge_tok,
        device=_device(model), dtype=next(model.parameters()).dtype)
    for batch in batches:
        ids, mask = pad_right(batch, _device(model))
        parts: dict[int, list[torch.Tensor]] = {}

        def reduce_hook(pattern, hook, layer):
            parts[layer] = pattern_step_scores(pattern.detach(), _rows(batch), layout.by_layer[layer])

        hooks = [(hook_name(layer), lambda p, hook, layer=layer: reduce_hook(p, hook, layer)) for layer in layout.by_layer]
        with torch.no_grad():
            bridge.run_with_hooks(ids, attention_mask=mask, return_type=None, fwd_hooks=hooks)
        yield [layout.assemble({layer: parts[layer][b] for layer in parts}) for b in range(len(batch))]


BACKENDS = {"native": native, "nnsight": nnsight, "transformer_lens": transformer_lens, "eager": eager}
