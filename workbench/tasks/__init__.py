"""Tasks: the registry behind ``data.task``.

Every registered organism is a task under its own name (``organism``, and each organism added to
``workbench.organism.ORGANISMS``); ``jsonl`` serves prompt files for real models.  Another task is
a module defining a ``TaskSpec`` plus its ``register_task`` line below.

    task = build_task(cfg, tokenizer)   # a Task: draw / held_out / verify / step_labels
"""

from __future__ import annotations

from workbench.config import Config
from workbench.organism import ORGANISMS
from workbench.tasks.base import STEP_LABELS, Prompt, Task, TaskSpec, step_label_stats
from workbench.tasks.organism import OrganismTask, organism_task_spec

__all__ = ["STEP_LABELS", "TASKS", "OrganismTask", "Prompt", "Task", "TaskSpec", "build_task", "get_task",
           "register_task", "segmenter_for", "step_label_stats", "task_names"]

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS or spec.name in ORGANISMS:
        raise ValueError(f"task {spec.name!r} is registered twice")
    TASKS[spec.name] = spec
    return spec


def task_names() -> list[str]:
    """Every task ``data.task`` accepts: the organisms' (looked up when asked) and the registered ones."""
    return [*ORGANISMS, *TASKS]


def get_task(name: str) -> TaskSpec:
    if name in TASKS:
        return TASKS[name]
    if name in ORGANISMS:
        return organism_task_spec(ORGANISMS[name])
    raise KeyError(f"unknown task {name!r}; known: {', '.join(task_names())}")


def segmenter_for(cfg: Config, task: Task) -> str:
    """The steps preset a run segments responses with: ``data.segmenter`` when set, else the task's."""
    return cfg.data.segmenter or task.segmenter


def build_task(cfg: Config, tokenizer) -> Task:
    """The task of ``cfg.data.task`` for the model whose tokenizer is ``tokenizer``."""
    return get_task(cfg.data.task).build(cfg, tokenizer)


from workbench.tasks import jsonl  # noqa: E402  the built-in tasks register here

register_task(jsonl.SPEC)
