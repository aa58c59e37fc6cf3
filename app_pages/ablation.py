"""Step ablation: pass@k and the answer's log-probability after removing the highest / lowest /
random KFH-score steps.

Plots ``ablation.json`` of the sidebar's run directory, and runs a small ablation in-process on
the current trace set (its correct traces, the KFHs chosen on the Heads page).
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from analyses.ablation import MEASURES, MODES, ablation_figure, gap_lines, run_ablation, summary_rows
from app_pages.data import run_records
from app_pages.export import figure_downloads
from app_pages.state import USER_ERRORS, model_or_error, selected_heads, settings, show_run_file, workspace
from workbench.heads import head_name
from workbench.traces import verifier_for


def show(result: dict, name: str) -> None:
    fig = ablation_figure(result)
    st.plotly_chart(fig, key=f"fig-{name}")
    figure_downloads(fig, name)
    st.dataframe(pd.DataFrame(summary_rows(result)), key=f"table-{name}")
    if lines := gap_lines(result):
        st.caption("Paired gaps, mean over traces [95% CI]: " + " · ".join(lines))


st.title("Step ablation")
s = settings()
show_run_file(s, "ablation.json", show, "Write one with `python experiments/ablate_steps.py --model organism "
              "--kfh runs/discover/kfh.json --out DIR`, or run a small one here.")

st.subheader("Run a small ablation")
st.caption("Uses the correct traces of the current trace set and the KFHs chosen on the Heads page; "
           "answers are sampled after `</think>` is forced (or the model continues reasoning), and the "
           "trace's own answer is scored, teacher-forced, for its log-probability.")
c1, c2, c3, c4, c5 = st.columns(5)
n_traces = c1.number_input("traces", 1, 64, 4, key="abl_traces")
m = c2.number_input("steps removed (m)", 1, 8, 1, key="abl_m")
n_samples = c3.number_input("answers per trace", 1, 64, 8, key="abl_samples")
mode = c4.selectbox("mode", MODES, key="abl_mode")
measure = c5.selectbox("measure", MEASURES, key="abl_measure")
if st.button("Run ablation", key="abl_run"):
    loaded, ws = model_or_error(s), workspace(s)
    if loaded is not None and ws is not None:
        try:
            records = {r.trace_id: r for r in run_records(ws, loaded)}
            chosen = [i for i, t in enumerate(ws.traces) if t.correct and t.trace_id in records][: int(n_traces)]
            if not chosen:
                raise ValueError(f"{ws.source} has no correct trace to ablate")
            heads = selected_heads(ws)
            verifier = verifier_for(loaded)
            ks = tuple(k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_samples)
            with st.spinner(f"Sampling {n_samples} answers x 4 conditions x {len(chosen)} traces ..."):
                result = run_ablation(loaded, [records[ws.traces[i].trace_id] for i in chosen],
                                      [ws.step_scores(i, heads) for i in chosen], int(m), verifier,
                                      n_samples=int(n_samples), ks=ks, mode=mode, measure=measure, progress=False)
            st.session_state["ablation_run"] = {**result, "kfh": [head_name(h) for h in heads], "model": loaded.name}
        except USER_ERRORS as e:
            st.error(str(e))
if result := st.session_state.get("ablation_run"):
    st.markdown(f"**This session's run** (KFHs {', '.join(result['kfh'])}, {result['n_traces']} traces; "
                f"{len(result['skipped_too_few_steps'])} skipped for too few steps)")
    show(result, "ablation_app")
    st.download_button("Download ablation.json", json.dumps(result, indent=2), "ablation.json", "application/json",
                       key="abl_json", on_click="ignore")
