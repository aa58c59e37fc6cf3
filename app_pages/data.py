"""The app's data: one trace set with every head's step scores and SRA -- a *workspace*.

A workspace is computed in-process (organism traces sampled on first open, or an uploaded trace
file), with the same library calls as ``experiments/discover_heads.py``, or read back from the
artefacts such a run wrote (``sra.csv``, ``kfh.json``, ``traces.jsonl``, ``scores.safetensors``);
a folder with only ``sra.csv`` and ``kfh.json`` gives a workspace without traces (the heatmap and
the table).  Long builds report ``(done, total, what)`` through a ``Report`` callback, which may
raise to cancel.  Nothing here touches Streamlit, so the page code stays about presentation.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from analyses.labels import get_labels, label_codes
from analyses.sra import discover, sra_table
from analyses.verdict import verdict
from app_pages.results import TRACE_FILES
from workbench.heads import Head, model_shape
from workbench.kfh import load_kfh
from workbench.models import LoadedModel
from workbench.organism import ORGANISMS, Organism, organism_of
from workbench.steps import segment_text, token_char_offsets
from workbench.traces import TraceRecord, default_preset, jsonl_rows, read_traces, sample_organism, write_traces
from workbench.tracing import ScoreCache, trace_step_scores

ENV_N_TRACES = "KFH_APP_N_TRACES"  # traces sampled on first open (tests set it small)
ENV_CACHE = "KFH_APP_CACHE"  # the tracer's disk cache lives under it
R1_KINDS = {1: "confused/branch", 2: "progression", 3: "summary", 4: "final answer"}
UPLOAD_SUFFIXES = (".jsonl", ".parquet")
TABLE_COLUMNS = ("layer", "head", "name", "sra", "ci_low", "ci_high")

SAMPLE_BATCH = 16  # organism traces sampled per batch: progress moves in steps this small, at no cost in speed
TRACE_CHUNK = 8  # traces scored per progress report

Report = Callable[[int, int, str], None]  # (done, total, what); may raise to cancel


def default_n_traces() -> int:
    value = os.environ.get(ENV_N_TRACES, "64")
    if not value.isdigit() or int(value) < 4:
        raise ValueError(f"{ENV_N_TRACES}={value!r}: give a whole number of traces, at least 4")
    return int(value)


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "kfh-workbench"))


@dataclass
class TraceView:
    """What the trace viewer shows of one trace."""

    trace_id: str
    prompt: str
    response: str
    step_texts: list[str]
    labels: list[str | None]  # critical / redundant / plan / None (unknown)
    kinds: list[str]
    step_lengths: list[int]  # tokens per step
    answer_len: int  # |F|: tokens after </think>, EOS included
    total_len: int  # |q| + |o|
    correct: bool | None


@dataclass
class Workspace:
    """A labelled trace set, its per-head step scores ``[L, H, K]`` and the SRA table."""

    source: str  # where it came from, in words
    model: str
    fingerprint: str
    n_layers: int
    n_heads: int
    traces: list[TraceView]
    scores: list[np.ndarray]
    table: pd.DataFrame  # sra.csv columns: layer, head, name, sra, ci_low, ci_high, sra_discovery, ...
    kfh: list[Head]  # the KFHs chosen by discovery (the default selection)
    settings: dict = field(default_factory=dict)
    baselines: dict | None = None  # trivial rankers (baselines.json)
    verdict: dict | None = None  # do the KFHs beat the trivial rankers (analyses.verdict, baselines.json)
    run_dir: Path | None = None
    records: list[TraceRecord] | None = None  # token-level traces, when computed in this process
    missing: list[str] = field(default_factory=list)  # run files absent, without which there are no traces

    @property
    def has_traces(self) -> bool:
        return bool(self.traces)

    def grid(self, column: str = "sra") -> np.ndarray:
        """A column of the SRA table as a ``[layers, heads]`` array."""
        grid = np.full((self.n_layers, self.n_heads), np.nan)
        grid[self.table["layer"].to_numpy(), self.table["head"].to_numpy()] = self.table[column].to_numpy(float)
        return grid

    def ranking_column(self) -> str:
        """Heads are chosen on the discovery split when the table has it (held-out SRA stays honest)."""
        return "sra_discovery" if "sra_discovery" in self.table else "sra"

    def top(self, n: int) -> list[Head]:
        order = self.table.sort_values(self.ranking_column(), ascending=False, kind="stable", na_position="last")
        return [(int(r.layer), int(r.head)) for r in order.head(n).itertuples()]

    def step_scores(self, index: int, heads: list[Head]) -> np.ndarray:
        """Trace ``index``'s per-step score, averaged over ``heads`` (one head: that head's)."""
        if not heads:
            raise ValueError("choose at least one head")
        layers, hs = np.array(heads).T
        return self.scores[index][layers, hs].mean(axis=0)


def step_kinds(prompt: str, response: str, step_texts: list[str], preset: str, org: Organism | None) -> list[str]:
    """Each step's kind: the organism's ground-truth kind, else the r1 segmenter's trigger kind."""
    if org is not None:
        try:
            problem = org.task.parse_prompt(prompt)
            return [kind for _, kind in org.task.label_response(problem, [t.strip() for t in step_texts])]
        except (ValueError, KeyError):
            pass
    seg = segment_text(response, preset)
    if seg.ok and len(seg.step_kinds) == len(step_texts):
        return [R1_KINDS.get(k, str(k)) for k in seg.step_kinds]
    return ["?"] * len(step_texts)


def _view(r: TraceRecord, labels: list[str | None], preset: str, org: Organism | None) -> TraceView:
    return TraceView(r.trace_id, r.prompt, r.response, r.step_texts, labels,
                     step_kinds(r.prompt, r.response, r.step_texts, preset, org), r.step_lengths,
                     r.seg.answer[1] - r.seg.answer[0], len(r.input_ids), r.correct)


def analyse(loaded: LoadedModel, records: list[TraceRecord], labels_spec: str, source: str,
            report: Report, seed: int = 0, n_boot: int = 1000) -> Workspace:
    """Label, trace (through the disk score cache) and rank every head of ``records``."""
    if len(records) < 4:
        raise ValueError(f"{source}: {len(records)} usable trace(s); at least 4 are needed to split them into "
                         "discovery and held-out halves")
    report(0, len(records), f"labelling steps ({labels_spec})")
    labels = get_labels(labels_spec, records, loaded, progress=False)
    items = [r.item() for r in records]
    cache = ScoreCache(cache_dir() / "scores")
    scores = []
    for start in range(0, len(items), TRACE_CHUNK):
        report(start, len(items), "tracing every head (traces)")
        scores += trace_step_scores(loaded, items[start : start + TRACE_CHUNK], batch_size=TRACE_CHUNK, cache=cache)
    report(len(items), len(items), "ranking heads by SRA")
    arrays = [s.numpy() for s in scores]
    result = discover(arrays, [label_codes(x) for x in labels], [r.step_lengths for r in records],
                      seed=seed, n_boot=n_boot)
    n_layers, n_heads, _ = model_shape(loaded.model.config)
    preset = default_preset(loaded)
    settings = {"n_traces": len(records), "traces": source, "preset": preset, "labels": labels_spec, "seed": seed,
                "n_discovery": result.discovery.n_traces, "n_held_out": result.held_out.n_traces}
    org = organism_of(loaded.tokenizer)
    return Workspace(source, loaded.name, loaded.fingerprint, n_layers, n_heads,
                     [_view(r, x, preset, org) for r, x in zip(records, labels)], arrays,
                     pd.DataFrame(sra_table(result)), result.heads, settings, result.baselines,
                     verdict(result, n_boot=n_boot, seed=seed), records=records)


def organism_records(loaded: LoadedModel, n: int, seed: int, report: Report) -> list[TraceRecord]:
    """The first ``n`` traces of the organism's growing trace pool for ``seed``.

    The pool is ``traces.jsonl`` in the cache folder (keyed on the weights), read back token ids
    and all: a restarted app, or a smaller ``n``, samples nothing; a larger ``n`` samples only the
    traces the pool lacks (each batch with its own seed, so trace ids never repeat).
    """
    org = organism_of(loaded.tokenizer)
    path = cache_dir() / "traces" / f"{org.name if org else 'organism'}-{loaded.fingerprint[:16]}-s{seed}.jsonl"
    pool = read_traces(path, loaded, "organism") if path.is_file() else []
    while len(pool) < n:
        have = len(pool)
        batch = sample_organism(loaded, min(n - have, 4 * SAMPLE_BATCH), seed=seed * 100_003 + have if have else seed,
                                batch_size=SAMPLE_BATCH, progress=False,
                                on_progress=lambda kept, _: report(have + kept, n, "sampling organism traces"))
        pool += batch
        tmp = write_traces(path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}"), pool)
        os.replace(tmp, path)  # a killed app never leaves a half-written pool
    report(n, n, "sampling organism traces")
    return pool[:n]


def organism_workspace(loaded: LoadedModel, n_traces: int, seed: int, report: Report) -> Workspace:
    """First open: ``n_traces`` traces sampled by the organism, labelled by its ground truth."""
    records = organism_records(loaded, n_traces, seed, report)
    return analyse(loaded, records, "organism", f"{n_traces} organism traces (seed {seed})", report, seed=seed)


def save_upload(name: str, data: bytes, folder: Path) -> Path:
    """Write an uploaded trace file under ``folder`` with a safe version of its own name."""
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ValueError(f"uploaded file {name!r}: expected a .jsonl or .parquet file of traces with 'prompt' and "
                         f"'response' columns, not {suffix or 'a file without extension'!r}")
    if not data.strip():
        raise ValueError(f"uploaded file {name!r} is empty")
    path = folder / (re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem) + suffix)
    path.write_bytes(data)
    return path


def upload_workspace(loaded: LoadedModel, name: str, data: bytes, labels_spec: str, report: Report) -> Workspace:
    """An uploaded JSONL/parquet of prompt + response, teacher-forced; errors name the file, line and field."""
    report(0, 0, f"reading {name}")
    with tempfile.TemporaryDirectory() as tmp:
        path = save_upload(name, data, Path(tmp))
        if path.suffix == ".parquet":
            check_parquet_columns(path, name)
        try:
            records = read_traces(path, loaded)
        except (ValueError, KeyError) as e:
            raise ValueError(str(e).replace(str(path), name)) from e
    return analyse(loaded, records, labels_spec, f"upload {name}", report)


def check_parquet_columns(path: Path, name: str) -> None:
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"uploaded file {name!r} is not a readable parquet file ({e})") from e
    missing = [c for c in ("prompt", "response") if c not in columns]
    if missing:
        raise ValueError(f"uploaded file {name!r}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(it has {', '.join(columns) or 'none'})")


# --- run directories -------------------------------------------------------------------------------


def run_workspace(run_dir: str | Path) -> Workspace:
    """The workspace a discover run wrote (``experiments/discover_heads.py --out DIR``); without
    its traces.jsonl and scores.safetensors, the head table alone (``missing`` names them)."""
    run_dir = Path(run_dir)
    absent = [f for f in ("sra.csv", "kfh.json") if not (run_dir / f).is_file()]
    if absent:
        raise FileNotFoundError(f"run directory {run_dir} lacks {', '.join(absent)}; write one with "
                                f"python experiments/discover_heads.py --out {run_dir}")
    table = pd.read_csv(run_dir / "sra.csv")
    absent = [c for c in TABLE_COLUMNS if c not in table]
    if absent:
        raise ValueError(f"{run_dir / 'sra.csv'}: missing column(s) {', '.join(absent)}")
    sel = load_kfh(run_dir / "kfh.json")
    summary = json.loads((run_dir / "baselines.json").read_text()) if (run_dir / "baselines.json").is_file() else {}
    ws = Workspace(f"run {run_dir}", sel.model, sel.fingerprint, sel.n_layers, sel.n_heads, [], [], table, sel.heads,
                   sel.settings, summary.get("baselines"), summary.get("verdict"), run_dir=run_dir,
                   missing=[f for f in TRACE_FILES if not (run_dir / f).is_file()])
    if not ws.missing:
        preset = sel.settings.get("preset") or ("organism" if sel.model in ORGANISMS else "r1")
        ws.traces, ws.scores = _run_traces(run_dir, sel.n_layers, sel.n_heads, sel.model, preset)
    return ws


def _run_traces(run_dir: Path, n_layers: int, n_heads: int, model: str, preset: str
                ) -> tuple[list[TraceView], list[np.ndarray]]:
    scores = load_file(str(run_dir / "scores.safetensors"))
    org = ORGANISMS.get(model)
    views, arrays = [], []
    for i, row in jsonl_rows(run_dir / "traces.jsonl"):
        tid = str(row.get("trace_id"))
        if tid not in scores:
            raise ValueError(f"{run_dir / 'traces.jsonl'}:{i}: trace {tid!r} has no scores in scores.safetensors")
        steps, (f0, f1) = row["steps"], row["answer_span"]
        if scores[tid].shape != (n_layers, n_heads, len(steps)):
            raise ValueError(f"{run_dir / 'scores.safetensors'}: trace {tid!r} has scores of shape "
                             f"{scores[tid].shape}, expected ({n_layers}, {n_heads}, {len(steps)})")
        labels = row.get("labels") or [None] * len(steps)
        views.append(TraceView(tid, row["prompt"], row["response"], row["step_texts"], labels,
                               step_kinds(row["prompt"], row["response"], row["step_texts"], preset, org),
                               [e - s for s, e in steps], f1 - f0, len(row["prompt_ids"]) + len(row["response_ids"]),
                               row.get("correct")))
        arrays.append(scores[tid])
    return views, arrays


def run_records(ws: Workspace, loaded: LoadedModel) -> list[TraceRecord]:
    """Token-level traces of the workspace, for analyses that run the model (ablation, stability)."""
    if ws.records is not None:
        return ws.records
    if not ws.has_traces:
        raise ValueError(f"{ws.source} has no traces (it lacks {', '.join(ws.missing)})")
    if ws.fingerprint != loaded.fingerprint:
        raise ValueError(f"{ws.source} was traced with model {ws.model!r} (fingerprint {ws.fingerprint}); choose "
                         f"that model in the sidebar (now: {loaded.name!r}, fingerprint {loaded.fingerprint})")
    return read_traces(ws.run_dir / "traces.jsonl", loaded, ws.settings.get("preset"))


def ticked_heads(table: pd.DataFrame, edited_rows: dict) -> set[str]:
    """The heads ticked in the head table (columns ``KFH`` and ``name``) after the data editor's
    ``edited_rows`` (``{row position: {column: new value}}``)."""
    ticked = set(table.loc[table["KFH"], "name"])
    for row, change in edited_rows.items():
        if "KFH" in change:
            name = table.iloc[int(row)]["name"]
            ticked = ticked | {name} if change["KFH"] else ticked - {name}
    return ticked


@dataclass
class TokenTrace:
    """One trace token by token, for the token-level view."""

    texts: list[str]  # each token's characters, prompt then response up to the end of F
    steps: list[int | None]  # the step each token belongs to (None: prompt, between steps, F)
    prompt_len: int
    answer: tuple[int, int]  # F's absolute span


def token_trace(record: TraceRecord, tokenizer) -> TokenTrace:
    """Each token's text (from decoding the ids themselves) and its step."""
    prompt_text, prompt_offsets = token_char_offsets(tokenizer, record.prompt_ids)
    text, offsets = token_char_offsets(tokenizer, record.response_ids)
    texts = [prompt_text[a:b] for a, b in prompt_offsets] + [text[a:b] for a, b in offsets]
    steps: list[int | None] = [None] * len(texts)
    item = record.item()
    for k, (a, b) in enumerate(item.steps):
        steps[a:b] = [k] * (b - a)
    return TokenTrace(texts[: item.answer[1]], steps[: item.answer[1]], len(record.prompt_ids), item.answer)


def list_runs(root: str | Path, artefact: str) -> list[Path]:
    """Folders under ``root`` (any depth) holding ``artefact``, e.g. metrics.jsonl."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob(artefact)) if root.is_dir() else []


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A training run's ``metrics.jsonl`` as a table (one row per step)."""
    path = Path(run_dir) / "metrics.jsonl"
    frame = pd.DataFrame([row for _, row in jsonl_rows(path)])
    if frame.empty:
        return frame
    if "step" not in frame:
        raise ValueError(f"{path}: rows have no 'step' field")
    return frame.sort_values("step")


def train_command(model: str, organism: bool, kfh_path: Path) -> str:
    """The trainer invocation that uses ``kfh_path``: the organism AttnPO config (another organism
    than the first also names its task), or the HF one (SmolLM2 by default; any other model is
    passed as ``model.name``)."""
    path = kfh_path.resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    config = "configs/organism/attnpo.yaml" if organism else "configs/hf/smollm2.yaml"
    override = "" if model == ("organism" if organism else "smollm2") else f" model.name={shlex.quote(model)}"
    if organism and model in ORGANISMS and model != "organism":
        override += f" data.task={shlex.quote(model)}"
    return f"python -m workbench.train --config {config}{override} kfh.path={shlex.quote(str(shown))}"
