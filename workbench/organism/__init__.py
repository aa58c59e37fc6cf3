"""The built-in model organisms: small Qwen2 reasoning models over tasks whose ground truth is known.

Each organism is one registered entry: the name ``--model`` takes, its task module (problems,
prompts, reference traces, verifier and step labeller, with the interface of
``workbench.organism.task``), and its committed checkpoint folder.  Its word-level vocabulary is
the shared base vocabulary plus the task module's ``EXTRA_WORDS``, so a model's tokenizer tells
which organism it speaks (``organism_of``), whatever folder a checkpoint was loaded from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from workbench.organism import hard_task, task

HERE = Path(__file__).parent
CHECKPOINT_DIR = HERE / "checkpoint"  # the first organism's
RECIPES = HERE.parent.parent / "configs"  # training recipes: configs/<organism>/organism_train.yaml


@dataclass(frozen=True)
class Organism:
    name: str  # what --model and load_model take
    task: ModuleType  # sample_problem, sample_trace, verify, parse_prompt, label_response, EXTRA_WORDS
    checkpoint: Path
    recipe: Path | None = None  # the training recipe that built the checkpoint (None: the trainer's defaults)

    def vocabulary(self) -> list[str]:
        from workbench.organism.tokenizer import vocabulary

        return vocabulary(getattr(self.task, "EXTRA_WORDS", ()))

    def build_tokenizer(self):
        from workbench.organism.tokenizer import build_tokenizer

        return build_tokenizer(getattr(self.task, "EXTRA_WORDS", ()))


ORGANISMS: dict[str, Organism] = {}


def register_organism(organism: Organism) -> Organism:
    if organism.name in ORGANISMS:
        raise ValueError(f"organism {organism.name!r} is registered twice")
    ORGANISMS[organism.name] = organism
    return organism


def get_organism(name: str) -> Organism:
    if name not in ORGANISMS:
        raise KeyError(f"unknown organism {name!r}; known: {', '.join(ORGANISMS)}")
    return ORGANISMS[name]


def organism_of(tokenizer) -> Organism | None:
    """The organism whose vocabulary ``tokenizer`` has (id for id), or None for any other model."""
    vocab = tokenizer.get_vocab()
    for org in ORGANISMS.values():
        words = org.vocabulary()
        if len(vocab) == len(words) and all(vocab.get(w) == i for i, w in enumerate(words)):
            return org
    return None


register_organism(Organism("organism", task, CHECKPOINT_DIR))
register_organism(Organism("organism-hard", hard_task, HERE / "checkpoint-hard",
                           RECIPES / "organism-hard" / "organism_train.yaml"))
