"""The no-grad old-log-prob pass, which also captures the KFH step scores (no second forward),
and the assembly of the per-step inputs of the advantage rescaling."""

from __future__ import annotations

import torch

from workbench.advantages import StepBatch, oracle_scores, pass_rate, step_index
from workbench.heads import Head
from workbench.tracing import StepScoreRecorder
from workbench.training.batch import Packed, response_logprobs
from workbench.training.rollout import Rollout

Spans = tuple[list[tuple[int, int]], tuple[int, int]]  # (step spans, answer span), absolute


@torch.no_grad()
def old_logprobs(model, packed: Packed, micro_batch_size: int, heads: list[Head] | None = None,
                 spans: list[Spans | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Old log-probs ``[N, T]`` and, with ``heads``, each spanned row's step scores ``[K]``
    (mean over the heads), recorded inside that same forward pass.

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
                    logp[rows] = response_logprobs(model, batch).cpu()
                for i, s in zip(rows, recorder.scores):
                    scores[i] = s.mean(0)
            else:
                logp[rows] = response_logprobs(model, batch).cpu()
    return logp, scores


def step_inputs(rollout: Rollout, advantages: torch.Tensor, scores: list[torch.Tensor | None] | None,
                step: int) -> tuple[StepBatch, torch.Tensor]:
    """The StepBatch of a rollout (rescalable responses' steps only) and the token->step index."""
    n = len(rollout.response_ids)
    steps = [rollout.segments[i].steps if rollout.rescalable(i) else [] for i in range(n)]
    k = max((len(s) for s in steps), default=0)
    padded = torch.zeros((n, k), dtype=torch.float64)
    mask = torch.zeros((n, k), dtype=torch.bool)
    answer_len = torch.zeros(n)
    for i, spans in enumerate(steps):
        if not spans:
            continue
        mask[i, : len(spans)] = True
        a, b = rollout.segments[i].answer
        answer_len[i] = b - a
        if scores is not None:
            if scores[i] is None or len(scores[i]) != len(spans):
                got = "none" if scores[i] is None else len(scores[i])
                raise ValueError(f"response {i}: {len(spans)} steps but {got} step scores")
            padded[i, : len(spans)] = scores[i].double()
    total_len = torch.tensor([len(p) + len(r) for p, r in zip(rollout.prompt_ids, rollout.response_ids)])
    batch = StepBatch(advantages, pass_rate(rollout.correct).reshape(-1), padded, mask, answer_len, total_len, step)
    width = max(len(r) for r in rollout.response_ids)
    return batch, step_index(steps, width)


def oracle_step_scores(rollout: Rollout) -> list[torch.Tensor | None]:
    """True-label scores of every rescalable organism response (see ``advantages.oracle_scores``)."""
    return [None if labels is None else oracle_scores(labels) for labels in rollout.step_labels]
