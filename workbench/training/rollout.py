"""One rollout: sample G responses per prompt, verify them, and segment the correct ones into steps."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from workbench.config import RolloutConfig
from workbench.generation import encode_prompts, sample
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

    def step_labels(self, i: int) -> list[str] | None:
        """Organism ground truth of response i's steps (None without a problem or segmentation)."""
        seg, problem = self.segments[i], self.prompts[i].problem
        if problem is None or not self.rescalable(i):
            return None
        return [label for label, _ in task.label_response(problem, [t.strip() for t in seg.step_texts])]


@torch.no_grad()
def generate_rollout(model, tokenizer, prompts: list[Prompt], cfg: RolloutConfig, verifier: Verifier,
                     segmenter: str) -> Rollout:
    """Sample ``cfg.group_size`` responses for each prompt with the KV-cached batched sampler."""
    group = [p for p in prompts for _ in range(cfg.group_size)]
    prompt_ids = encode_prompts(tokenizer, [p.text for p in group])
    out = sample(model, tokenizer, prompt_ids, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, batch_size=cfg.batch_size)
    return assemble_rollout(tokenizer, group, out.prompt_ids, out.response_ids, out.truncated, len(prompts),
                            cfg.group_size, verifier, segmenter)


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
    return assemble_rollout(tokenizer, group, encode_prompts(tokenizer, [p.text for p in group]), response_ids,
                            [False] * len(group), len(prompts), group_size, verifier, segmenter)


def assemble_rollout(tokenizer, group: list[Prompt], prompt_ids: list[list[int]], response_ids: list[list[int]],
                     truncated: list[bool], n_prompts: int, group_size: int, verifier: Verifier,
                     segmenter: str) -> Rollout:
    """Decode, verify and segment (correct responses only) a batch of responses."""
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    correct = [verifier(p.text, text, p.answer) for p, text in zip(group, texts)]
    correct_ids = [ids for ok, ids in zip(correct, response_ids) if ok]
    segmented = iter(segment_batch(correct_ids, tokenizer, preset=segmenter))
    segments = [next(segmented) if ok else None for ok in correct]
    return Rollout(group, prompt_ids, response_ids, texts, truncated,
                   torch.tensor(correct).view(n_prompts, group_size), segments)
