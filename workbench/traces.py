"""Trace sets for the analyses: prompt + response token ids, segmented into steps and F.

Three sources, one record type (`TraceRecord`):

- ``organism``: fresh problems, responses *sampled* by the model (temperature 1.0 by default),
  kept when they segment; the reference answer is known, so each trace is verified.
  ``organism:reference`` teacher-forces the task's own reference traces instead (gold steps).
- a JSONL or parquet file with ``prompt`` and ``response`` (optionally ``id``/``trace_id``,
  ``answer``, ``is_correct``/``correct``, ``chunks``): teacher-forced as written.  Files this module
  wrote itself (``traces.jsonl``) carry the exact token ids and are read back id for id.
- a prompt file (``.txt``, one prompt a line, or JSONL/parquet with ``prompt`` and no
  ``response``): responses are sampled by the model.

Every record's steps come from ``workbench.steps.segment_ids`` on the response ids actually
scored; traces that do not segment are dropped with a warning that counts the reasons, and traces
longer than the model's context (or ``--max-tokens``) with a warning that names them.

``--traces`` defaults to what works for the model: ``organism`` for an organism, else the bundled
real R1 traces (`bundled_r1_traces`) when they are there, else a one-line error asking for a file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from workbench.generation import encode_prompts, sample
from workbench.models import LoadedModel
from workbench.organism import ORGANISMS, Organism, organism_of
from workbench.steps import PRESETS, Segmentation, segment_ids
from workbench.tracing import TraceItem
from workbench.verifiers import Verifier, get_verifier, grade_math

REPO_ROOT = Path(__file__).resolve().parents[1]
R1_TRACES_ENV = "KFH_R1_TRACES"
R1_TRACES_FILE = "deepseek-r1-distill-llama-8b.jsonl"
ORGANISM_SOURCES = ("organism", "organism:reference")
FILE_SUFFIXES = (".jsonl", ".parquet")
WRITTEN_FIELDS = ("trace_id", "prompt", "response", "step_texts", "labels", "steps", "answer_span", "prompt_ids",
                  "response_ids", "answer", "correct")  # what `write_traces` writes


@dataclass
class TraceRecord:
    trace_id: str
    prompt: str
    response: str  # decoded response ids (special tokens skipped): the text the segmenter saw
    prompt_ids: list[int]
    response_ids: list[int]
    seg: Segmentation
    answer: str | None = None  # reference answer, when known
    correct: bool | None = None  # does the response reach the reference answer (None: unknown)
    meta: dict = field(default_factory=dict)  # extra fields of the source row, e.g. R1 ``chunks``

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def n_steps(self) -> int:
        return len(self.seg.steps)

    @property
    def step_texts(self) -> list[str]:
        return self.seg.step_texts

    @property
    def step_lengths(self) -> list[int]:
        return [e - s for s, e in self.seg.steps]

    @property
    def close_ids(self) -> list[int]:
        """The token(s) of ``</think>`` between the last step and F."""
        return self.response_ids[self.seg.steps[-1][1] : self.seg.answer[0]]

    def item(self) -> TraceItem:
        steps, answer = self.seg.absolute(len(self.prompt_ids))
        return TraceItem(self.input_ids, steps, answer, self.trace_id)


def is_organism(loaded: LoadedModel) -> bool:
    """Does the model speak an organism's task (its word-level vocabulary)?  True for the shipped
    organisms and for every checkpoint trained from them, whatever folder it was loaded from."""
    return organism_of(loaded.tokenizer) is not None


def require_organism(tokenizer, what: str,
                     otherwise: str = "for any other model give a trace or prompt file with --traces FILE") -> Organism:
    """The organism ``tokenizer`` speaks, or a ValueError saying that ``what`` needs one (and ``otherwise``)."""
    org = organism_of(tokenizer)
    if org is None:
        raise ValueError(f"{what} needs an organism model (its word-level tokenizer); {otherwise}")
    return org


def default_preset(loaded: LoadedModel) -> str:
    return "organism" if is_organism(loaded) else "r1"


def verifier_for(loaded: LoadedModel, name: str | None = None) -> Verifier:
    """The verifier ``name`` (organism | math), by default the organism's own for organism models."""
    return get_verifier(name or ("organism" if is_organism(loaded) else "math"))


def _segment(tokenizer, response_ids: list[int], preset: str) -> Segmentation:
    try:
        return segment_ids(tokenizer, response_ids, preset)
    except ValueError as e:  # the ids' characters cannot be placed: report, never crash the set
        return Segmentation(False, f"cannot map characters to tokens ({e})")


def _warn_dropped(source: str, reasons: Counter) -> None:
    reasons = +reasons  # zero counts out
    if reasons:
        detail = ", ".join(f"{n} x {r}" for r, n in reasons.most_common())
        warnings.warn(f"{source}: dropped {sum(reasons.values())} trace(s): {detail}", stacklevel=3)


def _warn_long(source: str, too_long: list[tuple[str, int]], max_tokens: int) -> None:
    """One warning naming the traces dropped for length, and the flag that sets the limit."""
    if too_long:
        names = ", ".join(f"{t!r} ({n})" for t, n in too_long[:5]) + (f" and {len(too_long) - 5} more"
                                                                          if len(too_long) > 5 else "")
        warnings.warn(f"{source}: dropped {len(too_long)} trace(s) longer than {max_tokens} tokens: {names}; "
                      "--max-tokens N sets the limit (at most the model's context)", stacklevel=3)


def _drop_long(records: list[TraceRecord], max_tokens: int | None) -> list[TraceRecord]:
    """Drop traces longer than ``max_tokens`` with a warning (tracing refuses any beyond the context)."""
    if max_tokens is None:
        return records
    _warn_long("trace length", [(r.trace_id, len(r.input_ids)) for r in records if len(r.input_ids) > max_tokens],
               max_tokens)
    return [r for r in records if len(r.input_ids) <= max_tokens]


def sample_organism(loaded: LoadedModel, n: int, seed: int = 0, temperature: float = 1.0,
                    max_new_tokens: int = 320, batch_size: int = 64, correct_only: bool = False,
                    progress: bool = True, on_progress: Callable[[int, int], None] | None = None
                    ) -> list[TraceRecord]:
    """``n`` organism traces sampled by the model on fresh problems, kept when they segment.

    ``on_progress(kept, n)`` is called after each sampled batch (it may raise to stop early).
    Gives up (RuntimeError with the reasons) after 20 n + 100 samples.
    """
    org = require_organism(loaded.tokenizer, "sampling organism traces")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = loaded.tokenizer
    records: list[TraceRecord] = []
    reasons: Counter = Counter()
    bar = tqdm(total=n, desc=f"sampling {org.name} traces", disable=not progress)
    tries = 0
    while len(records) < n and tries < 20 * n + 100:
        problems = [org.task.sample_problem(rng) for _ in range(min(batch_size, 2 * (n - len(records)) + 4))]
        tries += len(problems)
        prompts = [p.prompt() for p in problems]
        out = sample(loaded.model, tok, encode_prompts(tok, prompts), max_new_tokens=max_new_tokens,
                     temperature=temperature, batch_size=batch_size)
        for p, prompt, pids, rids, text in zip(problems, prompts, out.prompt_ids, out.response_ids, out.texts):
            seg = _segment(tok, rids, "organism")
            correct = org.task.verify(p, text)
            if not seg.ok or (correct_only and not correct):
                reasons[seg.reason if not seg.ok else "wrong answer"] += 1
                continue
            if len(records) < n:
                records.append(TraceRecord(f"{org.name}-{seed}-{len(records)}", prompt, text, pids, rids, seg,
                                           str(p.answer), correct))
                bar.update(1)
        if on_progress is not None:
            on_progress(len(records), n)
    bar.close()
    _warn_dropped("organism sampler", reasons)
    if len(records) < n:
        raise RuntimeError(f"the {org.name} sampler kept only {len(records)} of {n} traces after {tries} samples "
                           f"({dict(reasons)}); is the checkpoint trained?")
    return records


def reference_organism(tokenizer, n: int, seed: int = 0) -> list[TraceRecord]:
    """``n`` of the task's own reference traces (all correct), teacher-forced: gold traces for any
    model with an organism's tokenizer, e.g. an untrained one."""
    org = require_organism(tokenizer, "organism:reference traces")
    rng = random.Random(seed)
    tok = tokenizer
    records = []
    for i in range(n):
        t = org.task.sample_trace(rng)
        while not org.task.verify(t.problem, t.response):  # an organism whose traces can slip: redraw
            t = org.task.sample_trace(rng)
        response_ids = tok(t.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seg = _segment(tok, response_ids, "organism")
        if not seg.ok:
            raise ValueError(f"reference trace {i} does not segment ({seg.reason}): {t.response!r}")
        text = tok.decode(response_ids, skip_special_tokens=True)
        records.append(TraceRecord(f"reference-{seed}-{i}", t.prompt, text, tok(t.prompt)["input_ids"], response_ids,
                                   seg, str(t.problem.answer), True, {"labels": [s.label for s in t.steps]}))
    return records


def jsonl_rows(path: str | Path) -> list[tuple[int, dict]]:
    """The JSON objects of a JSONL file with their line numbers (blank lines skipped); errors name
    the file and line."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append((i, row))
    return rows


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    return [row for _, row in jsonl_rows(path)]


def _row_id(row: dict, i: int) -> str:
    return str(row.get("trace_id", row.get("id", f"trace-{i}")))


def _text_field(path: Path, row: dict, i: int, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: trace {_row_id(row, i)!r} (row {i}): field {name!r} is missing or not a "
                         f"non-empty string")
    return value


def _correctness(row: dict, prompt: str, response: str, answer: str | None, organism: Organism | None
                 ) -> bool | None:
    for key in ("correct", "is_correct"):
        if row.get(key) is not None:
            return bool(row[key])
    if organism is not None:
        try:
            return organism.task.verify(organism.task.parse_prompt(prompt), response)
        except (ValueError, KeyError):
            return None
    return grade_math(prompt, response, answer) if answer is not None else None


def read_traces(path: str | Path, loaded: LoadedModel, preset: str | None = None, n: int | None = None,
                max_tokens: int | None = None, correct_only: bool = False) -> list[TraceRecord]:
    """Teacher-forced traces from a JSONL/parquet file of prompt + response: the first ``n`` that
    segment (and fit in ``max_tokens``, and are correct when asked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {path} does not exist")
    preset = preset or default_preset(loaded)
    tok, organism = loaded.tokenizer, organism_of(loaded.tokenizer)
    records, reasons, seen, too_long = [], Counter(), set(), []
    for i, row in enumerate(_read_rows(path)):
        if n is not None and len(records) >= n:
            break
        trace_id = _row_id(row, i)
        if trace_id in seen:
            raise ValueError(f"{path}: trace id {trace_id!r} appears twice")
        seen.add(trace_id)
        prompt = _text_field(path, row, i, "prompt")
        if row.get("prompt_ids") is not None and row.get("response_ids") is not None:
            prompt_ids, response_ids = [int(t) for t in row["prompt_ids"]], [int(t) for t in row["response_ids"]]
        else:
            response = _text_field(path, row, i, "response")
            prompt_ids = tok(prompt)["input_ids"]
            response_ids = tok(response, add_special_tokens=False)["input_ids"]
            if tok.eos_token_id is not None and response_ids[-1:] != [tok.eos_token_id]:
                response_ids.append(tok.eos_token_id)  # F ends with EOS, as in a sampled response
        if max_tokens is not None and len(prompt_ids) + len(response_ids) > max_tokens:
            too_long.append((trace_id, len(prompt_ids) + len(response_ids)))
            continue
        seg = _segment(tok, response_ids, preset)
        if not seg.ok:
            reasons[seg.reason] += 1
            continue
        text = tok.decode(response_ids, skip_special_tokens=True)
        answer = None if row.get("answer") is None else str(row["answer"])
        correct = _correctness(row, prompt, text, answer, organism)
        if correct_only and not correct:
            reasons["not known to be correct"] += 1
            continue
        meta = {k: v for k, v in row.items() if k not in WRITTEN_FIELDS}
        records.append(TraceRecord(trace_id, prompt, text, prompt_ids, response_ids, seg, answer, correct, meta))
    _warn_dropped(str(path), reasons)
    _warn_long(str(path), too_long, max_tokens)
    return records


def read_prompts(path: Path) -> list[dict]:
    """Prompt rows ``{"id", "prompt", "answer"?}`` from a .txt (one a line) or JSONL/parquet file."""
    if path.suffix == ".txt":
        lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
        return [{"id": f"prompt-{i}", "prompt": line.replace("\\n", "\n")} for i, line in enumerate(lines)]
    rows = _read_rows(path)
    for i, row in enumerate(rows):
        _text_field(path, row, i, "prompt")
        row.setdefault("id", f"prompt-{i}")
    return rows


def generate_traces(loaded: LoadedModel, path: str | Path, n: int, preset: str | None = None, seed: int = 0,
                    temperature: float = 1.0, max_new_tokens: int = 512, batch_size: int = 16,
                    correct_only: bool = False, progress: bool = True) -> list[TraceRecord]:
    """Sample a response to each prompt of a prompt file (cycling through it) until ``n`` segment."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    rows = read_prompts(path)
    if not rows:
        raise ValueError(f"prompt file {path} holds no prompts")
    preset = preset or default_preset(loaded)
    torch.manual_seed(seed)
    tok, organism = loaded.tokenizer, organism_of(loaded.tokenizer)
    records, reasons, tries = [], Counter(), 0
    bar = tqdm(total=n, desc="generating traces", disable=not progress)
    while len(records) < n and tries < 10 * n + len(rows):
        chunk = [rows[(tries + j) % len(rows)] for j in range(batch_size)]
        out = sample(loaded.model, tok, encode_prompts(tok, [r["prompt"] for r in chunk]),
                     max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
        for j, (row, pids, rids, text) in enumerate(zip(chunk, out.prompt_ids, out.response_ids, out.texts)):
            seg = _segment(tok, rids, preset)
            answer = None if row.get("answer") is None else str(row["answer"])
            correct = _correctness({}, row["prompt"], text, answer, organism)
            if not seg.ok or (correct_only and not correct):
                reasons[seg.reason if not seg.ok else "wrong or unverifiable answer"] += 1
            elif len(records) < n:
                records.append(TraceRecord(f"{row['id']}-s{tries + j}", row["prompt"], text, pids, rids, seg,
                                           answer, correct))
                bar.update(1)
        tries += batch_size
    bar.close()
    _warn_dropped(str(path), reasons)
    if not records:
        raise RuntimeError(f"no generated response to the prompts in {path} could be segmented "
                           f"({dict(reasons)}); raise max_new_tokens or check the prompts end inside a think block")
    return records


def load_traces(source: str, loaded: LoadedModel, n: int, preset: str | None = None, seed: int = 0,
                correct_only: bool = False, max_tokens: int | None = None, progress: bool = True,
                **sample_kw) -> list[TraceRecord]:
    """``organism`` | ``organism:reference`` | prompt+response file | prompt file (``.txt`` or rows
    without ``response``)."""
    if source == "organism:reference":
        return _drop_long(reference_organism(loaded.tokenizer, n, seed), max_tokens)
    if source == "organism":
        if preset not in (None, "organism"):
            raise ValueError(f"the organism trace sampler segments with the organism preset, not {preset!r}")
        return _drop_long(sample_organism(loaded, n, seed=seed, correct_only=correct_only, progress=progress,
                                          **sample_kw), max_tokens)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"trace source {source!r} is neither 'organism' nor an existing file")
    if path.suffix == ".txt" or (path.suffix in FILE_SUFFIXES and "response" not in (_read_rows(path)[:1] or [{}])[0]):
        records = generate_traces(loaded, path, n, preset, seed=seed, correct_only=correct_only,
                                  progress=progress, **sample_kw)
        return _drop_long(records, max_tokens)
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"trace file {path} must be .jsonl, .parquet or (prompts only) .txt")
    records = read_traces(path, loaded, preset, n=n, max_tokens=max_tokens, correct_only=correct_only)
    if not records:
        raise ValueError(f"{path}: no usable traces (after segmentation{', correctness' if correct_only else ''}"
                         f"{' and length' if max_tokens else ''} filters)")
    return records


def write_traces(path: str | Path, records: list[TraceRecord], labels: list[list[str | None]] | None = None) -> Path:
    """``traces.jsonl``: one trace a line, with its exact ids, steps and labels (read back by `read_traces`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, r in enumerate(records):
            row = {"trace_id": r.trace_id, "prompt": r.prompt, "response": r.response,
                   "step_texts": r.step_texts, "labels": labels[i] if labels is not None else None,
                   "steps": [list(s) for s in r.seg.steps], "answer_span": list(r.seg.answer),
                   "prompt_ids": r.prompt_ids, "response_ids": r.response_ids, "answer": r.answer,
                   "correct": r.correct}
            f.write(json.dumps(row) + "\n")
    return path


def add_trace_arguments(parser: argparse.ArgumentParser, n_traces: int = 200) -> None:
    """The trace-set options every experiment shares."""
    g = parser.add_argument_group("traces")
    g.add_argument("--traces", default=None,
                   help="organism (sampled by the model on fresh problems) | organism:reference (the task's "
                        "reference traces, teacher-forced) | JSONL/parquet of prompt+response "
                        "(teacher-forced) | prompt file: .txt, or JSONL/parquet without 'response' (sampled). "
                        f"Default: organism for an organism model, else the bundled R1 traces ({R1_TRACES_ENV} "
                        "or ../shared/data/r1-traces/ beside the repository)")
    g.add_argument("--n-traces", type=int, default=n_traces)
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="segmentation preset (default: organism for organism-vocabulary models, r1 otherwise)")
    g.add_argument("--temperature", type=float, default=1.0, help="temperature of sampled traces")
    g.add_argument("--max-new-tokens", type=int, default=None, help="length limit of sampled traces")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="drop traces longer than this (prompt + response), naming them in a warning "
                        "(default: the model's context length)")
    g.add_argument("--sample-batch-size", type=int, default=64)


def bundled_r1_traces() -> Path:
    """Where the real R1 traces are read from: ``$KFH_R1_TRACES``, else
    ``../shared/data/r1-traces/deepseek-r1-distill-llama-8b.jsonl`` beside the repository (it may not exist)."""
    env = os.environ.get(R1_TRACES_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "r1-traces" / R1_TRACES_FILE


def _needs_traces(model: str) -> ValueError:
    return ValueError(f"model {model!r} is not an organism, so it needs traces: give --traces FILE (a JSONL of "
                      f"prompt + response, or a prompt file to sample from); the bundled R1 traces are not at "
                      f"{bundled_r1_traces()} (set {R1_TRACES_ENV}=FILE to point at them)")


def default_trace_source(loaded: LoadedModel) -> str:
    """``organism`` for an organism model, else the bundled R1 traces; a ValueError naming
    ``--traces`` when there are none."""
    if is_organism(loaded):
        return "organism"
    if bundled_r1_traces().is_file():
        return str(bundled_r1_traces())
    raise _needs_traces(loaded.name)


def check_trace_arguments(args: argparse.Namespace, model: str | Path) -> None:
    """The trace-option mistakes that show before ``model`` (a spec) is loaded, which can take minutes.

    Only a registered organism or a local folder (maybe a checkpoint trained from one) can be an
    organism model; anything else needs a trace file, the bundled R1 traces by default.
    """
    if args.n_traces < 1:
        raise ValueError(f"--n-traces must be at least 1, got {args.n_traces}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be positive, got {args.max_tokens}")
    maybe_organism = str(model) in ORGANISMS or Path(model).expanduser().is_dir()
    if args.traces is None:
        if not maybe_organism and not bundled_r1_traces().is_file():
            raise _needs_traces(str(model))
    elif args.traces in ORGANISM_SOURCES and not maybe_organism:
        hint = " (or leave --traces out: the bundled R1 traces)" if bundled_r1_traces().is_file() else ""
        raise ValueError(f"--traces {args.traces} needs an organism model, not {str(model)!r}; give a trace or "
                         f"prompt file with --traces FILE{hint}")
    elif args.traces not in ORGANISM_SOURCES and not Path(args.traces).is_file():
        raise FileNotFoundError(f"trace source {args.traces!r} is neither 'organism' nor an existing file")


def model_context(loaded: LoadedModel) -> int | None:
    return getattr(loaded.model.config, "max_position_embeddings", None)


def traces_from_args(args: argparse.Namespace, loaded: LoadedModel, correct_only: bool = False,
                     seed: int | None = None) -> list[TraceRecord]:
    """The trace set the parsed ``add_trace_arguments`` options name.  Fills in ``args.traces`` and
    ``args.max_tokens`` with the values used (the defaults resolved), so a run's settings record them."""
    context = model_context(loaded)
    if args.max_tokens is not None and context is not None and args.max_tokens > context:
        raise ValueError(f"--max-tokens {args.max_tokens} exceeds the context of model {loaded.name!r} ({context})")
    args.traces = args.traces or default_trace_source(loaded)
    args.max_tokens = args.max_tokens or context
    kw = {"temperature": args.temperature, "batch_size": args.sample_batch_size}
    if args.max_new_tokens is not None:
        kw["max_new_tokens"] = args.max_new_tokens
    return load_traces(args.traces, loaded, args.n_traces, preset=args.preset,
                       seed=args.seed if seed is None else seed, correct_only=correct_only,
                       max_tokens=args.max_tokens, **kw)
