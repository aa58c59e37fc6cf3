"""Prompt sources: fresh organism problems, or a JSONL file of ``{"prompt", "answer"}`` for HF models."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from workbench.organism import task
from workbench.organism.evaluate import held_out_problems
from workbench.traces import jsonl_rows


@dataclass
class Prompt:
    text: str  # exactly what the model is given (chat template and suffix applied)
    answer: str | None  # reference answer for the verifier
    problem: task.Problem | None = None  # organism only: ground truth for step labels


class OrganismPrompts:
    """Fresh problems from the training stream; held-out ones from a seed training never uses."""

    def draw(self, rng: random.Random, n: int) -> list[Prompt]:
        return [self._prompt(task.sample_problem(rng)) for _ in range(n)]

    def held_out(self, n: int, seed: int) -> list[Prompt]:
        return [self._prompt(p) for p in held_out_problems(n, seed)]

    @staticmethod
    def _prompt(problem: task.Problem) -> Prompt:
        return Prompt(problem.prompt(), str(problem.answer), problem)


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of ``{"prompt": str, "answer": str | number}``; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    rows = []
    for n, row in jsonl_rows(path):
        if not isinstance(row.get("prompt"), str) or "answer" not in row:
            raise ValueError(f"{path}:{n}: expected an object with a string 'prompt' and an 'answer'")
        rows.append(row)
    if not rows:
        raise ValueError(f"prompts file {path} holds no prompts")
    return rows


class JsonlPrompts:
    """Prompts from JSONL files, wrapped in the tokenizer's chat template when asked."""

    def __init__(self, tokenizer, train_file: str, eval_file: str | None, chat_template: bool = True,
                 instruction: str = "", suffix: str = ""):
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.instruction, self.suffix = instruction, suffix
        self.train = [self._prompt(r) for r in read_jsonl(train_file)]
        self.eval = [self._prompt(r) for r in read_jsonl(eval_file)] if eval_file else self.train

    def _prompt(self, row: dict) -> Prompt:
        text = f"{row['prompt']} {self.instruction}" if self.instruction else row["prompt"]
        if self.chat_template:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError("data.chat_template is true but the tokenizer has no chat template")
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return Prompt(text + self.suffix, str(row["answer"]))

    def draw(self, rng: random.Random, n: int) -> list[Prompt]:
        """``n`` distinct prompts (with repeats only when the file holds fewer than ``n``)."""
        out: list[Prompt] = []
        while len(out) < n:
            out += [self.train[i] for i in rng.sample(range(len(self.train)), min(n - len(out), len(self.train)))]
        return out

    def held_out(self, n: int, seed: int) -> list[Prompt]:
        return self.eval[:n]
