"""Every registered organism is a task: fresh problems from its task module, its exact verifier,
and its step labeller as ground truth for the oracle and the step metrics.

The task module's interface is that of ``workbench.organism.task``: ``sample_problem(rng)``,
``Problem.prompt()`` / ``.answer``, ``sample_trace(rng, problem)``, ``verify(problem, response)``,
``parse_prompt(text)`` and ``label_response(problem, step_texts) -> [(label, kind)]``.  An
organism's reference traces may be wrong, so ``reference_response`` redraws until one verifies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from workbench.config import Config, ConfigError
from workbench.organism import Organism, organism_of
from workbench.tasks.base import Prompt, Task, TaskSpec

REFERENCE_TRIES = 1000


class OrganismTask(Task):
    """The task of one registered organism, for a model that speaks its vocabulary."""

    segmenter = "organism"

    def __init__(self, organism: Organism, tokenizer):
        vocab, words = tokenizer.get_vocab(), organism.vocabulary()
        if len(vocab) != len(words) or any(vocab.get(w) != i for i, w in enumerate(words)):
            spoken = organism_of(tokenizer)
            model = f"the {spoken.name} organism" if spoken else "a model without an organism's tokenizer"
            raise ValueError(f"data.task {organism.name!r} needs a {organism.name} model, but model.name gives "
                             f"{model}; set data.task to the task the model was trained on")
        self.organism, self.tokenizer = organism, tokenizer
        self.name = organism.name
        self.has_step_labels = hasattr(organism.task, "label_response")

    def _prompt(self, problem) -> Prompt:
        text = problem.prompt()
        return Prompt(text, self.tokenizer(text)["input_ids"], str(problem.answer), problem)

    def draw(self, rng: random.Random, n: int) -> list[Prompt]:
        return [self._prompt(self.organism.task.sample_problem(rng)) for _ in range(n)]

    def held_out(self, n: int, seed: int) -> list[Prompt]:
        return self.draw(random.Random(seed), n)

    def held_out_info(self, seed: int) -> dict:
        return {"source": f"fresh {self.name} problems", "seed": seed,
                "note": "drawn from their own seed; training draws from train.seed's stream"}

    def _problem(self, prompt: Prompt):
        return prompt.truth if prompt.truth is not None else self.organism.task.parse_prompt(prompt.text)

    def verify(self, prompt: Prompt, response: str) -> bool:
        return self.organism.task.verify(self._problem(prompt), response)

    def step_labels(self, prompt: Prompt, step_texts: Sequence[str]) -> list[str] | None:
        if not self.has_step_labels:
            return None
        pairs = self.organism.task.label_response(self._problem(prompt), [t.strip() for t in step_texts])
        return [label for label, _ in pairs]

    def reference_response(self, prompt: Prompt, rng: random.Random) -> str:
        problem = self._problem(prompt)
        for _ in range(REFERENCE_TRIES):
            trace = self.organism.task.sample_trace(rng, problem)
            if self.organism.task.verify(problem, trace.response):
                return trace.response
        raise RuntimeError(f"{self.name}: no correct reference trace in {REFERENCE_TRIES} draws for {prompt.text!r}")


def check_config(cfg: Config) -> None:
    """An organism task reads no prompt files and verifies with its own task module."""
    d = cfg.data
    if d.verifier not in (None, "organism"):
        raise ConfigError(f"data.verifier: task {d.task!r} verifies with its own task module; leave data.verifier "
                          f"unset (got {d.verifier!r})")
    for key in ("train_file", "eval_file"):
        if getattr(d, key) is not None:
            raise ConfigError(f"data.{key}: task {d.task!r} draws fresh problems; prompt files are for data.task=jsonl")


def organism_task_spec(organism: Organism) -> TaskSpec:
    """The task of a registered organism (every organism is one, by its name)."""
    return TaskSpec(organism.name, lambda cfg, tokenizer: OrganismTask(organism, tokenizer),
                    hasattr(organism.task, "label_response"), check_config)
