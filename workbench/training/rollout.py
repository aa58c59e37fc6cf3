"""One rollout: sample G responses per prompt, verify them, and segment the correct ones into steps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

import torch

from workbench.config import RolloutConfig
from workbench.generation import Samples, encode_prompts, sample
from workbench.organism import task
from workbench.steps import Segmentation, segment_batch
from workbench.training.data import Prompt
from workbench.verifiers import Verifier


@dataclass
class Rollout:
    prompts: list[Prompt]  # N = P * G, each prompt repeated G times (group-major)
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    correct: torch.Tensor  # [P, G] bool
    segments: list[Segmentation | None]  # only correct responses are segmented

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

    def spans(self) -> list[tuple[list[tuple[int, int]], tuple[int, int]] | None]:
        """Absolute (steps, answer) token spans of each rescalable response, None for the rest."""
        return [self.segments[i].absolute(len(p)) if self.rescalable(i) else None
                for i, p in enumerate(self.prompt_ids)]

    @cached_property
    def step_labels(self) -> list[list[str] | None]:
        """Organism ground truth of each rescalable response's steps (None without a problem);
        labelled once, read by the oracle's scores and by the step metrics."""
        return [[label for label, _ in task.label_response(p.problem, [t.strip() for t in seg.step_texts])]
                if p.problem is not None and self.rescalable(i) else None
                for i, (p, seg) in enumerate(zip(self.prompts, self.segments))]


@torch.no_grad()
def generate_rollout(model, tokenizer, prompts: list[Prompt], cfg: RolloutConfig, verifier: Verifier,
                     segmenter: str) -> Rollout:
    """Sample ``cfg.group_size`` responses for each prompt with the KV-cached batched sampler."""
    group = [p for p in prompts for _ in range(cfg.group_size)]
    prompt_ids = encode_prompts(tokenizer, [p.text for p in group])
    out = sample(model, tokenizer, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, batch_size=cfg.batch_size)
    return assemble_rollout(tokenizer, group, out, len(prompts), cfg.group_size, verifier, segmenter)


def reference_rollout(tokenizer, prompts: list[Prompt], group_size: int, verifier: Verifier, segmenter: str,
                      rng: random.Random) -> Rollout:
    """A rollout of the organism's own reference traces instead of samples: teacher-forced
    responses with known-good format and step labels, for tests and benchmarks."""
    group = [p for p in prompts for _ in range(group_size)]
    for p in group:
        if p.problem is None:
            raise ValueError("reference rollouts need organism prompts (with their problem)")
    response_ids = [tokenizer(task.sample_trace(rng, p.problem).response, add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id] for p in group]
    samples = Samples(encode_prompts(tokenizer, [p.text for p in group]), response_ids,
                      tokenizer.batch_decode(response_ids, skip_special_tokens=True), [False] * len(group))
    return assemble_rollout(tokenizer, group, samples, len(prompts), group_size, verifier, segmenter)


def assemble_rollout(tokenizer, group: list[Prompt], samples: Samples, n_prompts: int, group_size: int,
                     verifier: Verifier, segmenter: str) -> Rollout:
    """Verify the decoded responses and segment the correct ones (from their ids)."""
    correct = [verifier(p.text, text, p.answer) for p, text in zip(group, samples.texts)]
    correct_ids = [ids for ok, ids in zip(correct, samples.response_ids) if ok]
    segmented = iter(segment_batch(correct_ids, tokenizer, preset=segmenter))
    segments = [next(segmented) if ok else None for ok in correct]
    return Rollout(group, samples.prompt_ids, samples.response_ids, samples.texts, samples.truncated,
                   torch.tensor(correct).view(n_prompts, group_size), segments)
