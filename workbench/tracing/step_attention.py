"""Step x step attention of each head: what label-free head ranking reads (analyses/label_free.py).

    A[h, i, j] = mean over the query tokens m of segment i and the key tokens n of step j of a[h, m -> n]

The segments are the K steps and, last, the answer F, so A is [K + 1, K]: row i is what segment i
gives each step (0 where j > i: causal), column j what step j receives from all later text. F's row
times |F| is the answer->step score S of reduce.py.  Tokens between segments (``</think>``, gaps)
are neither rows nor columns.

Captured like the native tracer, inside the model's own forward pass (`AttentionRecorder`): per
layer, the query rows from the first step on (not only the answer's), in chunks, each chunk's
attention reduced at once to [segment, step] sums.  Never T x T: O(H·chunk·T) transient memory
per layer, O(L·H·K²) kept.  The cost is about one more attention computation per layer (all
rows, not only |F| as for S).
"""

from __future__ import annotations

import torch

from workbench.heads import Head
from workbench.tracing.items import Span, TraceItem
from workbench.tracing.native import AttentionRecorder, record_batches
from workbench.tracing.reduce import add_block_sums, row_segments


class StepAttentionRecorder(AttentionRecorder):
    """``scores[b]`` is [len(heads), K_b + 1, K_b]: the step x step matrix of each head."""

    def __init__(self, model, heads: list[Head], rows: list[tuple[list[Span], Span]], names: list[str] | None = None):
        super().__init__(model, heads, rows, names)
        device = next(model.parameters()).device
        self._segments = [row_segments(steps, answer).to(device) for steps, answer in rows]
        lengths = [torch.tensor([e - s for s, e in [*steps, answer]], dtype=torch.float64, device=device)
                   for steps, answer in rows]
        self._sizes = [n[:, None] * n[None, :-1] for n in lengths]  # tokens in each (segment, step) block

    def first_row(self, b: int) -> int:
        """Every step's rows are read, not only the answer's."""
        return self.rows[b][0][0][0]

    def reduce(self, b: int, n_heads: int, chunks) -> torch.Tensor:
        """Attention summed per (segment, step) block, then divided by the block's token count."""
        out = torch.zeros(n_heads, len(self.rows[b][0]) + 1, len(self.rows[b][0]), dtype=torch.float64,
                          device=self._steps[b].device)
        first = self.first_row(b)
        for at, r0, r1, probs in chunks:
            add_block_sums(out[at], probs, self._segments[b][r0 - first : r1 - first], self._steps[b])
        return (out / self._sizes[b]).float()


def step_attention_batches(model, tokenizer, batches: list[list[TraceItem]], heads: list[Head]):
    """Per batch of items (right-padded), one [len(heads), K + 1, K] float32 CPU tensor per item."""
    return record_batches(StepAttentionRecorder, model, batches, heads)
