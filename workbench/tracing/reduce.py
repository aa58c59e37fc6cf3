"""The score itself: attention rows of the answer tokens reduced to one number per (head, step).

S[h, k] = (1/|s_k|) * sum_{m in F} sum_{n in s_k} a[h, m -> n]   (attnpo-method.md §2)

And the step x step matrix that label-free head ranking reads (step_attention.py): attention rows
of any segment (a step, or F) reduced to sums per key step (`add_block_sums`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.heads import Head
from workbench.tracing.items import Span


def span_means(column_sums: torch.Tensor, steps: list[Span] | torch.Tensor) -> torch.Tensor:
    """[..., T] attention mass per key (summed over the answer rows) -> [..., K] mean over each step.

    ``steps`` may be a [K, 2] integer tensor already on the device (no host-to-device copy per call).
    A float64 prefix sum keeps short steps exact even when T is 16k and the row mass is |F|.
    """
    prefix = F.pad(column_sums.double().cumsum(-1), (1, 0))
    starts, ends = torch.as_tensor(steps, device=prefix.device).unbind(-1)
    return ((prefix[..., ends] - prefix[..., starts]) / (ends - starts)).float()


def answer_step_scores(probs: torch.Tensor, steps: list[Span]) -> torch.Tensor:
    """[..., |F|, T] attention probabilities of the answer rows -> [..., K] step scores."""
    return span_means(probs.float().sum(-2), steps)


def row_segments(steps: list[Span], answer: Span) -> torch.Tensor:
    """Segment of each position in [first step start, answer end): step k is k, F is K, any gap -1."""
    first = steps[0][0]
    seg = torch.full((answer[1] - first,), -1, dtype=torch.long)
    for k, (s, e) in enumerate([*steps, answer]):
        seg[s - first : e - first] = k
    return seg


def add_block_sums(out: torch.Tensor, probs: torch.Tensor, segments: torch.Tensor, steps: torch.Tensor) -> None:
    """Add the attention of some query rows to ``out`` [..., S, K] (float64): out[..., i, j] += the
    attention the rows of segment i give to the keys of step j.

    ``probs`` [..., rows, n_keys]; ``segments`` [rows] the segment of each row (-1: none, dropped);
    ``steps`` a [K, 2] integer tensor of key spans (keys at or beyond ``n_keys`` count as 0).
    Rows are summed per segment first, so the prefix sum over keys runs once per segment present.
    """
    keep = segments >= 0
    if not keep.any():
        return
    segs = segments[keep]
    lo, hi = int(segs.min()), int(segs.max())
    summed = probs.new_zeros(*probs.shape[:-2], hi - lo + 1, probs.shape[-1])
    summed.index_add_(-2, segs - lo, probs[..., keep, :])
    prefix = F.pad(summed.double().cumsum(-1), (1, 0))
    starts, ends = steps.clamp(max=probs.shape[-1]).unbind(-1)
    out[..., lo : hi + 1, :] += prefix[..., ends] - prefix[..., starts]


class HeadLayout:
    """Where each requested head lives: heads grouped by layer, and the way back to request order."""

    def __init__(self, heads: list[Head]):
        self.heads = list(heads)
        self.by_layer: dict[int, list[int]] = {}
        for layer, head in sorted(set(self.heads)):
            self.by_layer.setdefault(layer, []).append(head)
        flat = [(layer, h) for layer, hs in self.by_layer.items() for h in hs]
        self._order = [flat.index(h) for h in self.heads]

    def assemble(self, per_layer: dict[int, torch.Tensor]) -> torch.Tensor:
        """{layer: [heads of that layer, K]} -> [len(heads), K] in request order, float32 on the CPU."""
        stacked = torch.cat([per_layer[layer] for layer in self.by_layer])
        return stacked[self._order].float().cpu()


def pattern_step_scores(pattern: torch.Tensor, rows: list[tuple[list[Span], Span]], heads: list[int]) -> list[torch.Tensor]:
    """Full [B, H, T, T] attention pattern of one layer -> per batch row [len(heads), K] scores."""
    return [answer_step_scores(pattern[b, heads, a0:a1], steps) for b, (steps, (a0, a1)) in enumerate(rows)]
