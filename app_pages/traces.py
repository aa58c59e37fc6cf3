"""Trace viewer: one trace's steps coloured by a head's (or the KFH mean's) answer->step score,
against AttnPO's step baseline ``S_base = p^beta * |F| / (|q| + |o|)``."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from app_pages.data import TraceView
from app_pages.export import figure_downloads
from app_pages.state import selected_heads, workspace
from workbench.advantages import step_baseline
from workbench.heads import head_name, parse_head

LABEL_COLOURS = {"critical": "#d62728", "redundant": "#7f7f7f", "plan": "#1f77b4", None: "#bcbd22"}


def steps_html(trace: TraceView, scores: np.ndarray, baseline: float) -> str:
    """Each step as a block shaded by its score (darker = more attention from F), with kind and label."""
    top = max(float(scores.max()), baseline, 1e-12)
    blocks = []
    for k, (text, score) in enumerate(zip(trace.step_texts, scores)):
        label = trace.labels[k] if k < len(trace.labels) else None
        side = "above baseline: protected" if score > baseline else "below baseline: attenuated"
        badge = " · ".join(x for x in (f"step {k}", trace.kinds[k], label or "unlabelled") if x)
        blocks.append(
            f'<div style="background: rgba(31, 119, 180, {0.05 + 0.75 * score / top:.3f}); padding: 4px 8px; '
            f'margin: 2px 0; border-left: 5px solid {LABEL_COLOURS.get(label, "#bcbd22")}; border-radius: 3px">'
            f'<span style="font-size: 0.75em; opacity: 0.8">{html.escape(badge)} · S = {score:.4f} ({side})</span>'
            f'<br><span style="font-family: monospace">{html.escape(text.strip())}</span></div>')
    return "\n".join(blocks)


def steps_figure(trace: TraceView, scores: np.ndarray, baseline: float, what: str) -> go.Figure:
    labels = [trace.labels[k] if k < len(trace.labels) else None for k in range(len(scores))]
    fig = go.Figure(go.Bar(
        x=list(range(len(scores))), y=scores, marker_color=[LABEL_COLOURS.get(x, "#bcbd22") for x in labels],
        customdata=[[x or "unlabelled", kind, text.strip()[:80]] for x, kind, text in
                    zip(labels, trace.kinds, trace.step_texts)],
        hovertemplate="step %{x} (%{customdata[0]}, %{customdata[1]})<br>S = %{y:.4f}<br>%{customdata[2]}"
                      "<extra></extra>", name=what))
    fig.add_hline(y=baseline, line_dash="dash", line_color="black",
                  annotation_text=f"S_base = {baseline:.4f}", annotation_position="top left")
    fig.update_layout(title=f"{trace.trace_id}: answer->step score ({what}); red critical, grey redundant, blue plan",
                      xaxis_title="step", yaxis_title="score S", showlegend=False, xaxis={"dtick": 1})
    return fig


st.title("Trace viewer")
ws = workspace()
if ws is None:
    st.stop()
kfh = selected_heads(ws)

ids = [t.trace_id for t in ws.traces]
mark = {True: "correct", False: "wrong", None: "unverified"}
index = st.selectbox("Trace", range(len(ids)), key="trace_index",
                     format_func=lambda i: f"{ids[i]} · {len(ws.traces[i].step_texts)} steps · "
                                           f"{mark[ws.traces[i].correct]}")
trace = ws.traces[index]

c1, c2, c3 = st.columns([2, 1, 1])
options = [f"KFH mean ({', '.join(head_name(h) for h in kfh)})"] if kfh else []
options += [head_name(h) for h in ws.top(ws.n_layers * ws.n_heads)]
choice = c1.selectbox("Colour by", options, key="colour_by", help="the KFH mean is what AttnPO compares "
                      "with the baseline; KFHs are chosen on the Heads page")
p = c2.slider("pass rate p", 0.0, 1.0, 1.0, 0.05, key="pass_rate",
              help="share of the prompt's rollouts that are correct: lower p lowers the baseline")
beta = c3.number_input("beta", 0.0, 8.0, 2.0, 0.5, key="beta", help="baseline exponent (2 in the paper)")

heads = kfh if choice.startswith("KFH mean") else [parse_head(choice)]
scores = ws.step_scores(index, heads)
baseline = step_baseline(torch.tensor(p), torch.tensor(trace.answer_len), torch.tensor(trace.total_len), beta).item()
what = "KFH mean" if len(heads) > 1 or choice.startswith("KFH") else choice

above = int((scores > baseline).sum())
st.markdown(f"**|F|** = {trace.answer_len} tokens, **|q|+|o|** = {trace.total_len} tokens → "
            f"S_base = {p:g}^{beta:g} · {trace.answer_len}/{trace.total_len} = **{baseline:.4f}**. "
            f"{above} of {len(scores)} steps score above it (protected on a negative advantage), "
            f"{len(scores) - above} below (attenuated on a positive advantage).")
fig = steps_figure(trace, scores, baseline, what)
st.plotly_chart(fig, key="step_scores")
figure_downloads(fig, f"steps_{trace.trace_id}")

st.subheader("Steps")
with st.expander("Prompt"):
    st.text(trace.prompt)
st.html(steps_html(trace, scores, baseline))
if "</think>" in trace.response:
    st.markdown("**Answer F** (the rows whose attention is summed):")
    st.code(trace.response.split("</think>", 1)[1].strip(), language=None)
