"""Answer checkers for the trainer and evaluations: the organism's exact task verifier and a
``\\boxed{}`` math grader (``math-verify``) for real models.

Both apply AttnPO's format rules (attnpo-method.md §6): the response -- which starts inside
the think block the prompt opened -- must close it exactly once and never open another, and
the answer is the last ``\\boxed{...}`` after ``</think>``.  Truncated responses fail the rules.
"""

from __future__ import annotations

from typing import Callable

from math_verify import parse, verify

from workbench.organism import task

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOXED = "\\boxed{"

Verifier = Callable[[str, str, "str | None"], bool]  # (prompt text, response text, reference answer)


def format_ok(response: str) -> bool:
    """Exactly one ``</think>`` and no ``<think>`` in the response."""
    return response.count(THINK_CLOSE) == 1 and THINK_OPEN not in response


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """[start, end) in ``text`` of the content of the last ``\\boxed{...}`` (nested braces allowed,
    surrounding whitespace left out), or None."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                content = text[i:j]
                lead = len(content) - len(content.lstrip())
                return i + lead, i + lead + len(content.strip())
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None."""
    span = last_boxed_span(text)
    return None if span is None else text[span[0] : span[1]]


def grade_math(prompt: str, response: str, answer: str | None) -> bool:
    """True when the boxed answer after ``</think>`` equals ``answer`` by math-verify's rules."""
    if answer is None:
        raise ValueError("the math verifier needs a reference answer for every prompt")
    if not format_ok(response):
        return False
    boxed = last_boxed(response.split(THINK_CLOSE, 1)[1])
    if not boxed:
        return False
    return bool(verify(parse(f"${answer}$"), parse(f"$\\boxed{{{boxed}}}$")))


def grade_organism(prompt: str, response: str, answer: str | None = None) -> bool:
    """The organism's own verifier on the problem rebuilt from the prompt text."""
    return task.verify(task.parse_prompt(prompt), response)


VERIFIERS: dict[str, Verifier] = {"organism": grade_organism, "math": grade_math}


def get_verifier(name: str) -> Verifier:
    if name not in VERIFIERS:
        raise KeyError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[name]
