"""The ``jsonl`` task: prompts from JSONL files of ``{"prompt", "answer"}`` for real models, graded by
a named verifier (``math``: the boxed answer after ``</think>``, by math-verify).

Prompts are wrapped in the tokenizer's chat template when asked and tokenised once, without the
tokenizer's own special tokens (the template writes BOS itself when the model wants one).  Held-out
prompts come from ``data.eval_file``; without one, a seeded share of the training file's distinct
prompts (``data.eval_split``, seeded by ``eval.seed``) is held out and never drawn for training.
"""

from __future__ import annotations

import random
from pathlib import Path

from workbench.config import Config, ConfigError
from workbench.tasks.base import Prompt, Task, TaskSpec
from workbench.traces import jsonl_rows
from workbench.verifiers import VERIFIERS, get_verifier

DEFAULT_VERIFIER = "math"


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


def split_rows(rows: list[dict], fraction: float, seed: int, where: str) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded ``fraction`` of the distinct prompts (at least one) is held out
    (each once), and every row of a held-out prompt leaves training."""
    texts = list(dict.fromkeys(r["prompt"] for r in rows))
    k = max(1, round(fraction * len(texts)))
    if k >= len(texts):
        raise ValueError(f"{where} holds {len(texts)} distinct prompt(s): too few to hold {k} out for evaluation; "
                         "give data.eval_file, or set eval.enabled=false")
    held = set(random.Random(seed).sample(texts, k))
    first = {r["prompt"]: r for r in reversed(rows)}
    return [r for r in rows if r["prompt"] not in held], [first[t] for t in texts if t in held]


class JsonlTask(Task):
    name = "jsonl"
    segmenter = "r1"

    def __init__(self, tokenizer, train_file: str | Path, eval_file: str | Path | None = None,
                 chat_template: bool = True, instruction: str = "", suffix: str = "",
                 verifier: str = DEFAULT_VERIFIER, split: float = 0.1, split_seed: int | None = None):
        """Without ``eval_file``, ``split_seed`` (None: no evaluation) holds out ``split`` of ``train_file``."""
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.instruction, self.suffix = instruction, suffix
        self.verifier = get_verifier(verifier)
        rows, held = read_jsonl(train_file), []
        if eval_file is not None:
            held = read_jsonl(eval_file)
            self.info = {"source": "data.eval_file", "file": str(eval_file)}
        elif split_seed is not None:
            rows, held = split_rows(rows, split, split_seed, f"prompts file {train_file}")
            self.info = {"source": "seeded split of data.train_file", "file": str(train_file), "fraction": split,
                         "split_seed": split_seed, "train_rows": len(rows)}
        else:
            self.info = {"source": "none: no data.eval_file and evaluation is off"}
        self.train = [self._prompt(r) for r in rows]
        self.eval = [self._prompt(r) for r in held]

    @classmethod
    def from_config(cls, cfg: Config, tokenizer) -> "JsonlTask":
        d = cfg.data
        return cls(tokenizer, d.train_file, d.eval_file, d.chat_template, d.instruction, d.prompt_suffix,
                   d.verifier or DEFAULT_VERIFIER, d.eval_split, cfg.eval.seed if cfg.eval.enabled else None)

    def _prompt(self, row: dict) -> Prompt:
        text = f"{row['prompt']} {self.instruction}" if self.instruction else row["prompt"]
        if self.chat_template:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError("data.chat_template is true but the tokenizer has no chat template")
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True) + self.suffix
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template wrote the specials
        else:
            text += self.suffix
            ids = self.tokenizer(text)["input_ids"]
        return Prompt(text, list(ids), str(row["answer"]))

    def draw(self, rng: random.Random, n: int) -> list[Prompt]:
        """``n`` distinct prompts (with repeats only when the file holds fewer than ``n``)."""
        out: list[Prompt] = []
        while len(out) < n:
            out += [self.train[i] for i in rng.sample(range(len(self.train)), min(n - len(out), len(self.train)))]
        return out

    def held_out(self, n: int, seed: int) -> list[Prompt]:
        """All held-out prompts when there are at most ``n``, else ``n`` of them chosen by ``seed``."""
        if not self.eval:
            raise ValueError("the jsonl task has no held-out prompts (no data.eval_file, and it was built "
                             "without a split)")
        if n >= len(self.eval):
            return list(self.eval)
        return [self.eval[i] for i in sorted(random.Random(seed).sample(range(len(self.eval)), n))]

    def held_out_info(self, seed: int) -> dict:
        return {**self.info, "prompts": len(self.eval), "choice_seed": seed}

    def verify(self, prompt: Prompt, response: str) -> bool:
        return self.verifier(prompt.text, response, prompt.answer)


def check_config(cfg: Config) -> None:
    d = cfg.data
    if d.train_file is None:
        raise ConfigError("data.train_file: the jsonl task needs a prompts file")
    if d.verifier == "organism":
        raise ConfigError("data.verifier: the organism verifier reads organism prompts; use data.verifier=math "
                          "with data.task=jsonl")
    if (d.verifier or DEFAULT_VERIFIER) not in VERIFIERS:
        raise ConfigError(f"data.verifier: unknown verifier {d.verifier!r}; known: {', '.join(VERIFIERS)}")
    if not 0 < d.eval_split < 1:
        raise ConfigError(f"data.eval_split: must be in (0, 1), got {d.eval_split}")


SPEC = TaskSpec("jsonl", JsonlTask.from_config, has_step_labels=False, check=check_config)
