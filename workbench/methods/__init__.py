"""Advantage methods: one registered function per method turns a rollout's outcomes (and, for
step-level methods, its step scores) into token advantages ``[N, T]``.

``compute_advantages`` is the single entry point of every engine (the bundled trainer; a TRL
integration calls the same function): tensors in, tensors out, no model and no I/O.  It computes
the method's reward (length-penalised or 0/1), pads the step scores, dispatches on the registered
method and checks the shapes of what comes back.

A method is a function ``(AdvantageInputs, MethodParams) -> MethodOutput`` registered with
``@register_method(name, length_penalty=..., scores=...)``, as verl's ``register_adv_est`` registers
its estimators.  Adding one is a module in this package plus its name in the import line at the
bottom of this file; ``workbench.advantages`` holds the building blocks (RLOO, the step baseline,
the step factors gamma, token broadcasting).

Shapes: P prompt groups of G responses; N = P * G responses, group-major; T response-token
columns (the longest response); K step columns (the most steps of any rescaled response).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from workbench.advantages import MethodParams, step_index
from workbench.rewards import length_penalised_reward

Span = tuple[int, int]
SCORE_SOURCES = (None, "kfh", "oracle")


@dataclass
class AdvantageInputs:
    """What a method sees.  ``steps[i]`` is empty for every response that is not rescaled
    (incorrect, unsegmentable, fewer than two steps); ``step_mask`` marks the real steps."""

    rewards: torch.Tensor  # [P, G] the method's reward
    correct: torch.Tensor  # [P, G] bool
    lengths: torch.Tensor  # [P, G] response tokens, EOS included
    steps: list[list[Span]]  # [N] step token spans relative to the response start
    scores: torch.Tensor  # [N, K] float64 step scores (zero on padding, and when the method reads none)
    step_mask: torch.Tensor  # [N, K] bool
    answer_len: torch.Tensor  # [N] |F|: response tokens after </think> (read only where steps exist)
    total_len: torch.Tensor  # [N] |q| + |o|: prompt + response tokens
    step: int  # global training step t, 1-indexed
    width: int  # T

    @cached_property
    def step_index(self) -> torch.Tensor:
        """``[N, T]``: the step each response token belongs to, -1 outside every step."""
        return step_index(self.steps, self.width)

    def broadcast(self, advantages: torch.Tensor) -> torch.Tensor:
        """``[N]`` response advantages -> ``[N, T]`` token advantages (the same on every token)."""
        return advantages.reshape(-1, 1).float().expand(-1, self.width).clone()


@dataclass
class MethodOutput:
    """What a method returns; the step diagnostics default to "no step touched"."""

    tokens: torch.Tensor  # [N, T] token advantages
    attenuated: torch.Tensor | None = None  # [N, K] bool: a positive advantage shrunk (step judged unimportant)
    protected: torch.Tensor | None = None  # [N, K] bool: a negative advantage removed (step judged important)


@dataclass
class Advantages:
    """What ``compute_advantages`` returns: the method's output plus its reward and step mask."""

    tokens: torch.Tensor  # [N, T] float32
    rewards: torch.Tensor  # [P, G]
    step_mask: torch.Tensor  # [N, K] bool
    attenuated: torch.Tensor  # [N, K] bool
    protected: torch.Tensor  # [N, K] bool


MethodFn = Callable[[AdvantageInputs, MethodParams], MethodOutput]


@dataclass(frozen=True)
class Method:
    name: str
    length_penalty: bool  # reward uses alpha (else the plain 0/1 reward)
    scores: str | None  # None: no step scores; "kfh": KFH attention scores; "oracle": the task's step labels
    fn: MethodFn


METHODS: dict[str, Method] = {}


def register_method(name: str, *, length_penalty: bool, scores: str | None) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn`` under ``name`` (the value of ``method.name`` in a config)."""
    if scores not in SCORE_SOURCES:
        raise ValueError(f"method {name!r}: scores must be None, 'kfh' or 'oracle', not {scores!r}")

    def decorate(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"advantage method {name!r} is registered twice")
        METHODS[name] = Method(name, length_penalty, scores, fn)
        return fn

    return decorate


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown advantage method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _pad_scores(steps: list[list[Span]], scores: Sequence[torch.Tensor | None] | None, wanted: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K]`` float64 scores and bool mask; each rescaled response needs one score per step."""
    n, k = len(steps), max((len(s) for s in steps), default=0)
    padded = torch.zeros((n, k), dtype=torch.float64)
    mask = torch.zeros((n, k), dtype=torch.bool)
    for i, spans in enumerate(steps):
        if not spans:
            continue
        mask[i, : len(spans)] = True
        if wanted:
            got = None if scores is None or scores[i] is None else len(scores[i])
            if got != len(spans):
                raise ValueError(f"response {i}: {len(spans)} steps but {'no' if got is None else got} step scores")
            padded[i, : len(spans)] = torch.as_tensor(scores[i]).double()
    return padded, mask


def compute_advantages(method: str | Method, correct: torch.Tensor, lengths: torch.Tensor,
                       steps: Sequence[Sequence[Span]], scores: Sequence[torch.Tensor | None] | None,
                       answer_len: torch.Tensor, total_len: torch.Tensor, step: int, params: MethodParams,
                       width: int | None = None) -> Advantages:
    """Token advantages ``[N, T]`` and step diagnostics of one rollout under ``method``.

    ``correct`` / ``lengths``: ``[P, G]``.  ``steps[i]``: response i's step token spans relative to
    its first response token, empty when it is not rescaled.  ``scores[i]``: its ``[K_i]`` step
    scores (KFH or oracle; ignored by methods that read none).  ``answer_len`` / ``total_len``:
    ``[N]``.  ``width``: T, by default the longest response (at least 1).
    """
    m = get_method(method) if isinstance(method, str) else method
    if correct.dim() != 2 or correct.shape != lengths.shape:
        raise ValueError(f"correct {tuple(correct.shape)} and lengths {tuple(lengths.shape)} must both be [P, G]")
    n = correct.numel()
    steps = [list(map(tuple, s)) for s in steps]
    for name, value in (("steps", steps), ("answer_len", answer_len), ("total_len", total_len)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} responses")
    if width is None:
        width = max(int(lengths.max()), 1) if n else 1
    padded, mask = _pad_scores(steps, scores, wanted=m.scores is not None)
    rewards = length_penalised_reward(correct, lengths, params.alpha if m.length_penalty else 0.0)
    inputs = AdvantageInputs(rewards, correct.bool(), lengths, steps, padded, mask, answer_len, total_len, step, width)
    out = m.fn(inputs, params)
    if tuple(out.tokens.shape) != (n, width):
        raise ValueError(f"method {m.name!r} returned token advantages {tuple(out.tokens.shape)}, not {(n, width)}")
    none = torch.zeros_like(mask)
    return Advantages(out.tokens.float(), rewards, mask,
                      none if out.attenuated is None else out.attenuated.bool(),
                      none if out.protected is None else out.protected.bool())


from workbench.methods import attnpo, baselines, grpo  # noqa: E402,F401  the built-in methods register here
