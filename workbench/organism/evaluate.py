"""Measure the organism (or any checkpoint of it): accuracy and how much it overthinks.

Responses are sampled from fresh prompts, verified, segmented with the ``organism`` preset and
labelled with the task's ground truth, so the overthinking numbers count what the model
actually wrote, not what its training data looked like.
"""

from __future__ import annotations

import random

from collections import Counter

from workbench.generation import encode_prompts, sample
from workbench.organism import organism_of, task
from workbench.steps import segment_ids


def held_out_problems(n: int, seed: int = 12345) -> list[task.Problem]:
    """Problems from a seed the training sampler never uses (it draws from its own stream)."""
    rng = random.Random(seed)
    return [task.sample_problem(rng) for _ in range(n)]


def evaluate(model, tokenizer, problems: list[task.Problem], temperature: float = 1.0, top_p: float = 1.0,
             max_new_tokens: int = 320, batch_size: int = 64) -> dict:
    """Accuracy, lengths, the redundant share of steps and tokens, and the steps of each kind per
    response, over sampled responses, labelled by the task of the organism ``tokenizer`` speaks."""
    labeller = organism_of(tokenizer).task
    out = sample(model, tokenizer, encode_prompts(tokenizer, [p.prompt() for p in problems]),
                 max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size)
    correct = [labeller.verify(p, t) for p, t in zip(problems, out.texts)]
    steps = redundant_steps = critical_steps = redundant_tokens = segmented = 0
    kinds: Counter = Counter()
    for p, ids in zip(problems, out.response_ids):
        seg = segment_ids(tokenizer, ids, preset="organism")
        if not seg.ok:
            continue
        segmented += 1
        labels = labeller.label_response(p, [t.strip() for t in seg.step_texts])
        kinds.update(kind for _, kind in labels)
        steps += len(labels)
        critical_steps += sum(label == "critical" for label, _ in labels)
        for (label, _), (a, b) in zip(labels, seg.steps):
            if label == "redundant":
                redundant_steps += 1
                redundant_tokens += b - a
    n_tokens = sum(len(r) for r in out.response_ids)
    return {
        "n": len(problems),
        "temperature": temperature,
        "accuracy": sum(correct) / len(problems),
        "mean_response_tokens": n_tokens / len(problems),
        "steps_per_response": steps / max(segmented, 1),
        "critical_steps_per_response": critical_steps / max(segmented, 1),
        "redundant_step_fraction": redundant_steps / max(steps, 1),
        "redundant_token_fraction": redundant_tokens / max(n_tokens, 1),
        "segmented_fraction": segmented / len(problems),
        "truncated_fraction": sum(out.truncated) / len(problems),
        "kinds_per_response": {k: v / max(segmented, 1) for k, v in sorted(kinds.items())},
    }
