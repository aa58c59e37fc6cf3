"""Training: the curves of one or more runs' ``metrics.jsonl`` (AttnPO and its baselines), overlaid,
with their held-out evaluations and, for a reproduction's results folder, its methods table."""

from __future__ import annotations

import json

import pandas as pd
import plotly.colors as pc
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from analyses.figures import short_labels
from app_pages.data import list_runs, read_metrics
from app_pages.export import figure_downloads
from app_pages.glossary import page_header
from app_pages.state import USER_ERRORS, results, settings

CURVES = {  # metrics.jsonl key -> axis title
    "accuracy": "accuracy (training rollouts)",
    "mean_response_tokens": "response tokens",
    "reward": "reward",
    "frac_steps_attenuated": "share of steps attenuated",
    "frac_steps_protected": "share of steps protected",
    "attenuation_precision": "attenuated steps truly redundant",
}


def curves_figure(frames: dict[str, pd.DataFrame], keys: list[str]) -> go.Figure:
    """One panel per metric, one colour per run, a single legend for all panels."""
    rows = (len(keys) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[CURVES[k] for k in keys], vertical_spacing=0.5 / rows)
    palette = pc.qualitative.Plotly + pc.qualitative.Dark24
    few = max(len(f) for f in frames.values()) <= 20  # integer ticks; plotly picks whole steps beyond that
    for i, key in enumerate(keys):
        for j, (name, frame) in enumerate(frames.items()):
            if key in frame:
                fig.add_trace(go.Scatter(x=frame["step"], y=frame[key], mode="lines+markers", name=name,
                                         legendgroup=name, showlegend=i == 0, line_color=palette[j % len(palette)],
                                         hovertemplate=f"{name}<br>step %{{x}}: %{{y:.3g}}<extra></extra>"),
                              row=i // 2 + 1, col=i % 2 + 1)
        fig.update_xaxes(title_text="RL step", dtick=1 if few else None, row=i // 2 + 1, col=i % 2 + 1)
    fig.update_layout(height=300 * rows + 80, legend={"title": "run"}, margin={"t": 60})
    return fig


page_header("Training runs", "training")
s = settings()
folder = results(s)
if folder is not None and folder.methods is not None:
    st.subheader("Methods (mean and std over seeds)")
    st.caption(f"From `{folder.methods}`: held-out evaluation at the end of training; see docs/REPORT.md for "
               "what each column measures.")
    st.dataframe(pd.read_csv(folder.methods), hide_index=True, key="methods")
own = folder.runs if folder is not None else []
runs = own or list_runs(s.runs_root, "metrics.jsonl")  # a results folder's own runs, else the runs folder's
if folder is not None and not own:
    st.info(f"{folder.root} has no training runs (runs/<method>-seed<k>/metrics.jsonl, which reproduce.py "
            f"publishes)." + (f" Runs found under {s.runs_root}/ can be picked below." if runs else ""))
if not runs:
    st.info(f"No training run (a folder with metrics.jsonl) under {s.runs_root}/. Start one with "
            "`python -m workbench.train --config configs/organism/attnpo.yaml` (and a baseline, e.g. "
            "`configs/organism/tlmre.yaml`), then pick them here.")
    st.stop()

named = dict(zip(short_labels([r.resolve() for r in runs]), runs))
if own:  # a reproduction: one run of each method
    default = [n for n in named if n.endswith("-seed0")] or list(named)
else:  # beside a results folder, the runs folder's runs only on request
    default = [] if folder is not None else list(named)[:4]
chosen = st.multiselect("Runs", list(named), default=default, key="train_runs",
                        help="\n\n".join(f"{n}: {p}" for n, p in named.items()))
frames = {}
for name in chosen:
    try:
        frames[name] = read_metrics(named[name])
    except (*USER_ERRORS, OSError) as e:
        st.error(str(e))
frames = {k: v for k, v in frames.items() if not v.empty}
if not frames:
    st.info("Pick runs above (the chosen ones have no logged step yet)." if chosen else "Pick runs above.")
    st.stop()

present = [k for k in CURVES if any(k in f and f[k].notna().any() for f in frames.values())]
fig = curves_figure(frames, present)
st.plotly_chart(fig, key="curves")
figure_downloads(fig, "training_curves")

evals = []
for name in frames:
    for stage in ("eval_start", "eval_final"):
        path = named[name] / f"{stage}.json"
        if path.is_file():
            row = json.loads(path.read_text())
            evals.append({"run": name, "stage": stage.removeprefix("eval_"),
                          **{k: v for k, v in row.items() if isinstance(v, (int, float, str, bool))}})
if evals:
    st.subheader("Held-out evaluation")
    st.dataframe(pd.DataFrame(evals), hide_index=True, key="evals")
