"""The no-grad old-log-prob pass, which also captures the KFH step scores (no second forward), and
the oracle's step scores from the task's true labels."""

from __future__ import annotations

import torch

from workbench.advantages import oracle_scores
from workbench.heads import Head
from workbench.tracing import StepScoreRecorder
from workbench.training.batch import Packed
from workbench.training.logprobs import response_logprobs
from workbench.training.rollout import Rollout

Spans = tuple[list[tuple[int, int]], tuple[int, int]]  # (step spans, answer span), absolute


@torch.no_grad()
def old_logprobs(model, packed: Packed, micro_batch_size: int, heads: list[Head] | None = None,
                 spans: list[Spans | None] | None = None, temperature: float = 1.0
                 ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Old log-probs ``[N, T]`` at the sampling ``temperature`` and, with ``heads``, each spanned
    row's step scores ``[K]`` (mean over the heads), recorded inside that same forward pass.

    Spanned rows go into micro-batches of their own, so every row a recorder sees has steps;
    rows are taken in order of length, so little compute goes to padding.
    """
    device = next(model.parameters()).device
    n = packed.input_ids.shape[0]
    by_length = packed.seq_lens.argsort().tolist()
    wanted = {i for i in range(n) if heads and spans is not None and spans[i] is not None}
    scored = [i for i in by_length if i in wanted]
    plain = [i for i in by_length if i not in wanted]
    logp = torch.zeros(packed.mask.shape)
    scores: list[torch.Tensor | None] = [None] * n
    for group, record in ((scored, True), (plain, False)):
        for start in range(0, len(group), micro_batch_size):
            rows = group[start : start + micro_batch_size]
            batch = packed.rows(torch.tensor(rows), device)
            if record:
                recorder = StepScoreRecorder(model, heads, [spans[i] for i in rows],
                                             names=[f"response {i}" for i in rows])
                with recorder:
                    logp[rows] = response_logprobs(model, batch, temperature).cpu()
                for i, s in zip(rows, recorder.scores):
                    scores[i] = s.mean(0)
            else:
                logp[rows] = response_logprobs(model, batch, temperature).cpu()
    return logp, scores


def oracle_step_scores(rollout: Rollout) -> list[torch.Tensor | None]:
    """True-label scores of every rescalable response (see ``advantages.oracle_scores``)."""
    return [None if labels is None else oracle_scores(labels) for labels in rollout.step_labels]
