"""Training: the curves of one or more runs' ``metrics.jsonl`` (AttnPO and its baselines), overlaid."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages.data import list_runs, read_metrics
from app_pages.export import figure_downloads
from app_pages.state import USER_ERRORS, settings

CURVES = {  # metrics.jsonl key -> axis title
    "accuracy": "accuracy (training rollouts)",
    "mean_response_tokens": "response tokens",
    "reward": "reward",
    "frac_steps_attenuated": "share of steps attenuated",
    "frac_steps_protected": "share of steps protected",
    "attenuation_precision": "attenuated steps truly redundant",
}


def curve_figure(frames: dict[str, pd.DataFrame], key: str, title: str) -> go.Figure:
    fig = go.Figure()
    for name, frame in frames.items():
        if key in frame:
            fig.add_trace(go.Scatter(x=frame["step"], y=frame[key], mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=title, legend={"orientation": "h", "y": -0.25})
    return fig


st.title("Training runs")
s = settings()
runs = list_runs(s.runs_root, "metrics.jsonl")
if s.run_dir and (Path(s.run_dir) / "metrics.jsonl").is_file() and Path(s.run_dir) not in runs:
    runs.insert(0, Path(s.run_dir))
if not runs:
    st.info(f"No training run (a folder with metrics.jsonl) under {s.runs_root}/. Start one with "
            "`python -m workbench.train --config configs/organism/attnpo.yaml` (and a baseline, e.g. "
            "`configs/organism/tlmre.yaml`), then pick them here.")
    st.stop()

names = [str(r) for r in runs]
chosen = st.multiselect("Runs", names, default=names[:4], key="train_runs")
frames = {}
for name in chosen:
    try:
        frames[name] = read_metrics(Path(name))
    except (*USER_ERRORS, OSError) as e:
        st.error(str(e))
frames = {k: v for k, v in frames.items() if not v.empty}
if not frames:
    st.info("The chosen runs have no logged step yet.")
    st.stop()

present = [k for k in CURVES if any(k in f and f[k].notna().any() for f in frames.values())]
columns = st.columns(2)
for i, key in enumerate(present):
    with columns[i % 2]:
        fig = curve_figure(frames, key, CURVES[key])
        st.plotly_chart(fig, key=f"curve-{key}")
        figure_downloads(fig, f"training_{key}")

evals = []
for name in frames:
    for stage in ("eval_start", "eval_final"):
        path = Path(name) / f"{stage}.json"
        if path.is_file():
            row = json.loads(path.read_text())
            evals.append({"run": name, "stage": stage.removeprefix("eval_"),
                          **{k: v for k, v in row.items() if isinstance(v, (int, float, str, bool))}})
if evals:
    st.subheader("Held-out evaluation")
    st.dataframe(pd.DataFrame(evals), hide_index=True, key="evals")
