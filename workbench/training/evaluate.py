"""Held-out evaluation at the start and end of a run, on the same prompts with the same seed."""

from __future__ import annotations

import torch

from workbench.config import Config
from workbench.generation import encode_prompts, sample
from workbench.organism.evaluate import evaluate as evaluate_organism
from workbench.training.batch import autocast
from workbench.verifiers import Verifier


@torch.no_grad()
def evaluate_policy(model, tokenizer, prompts, cfg: Config, verifier: Verifier) -> dict:
    """Accuracy and mean response tokens (and, on the organism, how much of the thinking is redundant).

    Sampling runs in a forked RNG seeded with ``eval.seed``, so the start and final evaluations
    draw alike and the training RNG is left untouched.
    """
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    e = cfg.eval
    with torch.random.fork_rng(devices=devices), autocast(device):
        torch.manual_seed(e.seed)
        if all(p.problem is not None for p in prompts):
            return evaluate_organism(model, tokenizer, [p.problem for p in prompts], temperature=e.temperature,
                                     top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                                     batch_size=cfg.rollout.batch_size)
        out = sample(model, tokenizer, encode_prompts(tokenizer, [p.text for p in prompts]),
                     max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p,
                     batch_size=cfg.rollout.batch_size)
    correct = [verifier(p.text, t, p.answer) for p, t in zip(prompts, out.texts)]
    return {
        "n": len(prompts),
        "temperature": e.temperature,
        "accuracy": sum(correct) / len(prompts),
        "mean_response_tokens": sum(len(r) for r in out.response_ids) / len(prompts),
        "truncated_fraction": sum(out.truncated) / len(prompts),
    }
