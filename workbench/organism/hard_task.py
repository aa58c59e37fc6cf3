"""The second organism's task: the first organism's problems, solved by a fallible reasoner.

Problems, prompts, the answer format and the verifier are those of ``workbench.organism.task``; the
reference traces differ.  They come from a reasoner that makes mistakes and sometimes catches them,
so part of the length that varies between two answers to the same problem is length the answer
needs -- what a plain length penalty cannot tell from overthinking:

- **Slips.** A computation forgets its operator at rate ``slip`` and writes the operand's value
  (``Now a =c+3 , c =4 , a =4 .``).  Right after a slip the reasoner notices it at rate ``notice``
  and recomputes in full: ``Wait , no , a =c+3 , c =4 , a =7 .``.  The correction is *critical*
  (the answer restates its value), the slipped step *redundant* (kind ``slip``: the correction
  holds everything it held).  An unnoticed slip is carried on into a wrong answer.
- **Re-checks** that only confirm a right value are *redundant*; half of them come right after the
  step they check and open with the same ``Wait ,`` as a correction, so "check or go on" is one
  decision whether or not it is needed.
- **Risky shortcuts.** Two computations merged into one (``Now b =c+3 *2 , c =4 , b =4 .``) at rate
  ``shortcut`` per adjacent pair: shorter than the careful route, but the merged result applies only
  the second operator at rate ``shortcut_fail`` (a wrong answer).  It is *critical* (kind
  ``shortcut``) either way: the answer goes on from it.

Distractor computations and restated givens stay as in the first organism.  Every slip is followed
at once by its correction when there is one, and nothing is inserted between the two.  Labels say
what the answer depends on: for each chain variable, the computation that first wrote the value in
force when the think block closes is critical, right or wrong (in a correct response it is the right
one).  A correction that changes a value is therefore critical and the slip it supersedes redundant,
while a later computation that writes the same value again -- a ``Wait , no`` that corrects nothing --
only confirms it and is redundant, as a confirming re-check is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from workbench.organism.task import (BOX_CLOSE, BOX_OPEN, LABELS, PROGRESS_WORDS, RECHECK_FORMS, RESTATE_FORMS,
                                     Problem, Step, Trace, apply_op, computation_step,
                                     extract_answer, is_op_word, is_ref_word, parse_prompt, sample_problem, shortcut_step,
                                     value_word, verify)

__all__ = ["EXTRA_WORDS", "LABELS", "REDUNDANT_KINDS", "CRITICAL_KINDS", "TaskParams", "PARAMS", "Problem",
           "Trace", "sample_problem", "sample_trace", "verify", "parse_prompt", "extract_answer", "label_response"]

CORRECTION_OPENER = ["\nWait", ",", "no", ","]
EXTRA_WORDS = ["no"]  # the only word the first organism's vocabulary lacks
CRITICAL_KINDS = ("compute", "correction", "shortcut")
REDUNDANT_KINDS = ("distractor", "recheck", "restate", "slip")


@dataclass(frozen=True)
class TaskParams:
    """How fallible the reasoner that writes the reference traces is (rates per opportunity)."""

    slip: float = 0.25  # a computation writes the operand's value instead of the result
    notice: float = 0.6  # a slip is corrected right after it
    shortcut: float = 0.15  # two adjacent chain computations are merged into one
    shortcut_fail: float = 0.3  # a merged computation applies only its second operator
    recheck_next: float = 0.5  # a confirming re-check comes right after the step it checks
    verbosity: tuple[int, int] = (2, 10)  # redundant steps per trace (distractors, re-checks, restatements)


PARAMS = TaskParams()


def _slipped(x: int, y: int) -> int:
    """The value a slip writes: the operand's (the operator forgotten), or the next digit when equal."""
    return x if x != y else (y + 1) % 10


def _chain_blocks(rng: random.Random, p: Problem, params: TaskParams) -> tuple[list[list[Step]], dict[str, int]]:
    """The chain's computations in order, a block per computation (a slip and its correction are one
    block, so nothing gets between them), and the value of every variable as the trace last wrote it."""
    chain = p.chain()
    computed = list(reversed(chain[:-1]))
    written = {chain[-1]: p.value(chain[-1])}
    blocks: list[list[Step]] = []
    i = 0
    while i < len(computed):
        d = p.by_name[computed[i]]
        x = written[d.operand]
        opener = [rng.choice(PROGRESS_WORDS)]
        if i + 1 < len(computed) and rng.random() < params.shortcut:
            nxt = p.by_name[computed[i + 1]]
            right = apply_op(apply_op(x, d.op, d.constant), nxt.op, nxt.constant)
            y = apply_op(x, nxt.op, nxt.constant) if rng.random() < params.shortcut_fail else right
            blocks.append([shortcut_step(opener, d, nxt, x, y)])
            written[d.name] = apply_op(x, d.op, d.constant)  # restated in the answer, never written in a step
            written[nxt.name] = y
            i += 2
            continue
        y = apply_op(x, d.op, d.constant)
        if rng.random() < params.slip and rng.random() < params.notice:
            block = [computation_step(opener, d, x, _slipped(x, y), "redundant", "slip"),
                     computation_step(CORRECTION_OPENER, d, x, y, "critical", "correction")]
        else:  # right, or a slip nobody notices: either way what the answer goes on to use
            if rng.random() < params.slip * (1 - params.notice) / (1 - params.slip * params.notice):
                y = _slipped(x, y)
            block = [computation_step(opener, d, x, y, "critical", "compute")]
        written[d.name] = y
        blocks.append(block)
        i += 1
    return blocks, written


def sample_trace(rng: random.Random, problem: Problem | None = None, params: TaskParams = PARAMS) -> Trace:
    """A reference trace of the fallible reasoner; it can be wrong (an unnoticed slip or a failed
    shortcut), as its ``verify`` tells."""
    p = problem or sample_problem(rng)
    chain = p.chain()
    blocks, written = _chain_blocks(rng, p, params)
    plan = Step(["\nNeed", *chain, "."], "plan", "plan")
    checkable = [s for b in blocks for s in b if s.label == "critical" and _checks(p, s)]  # right arithmetic only
    off_chain = [d.name for d in p.definitions if d.operand is not None and d.name not in chain]
    givens = [d.name for d in p.definitions if d.operand is None]
    rng.shuffle(off_chain)
    for _ in range(rng.randint(*params.verbosity)):
        kind = rng.choice(["restate"] + (["recheck"] if checkable else []) + (["distractor"] if off_chain else []))
        if kind == "recheck":
            checked = rng.choice(checkable)
            j = next(k for k, b in enumerate(blocks) if checked in b)
            opener, closer = rng.choice(RECHECK_FORMS)
            step = Step([*opener, *checked.arithmetic, *closer], "redundant", "recheck", checked.variable)
            at = j + 1 if rng.random() < params.recheck_next else rng.randint(j + 1, len(blocks))
        elif kind == "distractor":
            d = p.by_name[off_chain.pop()]
            step = computation_step([rng.choice(PROGRESS_WORDS)], d, p.value(d.operand), p.value(d.name),
                                    "redundant", "distractor")
            at = min(rng.randint(0, len(blocks)), rng.randint(0, len(blocks)))  # early-biased, as in the first
        else:
            name = rng.choice(givens)
            opener, closer = rng.choice(RESTATE_FORMS)
            step = Step([*opener, name, value_word(p.value(name)), *closer], "redundant", "restate", name)
            at = min(rng.randint(0, len(blocks)), rng.randint(0, len(blocks)))
        blocks.insert(at, [step])
    answer_words: list[str] = []
    for name in reversed(chain[:-1]):
        answer_words += [name, value_word(written[name]), ";"]
    answer_words[-1] = "."
    answer_words += [BOX_OPEN, str(written[p.query]), BOX_CLOSE]
    return Trace(p, [plan, *(s for b in blocks for s in b)], answer_words)


def _checks(p: Problem, step: Step) -> bool:
    """Is a computation's arithmetic right (what a confirming re-check can repeat)?"""
    *operands, _, result = step.arithmetic
    x = int(operands[0])
    for op_k in operands[1:]:
        x = apply_op(x, op_k[0], int(op_k[1:]))
    return x == int(result)


def _computation(words: list[str]) -> tuple[str, int, int, bool] | None:
    """(variable, operand value, result, merged?) of a computation's words after its opener, e.g.
    ``a =c+3 , c =4 , a =7 .`` (words a sampled step adds after its ``.`` are ignored); None for any
    other text."""
    if len(words) < 2 or not is_ref_word(words[1]):
        return None
    merged = len(words) > 2 and is_op_word(words[2])
    rest = words[3:] if merged else words[2:]
    if len(rest) < 7 or rest[0] != "," or rest[3] != "," or rest[4] != words[0] or rest[6] != ".":
        return None
    try:
        return words[0], int(rest[2][1:]), int(rest[5][1:]), merged
    except ValueError:
        return None


_OPENER = [w.strip() for w in CORRECTION_OPENER]  # as the segmenter hands steps over: stripped
_PROGRESS = {w.strip() for w in PROGRESS_WORDS}


def label_response(problem: Problem, step_texts: list[str]) -> list[tuple[str, str]]:
    """Ground-truth (label, kind) of each step of a sampled response, from its text alone.

    For each chain variable, the critical step is the computation (a computation, a correction or
    a shortcut) that first wrote the value in force when the think block closes, right or wrong.
    Every other computation of it is redundant: a ``repeat`` when it wrote again the value already
    in force (a correction that corrects nothing is a confirming re-check in the correction's
    words), else a ``slip`` (a value a later computation changed).  Off-chain computations are
    distractors; re-checks and restated givens are redundant.
    """
    chain = set(problem.chain())
    parsed = []
    for i, text in enumerate(step_texts):
        w = text.split()
        correction = w[:len(_OPENER)] == _OPENER
        body = w[len(_OPENER):] if correction else w[1:] if w[:1] and w[0] in _PROGRESS else None
        parsed.append((w, correction, _computation(body) if body is not None else None))
    writes: dict[str, list[tuple[int, int]]] = {}  # chain variable -> (step index, value written), in order
    for i, (_, _, comp) in enumerate(parsed):
        if comp is not None and comp[0] in chain:
            writes.setdefault(comp[0], []).append((i, comp[2]))
    critical, value_before = set(), {}
    for ws in writes.values():
        k = len(ws) - 1
        while k > 0 and ws[k - 1][1] == ws[-1][1]:
            k -= 1  # back to the first of the final run of writes of the value in force
        critical.add(ws[k][0])
        value_before.update((i, before) for (_, before), (i, _) in zip(ws, ws[1:]))
    out = []
    for i, (w, correction, comp) in enumerate(parsed):
        if i == 0 and w[:1] == ["Need"]:
            out.append(("plan", "plan"))
        elif comp is not None:
            name, _, y, merged = comp
            if name not in chain:
                out.append(("redundant", "distractor"))
            elif i in critical:
                out.append(("critical", "correction" if correction else "shortcut" if merged else "compute"))
            else:
                out.append(("redundant", "repeat" if value_before.get(i) == y else "slip"))
        elif w[:1] == ["So"]:
            out.append(("redundant", "restate"))
        elif w[:1] in (["Wait"], ["Let"]):
            out.append(("redundant", "recheck"))
        else:
            out.append(("redundant", "other"))
    return out
