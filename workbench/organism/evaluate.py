"""Measure the organism (or any checkpoint of it): accuracy and how much it overthinks.

Responses are sampled from fresh prompts, verified, segmented with the ``organism`` preset and
labelled with the task's ground truth, so the overthinking numbers count what the model
actually wrote, not what its training data looked like.
"""

from __future__ import annotations

import random

from workbench.generation import encode_prompts, sample
from workbench.organism import task
from workbench.tasks.base import step_label_stats


def held_out_problems(n: int, seed: int = 12345) -> list[task.Problem]:
    """Problems from a seed the training sampler never uses (it draws from its own stream)."""
    rng = random.Random(seed)
    return [task.sample_problem(rng) for _ in range(n)]


def evaluate(model, tokenizer, problems: list[task.Problem], temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 320, batch_size: int = 64) -> dict:
    """Accuracy, lengths and the redundant share of steps and tokens over sampled responses."""
    out = sample(model, tokenizer, encode_prompts(tokenizer, [p.prompt() for p in problems]),
                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size)
    correct = [task.verify(p, t) for p, t in zip(problems, out.texts)]
    stats = step_label_stats(tokenizer, out.response_ids, lambda i, texts: [
        label for label, _ in task.label_response(problems[i], [t.strip() for t in texts])], "organism")
    return {
        "n": len(problems),
        "temperature": temperature,
        "accuracy": sum(correct) / len(problems),
        "mean_response_tokens": sum(len(r) for r in out.response_ids) / len(problems),
        **stats,
        "truncated_fraction": sum(out.truncated) / len(problems),
    }
