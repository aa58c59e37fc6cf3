"""What gets traced: a token sequence with its step spans and answer span, checked and batched."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Span = tuple[int, int]


@dataclass
class TraceItem:
    input_ids: list[int]  # prompt + response, unpadded
    steps: list[Span]  # ABSOLUTE token spans [start, end) of the steps
    answer: Span  # ABSOLUTE span of the final answer F
    trace_id: str = ""  # named in every error


def check_spans(steps: list[Span], answer: Span, length: int, name: str) -> None:
    """Raise ValueError naming ``name`` unless the steps are non-empty, in order, non-overlapping,
    inside ``[0, length)`` and the non-empty answer span comes after the last of them."""
    if not steps:
        raise ValueError(f"{name}: no steps to score")
    prev_end = 0
    for k, (s, e) in enumerate(steps):
        if not 0 <= s < e <= length:
            raise ValueError(f"{name}: step {k} span ({s}, {e}) is empty or outside the {length} tokens")
        if s < prev_end:
            raise ValueError(f"{name}: step {k} span ({s}, {e}) overlaps or precedes step {k - 1}")
        prev_end = e
    a0, a1 = answer
    if not 0 <= a0 < a1 <= length:
        raise ValueError(f"{name}: answer span ({a0}, {a1}) is empty or outside the {length} tokens")
    if a0 < prev_end:
        raise ValueError(f"{name}: answer span ({a0}, {a1}) does not come after the last step (ends at {prev_end})")


def check_item(item: TraceItem, max_len: int | None) -> None:
    """Validate one item against itself and the model's context length."""
    name = f"trace {item.trace_id!r}"
    if max_len is not None and len(item.input_ids) > max_len:
        raise ValueError(f"{name}: {len(item.input_ids)} tokens exceed the model's context of {max_len}")
    check_spans(item.steps, item.answer, len(item.input_ids), name)


def pad_right(items: list[TraceItem], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask``: every real token keeps its unpadded
    position, so spans need no shift and causal attention never sees a pad."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for b, it in enumerate(items):
        ids[b, : len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[b, : len(it.input_ids)] = 1
    return ids.to(device), mask.to(device)
