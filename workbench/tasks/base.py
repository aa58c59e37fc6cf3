"""What a task is: prompts to train and evaluate on, a verifier, and optionally true step labels.

A ``Task`` is built for one config and one tokenizer, so every ``Prompt`` it hands out carries its
token ids, tokenised once here (a chat template that writes BOS gets no second one from the
tokenizer).  Sampling, verification, segmentation, the oracle and the step metrics all go through
the task; generic trainer code never asks which task it runs.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.steps import segment_ids

if TYPE_CHECKING:
    from workbench.config import Config

STEP_LABELS = ("critical", "redundant", "plan")


@dataclass
class Prompt:
    text: str  # exactly what the model is given (chat template and suffix applied)
    ids: list[int]  # its token ids, special tokens included once
    answer: str | None  # reference answer for the verifier
    truth: object = None  # task-specific ground truth (an organism's Problem), handed back to the task


class Task(ABC):
    """One task for one tokenizer.  Subclasses set ``name`` and ``segmenter`` (the default steps
    preset) and implement the abstract methods; tasks with ground-truth steps override
    ``step_labels`` and set ``has_step_labels``."""

    name: str
    segmenter: str = "r1"
    has_step_labels: bool = False

    @abstractmethod
    def draw(self, rng: random.Random, n: int) -> list[Prompt]:
        """``n`` training prompts drawn with ``rng`` (the trainer's prompt stream)."""

    @abstractmethod
    def held_out(self, n: int, seed: int) -> list[Prompt]:
        """Up to ``n`` evaluation prompts chosen by ``seed``, never prompts that training draws."""

    @abstractmethod
    def held_out_info(self, seed: int) -> dict:
        """Where ``held_out(n, seed)`` comes from, for ``eval_start.json``."""

    @abstractmethod
    def verify(self, prompt: Prompt, response: str) -> bool:
        """Is ``response`` (decoded, special tokens removed) a correct answer to ``prompt``?"""

    def step_labels(self, prompt: Prompt, step_texts: Sequence[str]) -> list[str] | None:
        """The true label (one of ``STEP_LABELS``) of each step of a response, or None without ground truth."""
        return None

    def reference_response(self, prompt: Prompt, rng: random.Random) -> str:
        """A known-correct response to ``prompt`` (for tests and benchmarks); not every task has them."""
        raise NotImplementedError(f"task {self.name!r} has no reference responses")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to build it for a config and tokenizer, whether it labels steps (the
    oracle and the precision metrics need labels), and the config checks of the ``data.*`` keys it
    reads (raising ``ConfigError`` naming the key), run when a config is loaded."""

    name: str
    build: Callable[["Config", object], Task]
    has_step_labels: bool
    check: Callable[["Config"], None]


def step_label_stats(tokenizer, response_ids: Sequence[Sequence[int]],
                     labels_of: Callable[[int, list[str]], list[str]], preset: str) -> dict:
    """How much of what the model wrote is redundant: each response is segmented from its ids with
    ``preset`` and its steps labelled by ``labels_of(i, step_texts)``."""
    steps = redundant_steps = critical_steps = redundant_tokens = segmented = 0
    for i, ids in enumerate(response_ids):
        seg = segment_ids(tokenizer, ids, preset=preset)
        if not seg.ok:
            continue
        segmented += 1
        labels = labels_of(i, seg.step_texts)
        steps += len(labels)
        critical_steps += sum(label == "critical" for label in labels)
        for label, (a, b) in zip(labels, seg.steps):
            if label == "redundant":
                redundant_steps += 1
                redundant_tokens += b - a
    n_tokens = sum(len(r) for r in response_ids)
    return {
        "steps_per_response": steps / max(segmented, 1),
        "critical_steps_per_response": critical_steps / max(segmented, 1),
        "redundant_step_fraction": redundant_steps / max(steps, 1),
        "redundant_token_fraction": redundant_tokens / max(n_tokens, 1),
        "segmented_fraction": segmented / max(len(response_ids), 1),
    }
