"""Measure the organism (or any checkpoint of it): accuracy and how much it overthinks.

Responses are sampled from fresh prompts, verified, segmented with the ``organism`` preset and
labelled with the task's ground truth, so the overthinking numbers count what the model
actually wrote, not what its training data looked like.
"""

from __future__ import annotations

import random
from collections import Counter

from workbench.generation import encode_prompts, sample
from workbench.organism import task
from workbench.tasks.base import step_label_stats
from workbench.traces import require_organism


def held_out_problems(n: int, seed: int = 12345) -> list[task.Problem]:
    """Problems from a seed the training sampler never uses (it draws from its own stream)."""
    rng = random.Random(seed)
    return [task.sample_problem(rng) for _ in range(n)]


def evaluate(model, tokenizer, problems: list[task.Problem], temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 320, batch_size: int = 64) -> dict:
    """Accuracy, lengths, the redundant share of steps and tokens, and the steps of each kind per
    response, over sampled responses, labelled by the task of the organism ``tokenizer`` speaks."""
    labeller = require_organism(tokenizer, "the organism evaluation", "it measures organism checkpoints only").task
    out = sample(model, tokenizer, encode_prompts(tokenizer, [p.prompt() for p in problems]),
                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size)
    correct = [labeller.verify(p, t) for p, t in zip(problems, out.texts)]
    kinds: Counter = Counter()

    def labels_of(i: int, texts: list[str]) -> list[str]:
        pairs = labeller.label_response(problems[i], [t.strip() for t in texts])
        kinds.update(kind for _, kind in pairs)
        return [label for label, _ in pairs]

    stats = step_label_stats(tokenizer, out.response_ids, labels_of, "organism")
    segmented = stats["segmented_fraction"] * len(problems)
    return {
        "n": len(problems),
        "temperature": temperature,
        "accuracy": sum(correct) / len(problems),
        "mean_response_tokens": sum(len(r) for r in out.response_ids) / len(problems),
        **stats,
        "truncated_fraction": sum(out.truncated) / len(problems),
        "kinds_per_response": {k: v / max(segmented, 1) for k, v in sorted(kinds.items())},
    }
