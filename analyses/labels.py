"""Step criticality labels, from any of four sources behind one interface (`get_labels`).

A label is ``"critical"``, ``"redundant"`` or anything else (``"plan"``, None), which SRA leaves
out of its (critical, redundant) pairs.  Sources, as ``--labels`` spells them:

- ``organism``: the task's ground truth from the sampled step texts (the plan is ``"plan"``).
- ``file:PATH``: a JSONL of ``{"trace_id", "step", "label"}`` rows, what LLM judges produce;
  steps the file does not name stay unlabelled.  `write_labels` writes this format.
- ``counterfactual`` (``counterfactual:top=0.3`` or ``counterfactual:threshold=2.0``): no judge.
  Remove one step's tokens, teacher-force the rest, and measure how far the log-probability of
  the final answer F falls; the steps with the largest falls (a top fraction of each trace, or
  every fall above a threshold in nats) are critical.
- ``chunks``: real R1 traces annotated by the Thought Anchors study: each step takes the label of
  the majority of its characters' chunk function tags (`CRITICAL_TAGS` / `REDUNDANT_TAGS`).

`default_labels` picks organism for an organism, chunks when every trace carries them (the bundled
R1 traces do), else counterfactual.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.cache import content_key
from workbench.generation import tail_logprobs
from workbench.models import LoadedModel
from workbench.traces import TraceRecord, is_organism, jsonl_rows, require_organism
from workbench.tracing import ScoreCache

CRITICAL, REDUNDANT = "critical", "redundant"
Labels = list[list[str | None]]

# Thought Anchors function tags: computing, planning, retrieving facts and stating results carry the
# solution; re-checking, hedging and restating the problem are what an efficient trace drops.
CRITICAL_TAGS = {"plan_generation", "active_computation", "fact_retrieval", "result_consolidation",
                 "final_answer_emission"}
REDUNDANT_TAGS = {"self_checking", "uncertainty_management", "problem_setup"}


def label_codes(labels: list[str | None]) -> np.ndarray:
    """1 critical, 0 redundant, -1 left out of pairs."""
    return np.array([1 if x == CRITICAL else 0 if x == REDUNDANT else -1 for x in labels], dtype=np.int8)


def organism_labels(records: list[TraceRecord], tokenizer) -> Labels:
    """Ground truth by the labeller of the organism ``tokenizer`` speaks."""
    task = require_organism(tokenizer, "--labels organism").task
    out = []
    for r in records:
        try:
            problem = task.parse_prompt(r.prompt)
        except (ValueError, KeyError) as e:
            raise ValueError(f"trace {r.trace_id!r}: organism labels need an organism prompt ({e})") from e
        out.append([label for label, _ in task.label_response(problem, [t.strip() for t in r.step_texts])])
    return out


def _parse_label(value, where: str) -> str:
    if value in (CRITICAL, "essential", 1, True):
        return CRITICAL
    if value in (REDUNDANT, 0, False):
        return REDUNDANT
    raise ValueError(f"{where}: label {value!r} is not critical/redundant (or 1/0)")


def file_labels(path: str | Path, records: list[TraceRecord]) -> Labels:
    """Labels from a JSONL of ``{"trace_id", "step", "label"}`` rows (``id``/``step_index`` also read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    by_id = {r.trace_id: i for i, r in enumerate(records)}
    out: Labels = [[None] * r.n_steps for r in records]
    matched = 0
    for line_no, row in jsonl_rows(path):
        where = f"{path}:{line_no}"
        trace_id = str(row.get("trace_id", row.get("id", "")))
        step = row.get("step", row.get("step_index"))
        if not trace_id or not isinstance(step, int) or "label" not in row:
            raise ValueError(f"{where}: each row needs trace_id, an integer step and a label")
        if trace_id not in by_id:
            continue  # a labels file may cover more traces than this set
        i = by_id[trace_id]
        if not 0 <= step < records[i].n_steps:
            raise ValueError(f"{where}: trace {trace_id!r} has {records[i].n_steps} steps; step {step} "
                             "is out of range (was it segmented with another preset?)")
        out[i][step] = _parse_label(row["label"], f"{where} (trace {trace_id!r}, step {step})")
        matched += 1
    if not matched:
        raise ValueError(f"{path}: no row matches any of the {len(records)} trace ids (e.g. {records[0].trace_id!r})")
    return out


def write_labels(path: str | Path, records: list[TraceRecord], labels: Labels) -> Path:
    """The labels-file format `file_labels` reads; unlabelled steps are left out."""
    path = Path(path)
    with open(path, "w") as f:
        for r, lab in zip(records, labels):
            for k, x in enumerate(lab):
                if x in (CRITICAL, REDUNDANT):
                    f.write(json.dumps({"trace_id": r.trace_id, "step": k, "label": x}) + "\n")
    return path


def chunk_labels(records: list[TraceRecord]) -> Labels:
    """Majority (by characters) of the Thought Anchors function tags of the chunks a step covers."""
    out = []
    for r in records:
        chunks = r.meta.get("chunks")
        if not chunks:
            raise ValueError(f"trace {r.trace_id!r} has no 'chunks' field to take labels from")
        votes = np.zeros((2, len(r.response) + 1))  # per character: critical, redundant
        pos = 0
        for ch in chunks:
            start = r.response.find(ch["chunk"], pos)
            if start < 0:
                continue  # a chunk the decoded text does not reproduce keeps no characters
            end = pos = start + len(ch["chunk"])
            tags = set(ch.get("function_tags") or [])
            votes[0, start:end] += bool(tags & CRITICAL_TAGS)
            votes[1, start:end] += bool(tags & REDUNDANT_TAGS)
        labels = []
        for s, e in r.seg.step_char_spans:
            crit, red = votes[0, s:e].sum(), votes[1, s:e].sum()
            labels.append(CRITICAL if crit > red else REDUNDANT if red > crit else None)
        out.append(labels)
    return out


def answer_logprobs(loaded: LoadedModel, rows: list[list[int]], answer_len: int, batch_size: int = 8) -> np.ndarray:
    """Sum of log p(F) for token rows that all end with the same ``answer_len`` tokens of F."""
    return tail_logprobs(loaded.model, loaded.tokenizer.pad_token_id or 0, rows, answer_len, batch_size).sum(-1)


def counterfactual_drops(loaded: LoadedModel, records: list[TraceRecord], batch_size: int = 8,
                         progress: bool = True, cache: ScoreCache | None = None) -> list[np.ndarray]:
    """Per trace and step: log p(F | full trace) - log p(F | trace without that step's tokens).

    One forward pass per step, so each finished trace goes to ``cache`` (when given) at once.
    """
    drops = []
    bar = tqdm(total=sum(len(r.input_ids) * (r.n_steps + 1) for r in records), unit="tok", unit_scale=True,
               desc=f"counterfactual labels, {len(records)} traces", disable=not progress)
    for done, r in enumerate(records, 1):
        ids = r.input_ids
        steps, answer = r.seg.absolute(len(r.prompt_ids))
        key = content_key("counterfactual-drops", loaded.fingerprint, ids, steps, answer)
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            drops.append(cached.double().numpy())
        else:
            rows = [ids] + [ids[:s] + ids[e:] for s, e in steps]
            lp = answer_logprobs(loaded, rows, answer[1] - answer[0], batch_size)
            drops.append(lp[0] - lp[1:])
            if cache is not None:
                cache.put(key, torch.from_numpy(np.asarray(drops[-1], dtype=np.float64)))
        bar.set_postfix_str(f"{done}/{len(records)} traces", refresh=False)
        bar.update(len(ids) * (r.n_steps + 1))
    bar.close()
    return drops


def threshold_labels(drops: list[np.ndarray], top: float | None = None, threshold: float | None = None) -> Labels:
    """Critical = the ``top`` fraction of each trace's steps by drop (at least one, never all), or
    every step whose drop exceeds ``threshold`` nats."""
    if (top is None) == (threshold is None):
        raise ValueError("give exactly one of top (a fraction) or threshold (nats)")
    if top is not None and not 0 < top < 1:
        raise ValueError(f"counterfactual top fraction must be in (0, 1), got {top}")
    out = []
    for d in drops:
        if threshold is not None:
            crit = d > threshold
        else:
            n = min(max(1, round(top * len(d))), len(d) - 1)
            crit = np.zeros(len(d), dtype=bool)
            crit[np.argsort(-d, kind="stable")[:n]] = True
        out.append([CRITICAL if c else REDUNDANT for c in crit])
    return out


def _counterfactual_options(spec: str) -> dict:
    opts = {"top": 0.3, "threshold": None}
    if ":" in spec:
        key, _, value = spec.split(":", 1)[1].partition("=")
        if key not in ("top", "threshold"):
            raise ValueError(f"bad labels spec {spec!r}: use counterfactual, counterfactual:top=F or "
                             "counterfactual:threshold=NATS")
        opts = {"top": None, "threshold": None, key: float(value)}
    return opts


def default_labels(loaded: LoadedModel, records: list[TraceRecord]) -> str:
    """organism for an organism model, chunks when every trace carries Thought Anchors chunks, else counterfactual."""
    if is_organism(loaded):
        return "organism"
    return "chunks" if records and all(r.meta.get("chunks") for r in records) else "counterfactual"


def get_labels(spec: str, records: list[TraceRecord], loaded: LoadedModel | None = None,
               progress: bool = True, cache: ScoreCache | None = None) -> Labels:
    """Labels of every step of every record from the source ``spec`` names (see module doc);
    ``cache`` keeps counterfactual drops per trace, so a killed run resumes."""
    if spec == "organism":
        if loaded is None:
            raise ValueError("organism labels need the model (its tokenizer names the organism)")
        return organism_labels(records, loaded.tokenizer)
    if spec.startswith("file:"):
        return file_labels(spec[5:], records)
    if spec == "chunks":
        return chunk_labels(records)
    if spec.split(":")[0] == "counterfactual":
        if loaded is None:
            raise ValueError("counterfactual labels need the model")
        return threshold_labels(counterfactual_drops(loaded, records, progress=progress, cache=cache),
                                **_counterfactual_options(spec))
    raise ValueError(f"unknown labels source {spec!r}: use organism, file:PATH, counterfactual[:top=F|:threshold=X] "
                     "or chunks")
