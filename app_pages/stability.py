"""Stability: do the KFHs keep their SRA and step scores across checkpoints?

Plots the results folder's ``stability.json`` files (one per training run in a reproduction)
with what they were made with and each checkpoint's SRA grid, and compares a few checkpoints in
the background on the current trace set (training checkpoints found under the runs folder, or a
copy of the model fine-tuned for a few supervised steps when there are none).
"""

from __future__ import annotations

import json
import uuid
from threading import Lock

import pandas as pd
import streamlit as st

from analyses.labels import label_codes
from analyses.figures import short_labels
from analyses.stability import MEASURES, checkpoint_summary, sra_grids_figure, stability_figure, stability_result
from app_pages import jobs
from app_pages.data import TRACE_CHUNK, Workspace, cache_dir, list_runs, run_records
from app_pages.export import figure_downloads
from app_pages.glossary import page_header
from app_pages.provenance import show_provenance, show_result_file
from app_pages.results import Provenance
from app_pages.state import USER_ERRORS, model_or_error, results, selected_heads, settings, workspace
from workbench.heads import Head
from workbench.models import LoadedModel, load_model
from workbench.provenance import stamp
from workbench.tracing import ScoreCache, trace_step_scores
from workbench.training.sft import supervised_finetune
from workbench.training.state import list_checkpoints

SETTINGS = ("n_traces", "labels", "top_n", "traces")


def show(result: dict, name: str) -> None:
    fig = stability_figure(result)
    st.plotly_chart(fig, key=f"fig-{name}")
    figure_downloads(fig, name)
    table = pd.DataFrame({words: result[key] for key, words in MEASURES.items()},
                         index=short_labels(result["checkpoints"]))
    table.insert(0, "checkpoint", result["checkpoints"])
    st.dataframe(table, key=f"table-{name}")
    if result.get("sra"):
        grids = sra_grids_figure(result)
        st.plotly_chart(grids, key=f"grids-{name}")
        figure_downloads(grids, f"{name}_sra_grids")


def compare_checkpoints(job: jobs.Job, first: LoadedModel, lock: Lock, spec: str, device: str | None,
                        ws: Workspace, heads: list[Head], specs: list[str], n_traces: int, top_n: int,
                        sft_steps: int) -> dict:
    """Score the first ``n_traces`` traces at every checkpoint; compare each with the first (the
    shared model ``first`` runs under ``lock``; the other checkpoints are this job's own)."""
    records = run_records(ws, first)[:n_traces]
    by_id = {t.trace_id: t for t in ws.traces}
    codes = [label_codes(by_id[r.trace_id].labels) for r in records]
    specs = list(specs)
    if sft_steps:
        job.report(0, sft_steps, "fine-tuning a copy (SFT steps)")
        copy = load_model(specs[0], device=device)  # fine-tuned in place, then restored: not the shared one
        out = cache_dir() / "stability" / f"sft-{sft_steps}-{first.fingerprint[:12]}"
        specs.append(str(supervised_finetune(copy, records, sft_steps, 3e-4, out)))
    if len(specs) < 2:
        raise ValueError("choose at least two checkpoints, or add a fine-tuned copy (SFT steps > 0)")
    summaries, items, cache = [], [r.item() for r in records], ScoreCache(cache_dir() / "scores")
    total = len(specs) * len(items)
    for c, path in enumerate(specs):
        ckpt = first if path == spec else load_model(path, device=device)
        if ckpt.tokenizer.get_vocab() != first.tokenizer.get_vocab():
            raise ValueError(f"checkpoint {path!r} has another tokenizer than {first.name!r}: stability needs the "
                             "same token ids at every checkpoint")
        scores = []
        for start in range(0, len(items), TRACE_CHUNK):
            job.report(c * len(items) + start, total, f"scoring traces at checkpoint {c + 1} of {len(specs)}")
            chunk = items[start : start + TRACE_CHUNK]
            if ckpt is first:
                scores += jobs.locked(job, lock, lambda: trace_step_scores(first, chunk, cache=cache))
            else:
                scores += trace_step_scores(ckpt, chunk, cache=cache)
        summaries.append(checkpoint_summary([x.numpy() for x in scores], codes, heads))
    job.report(total, total, "comparing")
    return {**stability_result(specs, summaries, heads, top_n), "n_traces": len(records),
            "labels": ws.settings.get("labels"), **stamp(first), "traces": {"source": ws.source}}


page_header("Stability across checkpoints", "stability", "SRA", "KFH", "S_k")
s = settings()
folder = results(s)
if folder is not None and folder.stability:
    files = {f"{p.parent.name} ({p})": p for p in folder.stability}
    chosen = st.selectbox("Stability file", list(files), key="stab_file") if len(files) > 1 else next(iter(files))
    show_result_file(files[chosen], SETTINGS, show)
elif folder is not None:
    st.info(f"{folder.root} has no stability.json (reproduce.py writes one per AttnPO run under stability/). "
             "Write one with `python experiments/stability.py --checkpoints organism runs/train/checkpoints/step_50 "
             "--out DIR`, or compare a few checkpoints below.")
else:
    st.info("No run folder in the sidebar: compare a few checkpoints below, or open a results folder "
             "(e.g. `docs/results/organism`) to see its stability.json.")

st.subheader("Compare checkpoints here")
found = [str(c) for run in list_runs(s.runs_root, "metrics.jsonl") for c in list_checkpoints(run)]
options = [s.model] + found
specs = st.multiselect("Checkpoints (the first is the reference)", options, default=[s.model] + found[-2:],
                       key="stab_specs", help=f"training checkpoints found under {s.runs_root}/")
c1, c2, c3 = st.columns(3)
n_traces = c1.number_input("traces", 2, 256, 16, key="stab_traces")
top_n = c2.number_input("top N for the overlap", 1, 16, 3, key="stab_top")
sft = c3.number_input("add a copy fine-tuned for N SFT steps", 0, 200, 0 if found else 10, key="stab_sft",
                      help="a second checkpoint when no training run exists yet")
if st.button("Compare", key="stab_run", type="primary"):
    first, ws = model_or_error(s), workspace(quiet=True)
    heads = selected_heads(ws) if ws is not None else []
    if first is not None and ws is None:
        st.error("The trace set is not ready yet: open the Heads page and wait for it.")
    elif first is not None and not heads:
        st.error("No KFHs are selected: choose some on the Heads page.")
    elif first is not None:
        key = f"stability-{uuid.uuid4().hex}"
        args = (first, jobs.model_lock(first.model), s.model, s.device, ws, heads, specs, int(n_traces), int(top_n),
                int(sft))
        jobs.start(key, f"Comparing {len(specs) + bool(sft)} checkpoints on {n_traces} traces",
                   lambda job: compare_checkpoints(job, *args))
        st.session_state["stability_job"] = key
job = jobs.get(st.session_state.get("stability_job", ""))
if job is not None and job.running:
    jobs.show_progress(job)
elif job is not None and job.cancelled:
    st.info("The comparison was cancelled.")
elif job is not None and job.error is not None:
    st.error(f"The comparison failed: {job.error}")
elif job is not None:
    st.session_state["stability_run"] = job.result  # kept with the session, whatever the job store forgets
if (result := st.session_state.get("stability_run")) is not None and not (job is not None and job.running):
    st.markdown("**This session's comparison**")
    show_provenance(Provenance.of(result, SETTINGS), "Run here")
    try:
        show(result, "stability_app")
    except (*USER_ERRORS, TypeError) as e:
        st.error(f"Cannot plot this comparison: {e}")
    st.download_button("Download stability.json", json.dumps(result, indent=2), "stability.json", "application/json",
                       key="stab_json", on_click="ignore")
