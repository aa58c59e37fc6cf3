"""Step ablation: pass@k and the answer's log-probability after removing the highest / lowest /
random KFH-score steps.

Plots the results folder's ``ablation.json`` with what it was made with, and runs a small
ablation in the background on the current trace set (its correct traces, the KFHs chosen on the
Heads page), with progress per trace and a Cancel button.
"""

from __future__ import annotations

import json
import uuid
from threading import Lock

import pandas as pd
import streamlit as st

from analyses.ablation import CONDITION_WORDS, MEASURES, MODES, ablation_figure, gap_lines, run_ablation, summary_rows
from app_pages import jobs
from app_pages.data import Workspace, run_records
from app_pages.export import figure_downloads
from app_pages.glossary import page_header
from app_pages.provenance import show_provenance, show_result_file
from app_pages.results import Provenance
from app_pages.state import USER_ERRORS, model_or_error, results, selected_heads, settings, workspace
from workbench.heads import Head, head_name
from workbench.models import LoadedModel
from workbench.provenance import stamp
from workbench.traces import verifier_for

SETTINGS = ("n_traces", "m", "measure", "mode", "n_samples", "temperature", "traces")


def show(result: dict, name: str) -> None:
    for warning in result.get("warnings", []):  # why the bars may show nothing (analyses.ablation)
        st.warning(warning)
    fig = ablation_figure(result)
    st.plotly_chart(fig, key=f"fig-{name}")
    figure_downloads(fig, name)
    table = pd.DataFrame(summary_rows(result))
    table.insert(0, "steps removed", [CONDITION_WORDS.get(c, c) for c in table.pop("removed")])
    st.dataframe(table, hide_index=True, key=f"table-{name}")
    if lines := gap_lines(result):
        st.caption("Paired gaps, mean over traces [95% CI]: " + " · ".join(lines))
    if rows := result.get("per_trace"):
        measured = ([f"correct answers of {result['n_samples']}"] if any("correct" in r for r in rows) else []) + (
            ["log p(F)"] if any("logprob" in r for r in rows) else [])
        with st.expander(f"Per trace ({len(rows)}): steps removed, {' and '.join(measured)}"):
            st.dataframe(pd.DataFrame([{"trace": r["trace_id"],
                                        **{f"{c} removed": v for c, v in r["removed"].items()},
                                        **{f"{c} correct": v for c, v in r.get("correct", {}).items()},
                                        **{f"{c} log p(F)": v["F_total"] for c, v in r.get("logprob", {}).items()}}
                                       for r in rows]), hide_index=True, key=f"per-trace-{name}")
    answers = [{"trace": r["trace_id"], "steps removed": c, "correct": a["correct"], "answer": a["text"]}
               for r in result.get("per_trace") or [] for c, kept in r.get("answers", {}).items() for a in kept]
    if answers:
        with st.expander(f"Sampled answers ({len(answers)} kept, with the verifier's verdict)"):
            st.dataframe(pd.DataFrame(answers), hide_index=True, key=f"answers-{name}")


def ablate(job: jobs.Job, loaded: LoadedModel, lock: Lock, ws: Workspace, heads: list[Head], n_traces: int, m: int,
           n_samples: int, mode: str, measure: str) -> dict:
    """A small ablation of the trace set's first ``n_traces`` correct traces with ``heads`` as KFHs."""
    job.report(0, n_traces, "reading the traces")
    records = {r.trace_id: r for r in run_records(ws, loaded)}
    chosen = [i for i, t in enumerate(ws.traces) if t.correct and t.trace_id in records][:n_traces]
    if not chosen:
        raise ValueError(f"{ws.source} has no correct trace to ablate")
    ks = tuple(k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_samples)
    result = jobs.locked(job, lock, lambda: run_ablation(
        loaded, [records[ws.traces[i].trace_id] for i in chosen], [ws.step_scores(i, heads) for i in chosen], m,
        verifier_for(loaded), n_samples=n_samples, ks=ks, mode=mode, measure=measure, progress=False,
        on_progress=lambda done, total: job.report(done, total, "ablating traces")))
    return {**result, **stamp(loaded), "kfh": [head_name(h) for h in heads],
            "traces": {"source": ws.source, "correct_only": True}}


page_header("Step ablation", "ablation", "forced", "pass@k", "log p", "KFH")
folder = results()
if folder is not None and folder.ablation is not None:
    show_result_file(folder.ablation, SETTINGS, show)
elif folder is not None:
    st.info(f"{folder.root} has no ablation.json. Write one with `python experiments/ablate_steps.py --model "
             "organism --kfh DIR/kfh.json --out DIR`, or run a small one below.")
else:
    st.info("No run folder in the sidebar: run a small ablation below, or open a results folder "
             "(e.g. `docs/results/organism`) to see its ablation.json.")

st.subheader("Run a small ablation here")
st.caption("On the correct traces of the current trace set, with the KFHs chosen on the Heads page: answers "
           "are sampled (pass@k) and/or the trace's own answer is scored, teacher-forced, for its "
           "log-probability (log p). It runs in the background (this page stays usable) and can be cancelled.")
c1, c2, c3, c4, c5 = st.columns(5)
n_traces = c1.number_input("traces", 1, 64, 4, key="abl_traces")
m = c2.number_input("steps removed (m)", 1, 8, 1, key="abl_m")
n_samples = c3.number_input("answers per trace", 1, 64, 8, key="abl_samples")
mode = c4.selectbox("mode", MODES, key="abl_mode", help="forced: `</think>` is appended and the answer sampled; "
                                                        "continue: the model may reason on first")
measure = c5.selectbox("measure", MEASURES, key="abl_measure",
                       help="passk: sample answers; logprob: score the trace's own answer, no sampling "
                            "(a signal even where the model never gets the answer right); both")
if st.button("Run ablation", key="abl_run", type="primary"):
    loaded, ws = model_or_error(settings()), workspace(quiet=True)
    heads = selected_heads(ws) if ws is not None else []
    if loaded is not None and ws is None:
        st.error("The trace set is not ready yet: open the Heads page and wait for it.")
    elif loaded is not None and not heads:
        st.error("No KFHs are selected: choose some on the Heads page.")
    elif loaded is not None:
        key = f"ablation-{uuid.uuid4().hex}"
        args = (loaded, jobs.model_lock(loaded.model), ws, heads, int(n_traces), int(m), int(n_samples), mode,
                measure)
        what = "log p of the answer" if measure == "logprob" else f"{n_samples} answers"
        jobs.start(key, f"Ablating {n_traces} traces x 4 conditions x {what}",
                   lambda job: ablate(job, *args))
        st.session_state["ablation_job"] = key
job = jobs.get(st.session_state.get("ablation_job", ""))
if job is not None and job.running:
    jobs.show_progress(job)
elif job is not None and job.cancelled:
    st.info("The ablation was cancelled.")
elif job is not None and job.error is not None:
    st.error(f"The ablation failed: {job.error}")
elif job is not None:
    st.session_state["ablation_run"] = job.result  # kept with the session, whatever the job store forgets
if (result := st.session_state.get("ablation_run")) is not None and not (job is not None and job.running):
    st.markdown(f"**This session's run** ({len(result['skipped_too_few_steps'])} trace(s) skipped for too few steps)")
    show_provenance(Provenance.of(result, SETTINGS), "Run here")
    try:
        show(result, "ablation_app")
    except (*USER_ERRORS, TypeError) as e:
        st.error(f"Cannot plot this run: {e}")
    st.download_button("Download ablation.json", json.dumps(result, indent=2), "ablation.json", "application/json",
                       key="abl_json", on_click="ignore")
