"""Stability: do the KFHs keep their SRA and step scores across checkpoints?

Plots ``stability.json`` of the sidebar's run directory, and compares a few checkpoints in-process
on the current trace set (training checkpoints found under the runs folder, or a copy of the model
fine-tuned for a few supervised steps when there are none).
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from analyses.labels import label_codes
from analyses.stability import checkpoint_summary, compare, stability_figure
from app_pages.data import cache_dir, list_runs, run_records
from app_pages.export import figure_downloads
from app_pages.state import USER_ERRORS, model_or_error, selected_heads, settings, show_run_file, workspace
from workbench.heads import head_name
from workbench.models import load_model
from workbench.tracing import ScoreCache, trace_step_scores
from workbench.training.sft import supervised_finetune
from workbench.training.state import list_checkpoints

MEASURES = ("pearson_sra", "spearman_sra", "pearson_step_scores", "topn_overlap")


def show(result: dict, name: str) -> None:
    fig = stability_figure(result)
    st.plotly_chart(fig, key=f"fig-{name}")
    figure_downloads(fig, name)
    st.dataframe(pd.DataFrame({k: result[k] for k in MEASURES}, index=result["checkpoints"]), key=f"table-{name}")


def run_stability(specs: list[str], n_traces: int, top_n: int, sft_steps: int) -> dict:
    """Score the first ``n_traces`` traces at every checkpoint; compare each with the first."""
    s = settings()
    first, ws = model_or_error(s), workspace(s)
    if first is None or ws is None:
        raise ValueError("no model or trace set to compare checkpoints on (see the messages above)")
    records = run_records(ws, first)[:n_traces]
    by_id = {t.trace_id: t for t in ws.traces}
    codes = [label_codes(by_id[r.trace_id].labels) for r in records]
    specs = list(specs)
    if sft_steps:
        copy = load_model(specs[0], device=s.device)  # fine-tuned in place, then restored: not the shared one
        out = cache_dir() / "stability" / f"sft-{sft_steps}-{first.fingerprint[:12]}"
        specs.append(str(supervised_finetune(copy, records, sft_steps, 3e-4, out)))
    if len(specs) < 2:
        raise ValueError("choose at least two checkpoints, or add a fine-tuned copy (SFT steps > 0)")
    heads, summaries, items = selected_heads(ws), [], [r.item() for r in records]
    for spec in specs:
        ckpt = first if spec == s.model else load_model(spec, device=s.device)
        if ckpt.tokenizer.get_vocab() != first.tokenizer.get_vocab():
            raise ValueError(f"checkpoint {spec!r} has another tokenizer than {first.name!r}: stability needs the "
                             "same token ids at every checkpoint")
        scores = trace_step_scores(ckpt, items, cache=ScoreCache(cache_dir() / "scores"))
        summaries.append(checkpoint_summary([x.numpy() for x in scores], codes, heads))
    return {"checkpoints": specs, **compare(summaries, top_n), "kfh": [head_name(h) for h in heads],
            "n_traces": len(records)}


st.title("Stability across checkpoints")
s = settings()
show_run_file(s, "stability.json", show, "Write one with `python experiments/stability.py --checkpoints organism "
              "runs/train/checkpoints/step_50 --out DIR`, or compare a few checkpoints here.")

st.subheader("Compare checkpoints")
found = [str(c) for run in list_runs(s.runs_root, "metrics.jsonl") for c in list_checkpoints(run)]
options = [s.model] + found
specs = st.multiselect("Checkpoints (the first is the reference)", options, default=[s.model] + found[-2:],
                       key="stab_specs", help=f"training checkpoints found under {s.runs_root}/")
c1, c2, c3 = st.columns(3)
n_traces = c1.number_input("traces", 2, 256, 16, key="stab_traces")
top_n = c2.number_input("top N for the overlap", 1, 16, 3, key="stab_top")
sft = c3.number_input("add a copy fine-tuned for N SFT steps", 0, 200, 0 if found else 10, key="stab_sft",
                      help="a second checkpoint when no training run exists yet")
if st.button("Compare", key="stab_run"):
    try:
        with st.spinner(f"Scoring {n_traces} traces at {len(specs) + bool(sft)} checkpoints ..."):
            st.session_state["stability_run"] = run_stability(specs, int(n_traces), int(top_n), int(sft))
    except (*USER_ERRORS, OSError) as e:
        st.error(str(e))
if result := st.session_state.get("stability_run"):
    st.markdown(f"**This session's comparison** (KFHs {', '.join(result['kfh'])}, {result['n_traces']} traces)")
    show(result, "stability_app")
    st.download_button("Download stability.json", json.dumps(result, indent=2), "stability.json", "application/json",
                       key="stab_json", on_click="ignore")
