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
from app_pages.glossary import page_header
from app_pages.state import workspace
from app_pages.widgets import SHADE, head_picker, label_colour, legend_html, trace_picker
from workbench.advantages import step_baseline


def steps_html(trace: TraceView, scores: np.ndarray, baseline: float) -> str:
    """Each step as a block shaded by its score (darker = more attention from F), with kind and label."""
    top = max(float(scores.max()), baseline, 1e-12)
    blocks = []
    for k, (text, score) in enumerate(zip(trace.step_texts, scores)):
        label = trace.labels[k] if k < len(trace.labels) else None
        side = "above baseline: protected" if score > baseline else "below baseline: attenuated"
        badge = " · ".join(x for x in (f"step {k}", trace.kinds[k], label or "unlabelled") if x)
        blocks.append(
            f'<div style="background: rgba({SHADE}, {0.05 + 0.75 * score / top:.3f}); padding: 4px 8px; '
            f'margin: 2px 0; border-left: 6px solid {label_colour(label)}; border-radius: 3px">'
            f'<span style="font-size: 0.75em; opacity: 0.8">{html.escape(badge)} · S = {score:.4f} ({side})</span>'
            f'<br><span style="font-family: monospace">{html.escape(text.strip())}</span></div>')
    return "\n".join(blocks)


def steps_figure(trace: TraceView, scores: np.ndarray, baseline: float, what: str) -> go.Figure:
    labels = [trace.labels[k] if k < len(trace.labels) else None for k in range(len(scores))]
    fig = go.Figure(go.Bar(
        x=list(range(len(scores))), y=scores, marker_color=[label_colour(x) for x in labels],
        customdata=[[x or "unlabelled", kind, text.strip()[:80]] for x, kind, text in
                    zip(labels, trace.kinds, trace.step_texts)],
        hovertemplate="step %{x} (%{customdata[0]}, %{customdata[1]})<br>S = %{y:.4f}<br>%{customdata[2]}"
                      "<extra></extra>", name=what))
    fig.add_hline(y=baseline, line_dash="dash", line_color="black",
                  annotation_text=f"S_base = {baseline:.4f}", annotation_position="top right")
    fig.update_layout(title=f"{trace.trace_id}: answer->step score S_k ({what}); bar colour = step label",
                      xaxis={"title": "step", "dtick": 1}, yaxis_title="score S_k", showlegend=False)
    return fig


page_header("Trace viewer", "S_k", "S_base", "F", "labels", "KFH")
ws = workspace()
if ws is None:
    st.stop()
if not ws.has_traces:
    st.info(f"{ws.run_dir} holds the head table only: it lacks {' and '.join(ws.missing)}, which this page "
            "needs. Write them with `python experiments/discover_heads.py --out DIR` (or re-run "
            "`experiments/reproduce.py`, which publishes them when small), or open a folder that has them.")
    st.stop()

index = trace_picker(ws)
trace = ws.traces[index]

c1, c2, c3 = st.columns([2, 1, 1])
with c1:
    choice, heads = head_picker(ws, "Colour by", "colour_by")
p = c2.slider("pass rate p", 0.0, 1.0, 1.0, 0.05, key="pass_rate",
              help="share of the prompt's rollouts that are correct: lower p lowers the baseline")
beta = c3.number_input("beta", 0.0, 8.0, 2.0, 0.5, key="beta", help="baseline exponent (2 in the paper)")

scores = ws.step_scores(index, heads)
baseline = step_baseline(torch.tensor(p), torch.tensor(trace.answer_len), torch.tensor(trace.total_len),
                         beta).item()

above = int((scores > baseline).sum())
st.markdown(f"**|F|** = {trace.answer_len} tokens, **|q|+|o|** = {trace.total_len} tokens → "
            f"S_base = {p:g}^{beta:g} · {trace.answer_len}/{trace.total_len} = **{baseline:.4f}**. "
            f"{above} of {len(scores)} steps score above it (protected on a negative advantage), "
            f"{len(scores) - above} below (attenuated on a positive advantage).")
fig = steps_figure(trace, scores, baseline, choice)
st.plotly_chart(fig, key="step_scores")
figure_downloads(fig, f"steps_{trace.trace_id}")

st.subheader("Steps")
if st.button("Token by token: where in each step the answer looks", icon=":material/text_fields:",
             key="to_tokens"):
    st.switch_page("app_pages/tokens.py")
with st.expander("Prompt"):
    st.text(trace.prompt)
st.html(legend_html() + steps_html(trace, scores, baseline))
if "</think>" in trace.response:
    st.markdown("**Answer F** (the rows whose attention is summed):")
    st.code(trace.response.split("</think>", 1)[1].strip(), language=None)
