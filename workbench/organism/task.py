"""The organism's task: chained mod-10 arithmetic over named variables, written like an R1 trace.

A problem defines variables in a shuffled prompt and asks for one of them.  The reference
response thinks in steps -- a plan, the critical computations along the query's dependency
chain, and a random number of redundant steps (distractor computations, re-checks, restated
givens) -- then closes the think block and restates the chain before the boxed answer, as
R1-distill answers do::

    prompt:   c =4 ; a =c+3 ; e =9 ; b =a*2 ; d =e-5 ; What is b ? <think>
    response: \\nNeed b a c . \\nThen d =e-5 , e =9 , d =4 . \\nNow a =c+3 , c =4 , a =7 .
              \\nNext b =a*2 , a =7 , b =4 . \\nWait , let me check that 7 *2 = 4 again . </think>
              a =7 ; b =4 . \\boxed{ 4 }

A definition ``=c+3`` (c plus 3) and a value ``=4`` are one token each, so every fact a step
needs sits in the token right after a name it already wrote: the definition after the
defined name, a value after the name in ``c =4``.  Looking a fact up is then a one-token
induction (copy what followed this name before).  Both longer spellings stalled training:
with ``a = c + 3`` the model had to match two tokens back (about 20% accuracy), and with
``a =c +3`` it learned to copy the reference but picked the operator of the wrong definition
half of the time (37% right after 3000 steps).  A computation names the variables it reads
(``c =4``) so the final answer's ``a =7`` and the critical steps share tokens, while re-checks
repeat bare arithmetic (``4 +3 = 7``, the operator ``+3`` a token of its own).

Text is canonical: tokens joined by single spaces, and every step begins with a word that
carries its newline (``"\\nNow"``), so the word tokenizer round-trips exactly and the R1
segmenter sees its trigger phrases after a newline.  Every step carries a ground-truth label:
``critical`` (computes a chain variable for the first time), ``redundant`` (with its kind) or
``plan``.  Redundant steps come in lengths on both sides of a critical step's, and distractors
and restatements sit anywhere, so neither length nor position gives the labels away.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property

VARIABLES = list("abcdefghijkl")
OPS = ["+", "-", "*"]
OPERATIONS = [(op, k) for op in OPS for k in range(1, 10)]  # every operator-constant pair
PROGRESS_WORDS = ["\nNow", "\nThen", "\nNext"]
# (opener, closer) around the repeated arithmetic / the restated given: a long and a short form each
RECHECK_FORMS = [(["\nWait", ",", "let", "me", "check", "that"], ["again", "."]), (["\nLet", "me", "verify"], ["."])]
RESTATE_FORMS = [(["\nSo"], ["from", "the", "problem", "."]),
                 (["\nSo", "the", "problem", "says"], ["and", "we", "keep", "it", "in", "mind", "."])]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOX_OPEN, BOX_CLOSE = "\\boxed{", "}"

LABELS = ("critical", "redundant", "plan")
REDUNDANT_KINDS = ("distractor", "recheck", "restate")


def value_word(v: int) -> str:
    """``=4``: "has the value 4", one token."""
    return f"={v}"


def ref_word(name: str, op: str, k: int) -> str:
    """``=c+3``: "is c plus 3", one token."""
    return f"={name}{op}{k}"


def op_word(op: str, k: int) -> str:
    """``+3``: an operator and its constant, one token."""
    return f"{op}{k}"


def is_op_word(word: str) -> bool:
    """True for an operator-and-constant token such as ``+3``."""
    return _OP.fullmatch(word) is not None


def is_ref_word(word: str) -> bool:
    """True for a definition token such as ``=c+3``."""
    return _REF.fullmatch(word) is not None


def apply_op(x: int, op: str, k: int) -> int:
    """Mod-10 arithmetic: the whole task lives in the digits 0-9."""
    if op == "+":
        return (x + k) % 10
    if op == "-":
        return (x - k) % 10
    if op == "*":
        return (x * k) % 10
    raise ValueError(f"unknown operator {op!r}")


@dataclass(frozen=True)
class Definition:
    """``name = value`` (a given) or ``name = operand op constant``."""

    name: str
    value: int | None = None
    operand: str | None = None
    op: str | None = None
    constant: int | None = None

    def words(self) -> list[str]:
        """``c =4`` or ``a =c+3``."""
        if self.operand is None:
            return [self.name, value_word(self.value)]
        return [self.name, ref_word(self.operand, self.op, self.constant)]


@dataclass
class Problem:
    definitions: list[Definition]  # in prompt order (shuffled)
    query: str

    @cached_property
    def by_name(self) -> dict[str, Definition]:
        return {d.name: d for d in self.definitions}

    def value(self, name: str) -> int:
        d = self.by_name[name]
        if d.operand is None:
            return d.value
        return apply_op(self.value(d.operand), d.op, d.constant)

    def chain(self) -> list[str]:
        """The query's dependency chain from the query back to its given, e.g. ``[b, a, c]``."""
        names, name = [], self.query
        while True:
            names.append(name)
            d = self.by_name[name]
            if d.operand is None:
                return names
            name = d.operand

    @property
    def answer(self) -> int:
        return self.value(self.query)

    def prompt(self) -> str:
        words: list[str] = []
        for d in self.definitions:
            words += d.words() + [";"]
        words += ["What", "is", self.query, "?", THINK_OPEN]
        return " ".join(words)


@dataclass
class Step:
    """One step of a reference trace: its words, label, kind and (for computations) variable."""

    words: list[str]
    label: str
    kind: str
    variable: str | None = None
    arithmetic: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class Trace:
    problem: Problem
    steps: list[Step]
    answer_words: list[str] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        return self.problem.prompt()

    @property
    def response(self) -> str:
        words = [w for s in self.steps for w in s.words] + [THINK_CLOSE] + self.answer_words
        return " ".join(words)


def sample_problem(rng: random.Random, depth: tuple[int, int] = (2, 4)) -> Problem:
    """A chain of 2-4 computed variables from one given, plus off-chain givens and distractors.

    Distractors read the off-chain givens only, so each chain variable is read by exactly one
    definition and its ``=c+3`` token in the prompt is unique.
    """
    d = rng.randint(*depth)
    n_extra_givens = rng.randint(1, 2)
    n_distractors = rng.randint(1, 3)
    names = rng.sample(VARIABLES, d + 1 + n_extra_givens + n_distractors)
    chain_names, rest = names[: d + 1], names[d + 1 :]
    defs = [Definition(chain_names[0], value=rng.randint(0, 9))]
    for prev, name in zip(chain_names, chain_names[1:]):
        defs.append(Definition(name, operand=prev, op=rng.choice(OPS), constant=rng.randint(1, 9)))
    givens = rest[:n_extra_givens]
    for name in givens:
        defs.append(Definition(name, value=rng.randint(0, 9)))
    for name in rest[n_extra_givens:]:
        defs.append(Definition(name, operand=rng.choice(givens), op=rng.choice(OPS), constant=rng.randint(1, 9)))
    rng.shuffle(defs)
    return Problem(defs, query=chain_names[-1])


def computation_step(opener: list[str], d: Definition, x: int, y: int, label: str, kind: str) -> Step:
    """``<opener> a =c+3 , c =4 , a =7 .``: the definition, the value ``x`` it reads, the result ``y``
    as written (a fallible reasoner may write a wrong one)."""
    arithmetic = [str(x), op_word(d.op, d.constant), "=", str(y)]
    words = [*opener, *d.words(), ",", d.operand, value_word(x), ",", d.name, value_word(y), "."]
    return Step(words, label, kind, d.name, arithmetic)


def shortcut_step(opener: list[str], d: Definition, nxt: Definition, x: int, y: int, label: str = "critical",
                  kind: str = "shortcut") -> Step:
    """``<opener> b =c+3 *2 , c =4 , b =4 .``: definitions ``d`` and ``nxt`` applied at once, skipping
    ``d``'s variable; ``y`` is the result as written."""
    arithmetic = [str(x), op_word(d.op, d.constant), op_word(nxt.op, nxt.constant), "=", str(y)]
    words = [*opener, nxt.name, *d.words()[1:], op_word(nxt.op, nxt.constant), ",", d.operand, value_word(x), ",",
             nxt.name, value_word(y), "."]
    return Step(words, label, kind, nxt.name, arithmetic)


def _compute_step(rng: random.Random, p: Problem, name: str, label: str, kind: str) -> Step:
    d = p.by_name[name]
    return computation_step([rng.choice(PROGRESS_WORDS)], d, p.value(d.operand), p.value(name), label, kind)


def _shortcut_step(rng: random.Random, p: Problem, first: str, second: str) -> Step:
    d, nxt = p.by_name[first], p.by_name[second]
    return shortcut_step([rng.choice(PROGRESS_WORDS)], d, nxt, p.value(d.operand), p.value(second))


def _early(rng: random.Random, n: int) -> int:
    """An insertion point in 0..n biased early: re-checks must follow what they check, so
    distractors and restatements lean early to leave step position uninformative."""
    return min(rng.randint(0, n), rng.randint(0, n))


def sample_trace(
    rng: random.Random,
    problem: Problem | None = None,
    verbosity: tuple[int, int] = (2, 10),
    shortcut_prob: float = 0.05,
) -> Trace:
    """A reference trace with a random number of redundant steps placed at random positions.

    With probability ``shortcut_prob`` two consecutive critical steps are merged into one
    (``b =c+3 *2 ...``): shorter, and harder for the model to get right.
    """
    p = problem or sample_problem(rng)
    chain = p.chain()  # [query, ..., given]
    computed = list(reversed(chain[:-1]))  # in computation order
    plan = Step(["\nNeed", *chain, "."], "plan", "plan")

    critical: list[Step] = []
    i = 0
    while i < len(computed):
        name = computed[i]
        if i + 1 < len(computed) and rng.random() < shortcut_prob:
            critical.append(_shortcut_step(rng, p, name, computed[i + 1]))
            i += 2
        else:
            critical.append(_compute_step(rng, p, name, "critical", "compute"))
            i += 1

    off_chain = [d.name for d in p.definitions if d.operand is not None and d.name not in chain]
    givens = [d.name for d in p.definitions if d.operand is None]
    rng.shuffle(off_chain)
    steps = list(critical)
    for _ in range(rng.randint(*verbosity)):
        options = ["restate", "recheck"] + (["distractor"] if off_chain else [])
        kind = rng.choice(options)
        if kind == "distractor":
            name = off_chain.pop()
            steps.insert(_early(rng, len(steps)), _compute_step(rng, p, name, "redundant", "distractor"))
        elif kind == "restate":
            name = rng.choice(givens)
            opener, closer = rng.choice(RESTATE_FORMS)
            words = [*opener, name, value_word(p.value(name)), *closer]
            steps.insert(_early(rng, len(steps)), Step(words, "redundant", "restate", name))
        else:
            j = rng.choice([j for j, s in enumerate(steps) if s.arithmetic])
            opener, closer = rng.choice(RECHECK_FORMS)
            words = [*opener, *steps[j].arithmetic, *closer]
            steps.insert(rng.randint(j + 1, len(steps)), Step(words, "redundant", "recheck", steps[j].variable))
    answer_words: list[str] = []
    for name in computed:
        answer_words += [name, value_word(p.value(name)), ";"]
    answer_words[-1] = "."
    answer_words += [BOX_OPEN, str(p.answer), BOX_CLOSE]
    return Trace(p, [plan, *steps], answer_words)


_BOXED = re.compile(r"\\boxed\{\s*(\S+)\s*\}")
_VALUE, _REF, _OP = re.compile(r"=\d"), re.compile(r"=[a-z][-+*][1-9]"), re.compile(r"[-+*][1-9]")


def extract_answer(response: str) -> str | None:
    """The last boxed answer after the single ``</think>``; None when the format is broken."""
    if response.count(THINK_CLOSE) != 1 or THINK_OPEN in response:
        return None
    found = _BOXED.findall(response.split(THINK_CLOSE, 1)[1])
    return found[-1] if found else None


def verify(problem: Problem, response: str) -> bool:
    """True when the response closes its think block once and boxes the right digit."""
    return extract_answer(response) == str(problem.answer)


def parse_prompt(prompt: str) -> Problem:
    """Rebuild a Problem from its prompt text; raises ValueError naming the bad clause."""
    body = prompt.strip()
    if body.endswith(THINK_OPEN):
        body = body[: -len(THINK_OPEN)].strip()
    clauses = [c.strip() for c in body.split(";")]
    question = clauses.pop().split()
    if len(question) != 4 or question[:2] != ["What", "is"] or question[3] != "?":
        raise ValueError(f"not an organism prompt (question clause {' '.join(question)!r})")
    defs = []
    for c in clauses:
        w = c.split()
        if len(w) == 2 and _VALUE.fullmatch(w[1]):
            defs.append(Definition(w[0], value=int(w[1][1:])))
        elif len(w) == 2 and _REF.fullmatch(w[1]):
            defs.append(Definition(w[0], operand=w[1][1], op=w[1][2], constant=int(w[1][3:])))
        else:
            raise ValueError(f"not an organism definition: {c!r}")
    problem = Problem(defs, question[2])
    names = problem.by_name
    for name in [question[2]] + [d.operand for d in defs if d.operand is not None]:
        if name not in names:
            raise ValueError(f"organism prompt uses variable {name!r} but never defines it")
    seen, name = set(), question[2]
    while names[name].operand is not None:  # the chain must end at a given
        if name in seen:
            raise ValueError(f"organism prompt defines variable {name!r} in terms of itself")
        seen.add(name)
        name = names[name].operand
    return problem


def label_response(problem: Problem, step_texts: list[str]) -> list[tuple[str, str]]:
    """Ground-truth (label, kind) of each step of a sampled response, from its text alone.

    A step is critical when it computes a chain variable for the first time (a merged shortcut
    counts), the plan is ``plan``, and everything else is redundant with its kind.
    """
    chain = set(problem.chain())
    seen: set[str] = set()
    out = []
    for i, text in enumerate(step_texts):
        w = text.split()
        if i == 0 and w and w[0] == "Need":
            out.append(("plan", "plan"))
        elif len(w) >= 3 and w[0] in ("Now", "Then", "Next") and is_ref_word(w[2]):
            name = w[1]
            if name in chain and name not in seen:
                shortcut = len(w) > 3 and is_op_word(w[3])  # ``b =c+3 *2``
                out.append(("critical", "shortcut" if shortcut else "compute"))
            elif name in chain:
                out.append(("redundant", "repeat"))
            else:
                out.append(("redundant", "distractor"))
            seen.add(name)
        elif w[:1] == ["So"]:
            out.append(("redundant", "restate"))
        elif w[:1] in (["Wait"], ["Let"]):
            out.append(("redundant", "recheck"))
        else:
            out.append(("redundant", "other"))
    return out
