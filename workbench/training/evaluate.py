"""Held-out evaluation at the start and end of a run, on the same prompts with the same seed."""

from __future__ import annotations

import torch

from workbench.config import Config
from workbench.generation import sample
from workbench.tasks import Prompt, Task, step_label_stats
from workbench.training.batch import autocast


@torch.no_grad()
def evaluate_policy(model, tokenizer, task: Task, prompts: list[Prompt], cfg: Config, segmenter: str) -> dict:
    """Accuracy and mean response tokens, and on a task with step labels how much of the thinking
    is redundant (segmented with ``segmenter``).

    Sampling runs in a forked RNG seeded with ``eval.seed``, so the start and final evaluations
    draw alike and the training RNG is left untouched.
    """
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    e = cfg.eval
    with torch.random.fork_rng(devices=devices), autocast(device):
        torch.manual_seed(e.seed)
        out = sample(model, tokenizer, [p.ids for p in prompts], max_new_tokens=e.max_new_tokens,
                     temperature=e.temperature, top_p=e.top_p, batch_size=cfg.rollout.batch_size)
    correct = [task.verify(p, t) for p, t in zip(prompts, out.texts)]
    result = {
        "n": len(prompts),
        "temperature": e.temperature,
        "accuracy": sum(correct) / len(prompts),
        "mean_response_tokens": sum(len(r) for r in out.response_ids) / len(prompts),
    }
    if task.has_step_labels:
        result.update(step_label_stats(tokenizer, out.response_ids,
                                       lambda i, texts: task.step_labels(prompts[i], texts), segmenter))
    result["truncated_fraction"] = sum(out.truncated) / len(prompts)
    return result
