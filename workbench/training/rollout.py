"""One rollout: sample G responses per prompt, verify them with the task, segment the correct ones
into steps, and label those steps when the task has ground truth."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from workbench.config import RolloutConfig
from workbench.generation import Samples, sample
from workbench.steps import Segmentation, segment_batch
from workbench.tasks import Prompt, Task

Span = tuple[int, int]


@dataclass
class Rollout:
    prompts: list[Prompt]  # N = P * G, each prompt repeated G times (group-major)
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    correct: torch.Tensor  # [P, G] bool
    segments: list[Segmentation | None]  # only correct responses are segmented
    step_labels: list[list[str] | None]  # the task's true label of each rescalable response's steps
    labelled: bool  # the task has step labels (the oracle and the precision metrics read them)

    @property
    def group_size(self) -> int:
        return self.correct.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        """[P, G] response tokens, EOS included."""
        return torch.tensor([len(r) for r in self.response_ids]).view(self.correct.shape)

    def rescalable(self, i: int) -> bool:
        """Correct with at least two steps: the responses whose steps may be rescaled."""
        seg = self.segments[i]
        return seg is not None and seg.ok and len(seg.steps) >= 2

    def spans(self) -> list[tuple[list[Span], Span] | None]:
        """Absolute (steps, answer) token spans of each rescalable response, None for the rest."""
        return [self.segments[i].absolute(len(p)) if self.rescalable(i) else None
                for i, p in enumerate(self.prompt_ids)]

    def step_spans(self) -> list[list[Span]]:
        """Step token spans relative to the response start; empty for responses not rescaled."""
        return [self.segments[i].steps if self.rescalable(i) else [] for i in range(len(self.response_ids))]

    def answer_lengths(self) -> torch.Tensor:
        """[N] |F|, the tokens after ``</think>`` (0 for responses not rescaled)."""
        return torch.tensor([float(self.segments[i].answer[1] - self.segments[i].answer[0]) if self.rescalable(i)
                             else 0.0 for i in range(len(self.response_ids))])

    def total_lengths(self) -> torch.Tensor:
        """[N] prompt + response tokens."""
        return torch.tensor([len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids)])


@torch.no_grad()
def generate_rollout(model, tokenizer, task: Task, prompts: list[Prompt], cfg: RolloutConfig,
                     segmenter: str) -> Rollout:
    """Sample ``cfg.group_size`` responses for each prompt with the KV-cached batched sampler."""
    group = [p for p in prompts for _ in range(cfg.group_size)]
    out = sample(model, tokenizer, [p.ids for p in group], max_new_tokens=cfg.max_new_tokens,
                 temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size)
    return assemble_rollout(tokenizer, task, group, out, len(prompts), cfg.group_size, segmenter)


def reference_rollout(tokenizer, task: Task, prompts: list[Prompt], group_size: int, segmenter: str,
                      rng: random.Random) -> Rollout:
    """A rollout of the task's own reference responses instead of samples: teacher-forced, known
    correct, with step labels -- for tests and benchmarks (tasks without references raise)."""
    group = [p for p in prompts for _ in range(group_size)]
    response_ids = [tokenizer(task.reference_response(p, rng), add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id] for p in group]
    samples = Samples([p.ids for p in group], response_ids,
                      tokenizer.batch_decode(response_ids, skip_special_tokens=True), [False] * len(group))
    return assemble_rollout(tokenizer, task, group, samples, len(prompts), group_size, segmenter)


def assemble_rollout(tokenizer, task: Task, group: list[Prompt], samples: Samples, n_prompts: int,
                     group_size: int, segmenter: str) -> Rollout:
    """Verify the decoded responses, segment the correct ones (from their ids) and label their steps."""
    correct = [task.verify(p, text) for p, text in zip(group, samples.texts)]
    correct_ids = [ids for ok, ids in zip(correct, samples.response_ids) if ok]
    segmented = iter(segment_batch(correct_ids, tokenizer, preset=segmenter))
    segments = [next(segmented) if ok else None for ok in correct]
    rollout = Rollout(group, samples.prompt_ids, samples.response_ids, samples.texts, samples.truncated,
                      torch.tensor(correct).view(n_prompts, group_size), segments, [], task.has_step_labels)
    rollout.step_labels = [task.step_labels(p, seg.step_texts) if rollout.rescalable(i) else None
                           for i, (p, seg) in enumerate(zip(group, segments))]
    return rollout
