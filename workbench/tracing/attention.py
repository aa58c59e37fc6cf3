"""Token-level attention of the final answer: each answer token's attention over every earlier token.

Where ``trace_step_scores`` reduces the answer rows to one number per step, ``answer_attention``
keeps the rows themselves, for a few heads: ``[len(heads), |F|, a1]`` with ``a1`` the end of the
answer span (keys past it are never attended to by F).  It is captured inside the model's own
forward pass like the step scores (``AttentionRecorder``), so no T x T attention is built:
O(H·|F|·T) memory for H requested heads.  Summing the rows over F and averaging over a step's
tokens gives that step's score S_k.
"""

from __future__ import annotations

import torch

from workbench.heads import Head, check_heads
from workbench.models import LoadedModel
from workbench.tracing.items import TraceItem, check_item
from workbench.tracing.native import AttentionRecorder

MAX_HEADS = 64  # a token-level view of a few heads; all heads of a big model would be L·H·|F|·T floats


class AnswerAttentionRecorder(AttentionRecorder):
    """Keeps the answer rows themselves: ``scores[b]`` is ``[len(heads), |F|, a1]``."""

    def reduce(self, b: int, n_heads: int, chunks) -> torch.Tensor:
        a0, a1 = self.rows[b][1]
        rows = torch.zeros(n_heads, a1 - a0, a1, device=self._steps[b].device)
        for at, r0, r1, probs in chunks:
            rows[at, r0 - a0 : r1 - a0, :r1] = probs
        return rows


@torch.no_grad()
def answer_attention(model: LoadedModel | torch.nn.Module, item: TraceItem, heads: list[Head]) -> torch.Tensor:
    """``[len(heads), |F|, a1]`` float32 CPU: answer token ``i``'s attention over keys ``[0, a1)``
    for each head, in request order (rows sum to 1; keys after a row's own position are 0)."""
    hf = model.model if isinstance(model, LoadedModel) else model
    heads = check_heads(heads, hf.config)
    if not heads or len(heads) > MAX_HEADS:
        raise ValueError(f"answer_attention takes 1 to {MAX_HEADS} heads, got {len(heads)}")
    check_item(item, getattr(hf.config, "max_position_embeddings", None))
    ids = torch.tensor([item.input_ids], device=next(hf.parameters()).device)
    with AnswerAttentionRecorder(hf, heads, [(item.steps, item.answer)], [f"trace {item.trace_id!r}"]) as recorder:
        hf.base_model(input_ids=ids, use_cache=False)
    return recorder.scores[0]
