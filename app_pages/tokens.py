"""Token attention: where, token by token, the final answer F looks in the reasoning.

For the trace and head chosen on the other pages (or the KFH mean), the answer rows' attention
over every earlier token (``workbench.tracing.answer_attention``; the step score S_k is this
summed over F and averaged over the step's tokens).  Shown as the text itself, shaded, step by
step with the steps' labels; as a strip over the whole trace; and for several heads side by side,
token by token and step by step.  Needs the model the traces were scored with.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages.data import TokenTrace, TraceView, Workspace, token_trace
from app_pages.export import figure_downloads
from app_pages.glossary import page_header
from app_pages.jobs import model_lock
from app_pages.state import USER_ERRORS, model_or_error, selected_heads, settings, trace_records, workspace
from app_pages.widgets import KFH_MEAN, SHADE, head_options, head_picker, label_colour, legend_html, trace_picker
from workbench.heads import Head, parse_head
from workbench.models import LoadedModel
from workbench.tracing import answer_attention

MAX_SIDE_BY_SIDE = 8
LOCK_WAIT_S = 3.0
ALL_F = -1  # "every answer token": the mean of F's rows


@st.cache_data(show_spinner=False, max_entries=16)
def _attention(fingerprint: str, trace: str, heads: tuple[Head, ...], _loaded: LoadedModel, _record) -> np.ndarray:
    """``[len(heads), |F|, a1]`` answer rows, computed once per (model, trace, heads)."""
    return answer_attention(_loaded, _record.item(), list(heads)).numpy()


@st.cache_data(show_spinner=False, max_entries=16)
def _token_trace(fingerprint: str, trace: str, _record, _tokenizer) -> TokenTrace:
    return token_trace(_record, _tokenizer)


def trace_key(record) -> str:
    """A trace's identity for the caches: its id and a digest of its tokens and spans (two uploads may
    reuse an id)."""
    item = record.item()
    content = json.dumps([item.input_ids, [list(x) for x in item.steps], list(item.answer)])
    return f"{record.trace_id}:{hashlib.sha256(content.encode()).hexdigest()[:16]}"


def attention_rows(loaded: LoadedModel, record, heads: list[Head]) -> np.ndarray | None:
    """The answer rows of ``heads``, or None (after saying why) while a background job holds the model."""
    lock = model_lock(loaded.model)
    if not lock.acquire(timeout=LOCK_WAIT_S):
        st.info("The model is busy with a background job (sampling, ablation or stability); this view is "
                "computed when it is free. Reload the page then.")
        return None
    try:
        with st.spinner(f"Tracing {len(heads)} head(s) over {len(record.input_ids)} tokens ..."):
            return _attention(loaded.fingerprint, trace_key(record), tuple(heads), loaded, record)
    finally:
        lock.release()


def token_span(tok: TokenTrace, t: int, weight: float, scale: float) -> str:
    """Token ``t`` shaded by ``weight`` (relative to ``scale``, square-rooted so faint reads show), its
    position, text and number on hover; newlines are marked, not broken, to keep long traces compact."""
    alpha = min(1.0, float(np.sqrt(weight / scale))) if scale > 0 else 0.0
    shown = html.escape(tok.texts[t]).replace("\n", "↵") or "·"
    return (f'<span title="token {t - tok.prompt_len} · {html.escape(repr(tok.texts[t]))} · attention {weight:.4f}" '
            f'style="background: rgba({SHADE}, {0.85 * alpha:.3f})">{shown}</span>')


def tokens_html(tok: TokenTrace, trace: TraceView, weights: np.ndarray, scores: np.ndarray, start: int,
                end: int, scale: float, outside: str = "between steps") -> str:
    """Tokens ``[start, end)`` as text shaded by ``weights`` (absolute positions), one block per step
    with its label bar and score (tokens outside every step in a grey block headed ``outside``)."""
    blocks = []
    for k, run in itertools.groupby(range(start, end), key=lambda t: tok.steps[t]):
        label = trace.labels[k] if k is not None and k < len(trace.labels) else None
        head = (outside if k is None
                else f"step {k} · {trace.kinds[k]} · {label or 'unlabelled'} · S = {scores[k]:.4f}")
        border = "#dddddd" if k is None else label_colour(label)
        text = "".join(token_span(tok, t, weights[t], scale) for t in run)
        blocks.append(f'<div style="border-left: 6px solid {border}; padding: 2px 8px; margin: 2px 0">'
                      f'<span style="font-size: 0.7em; opacity: 0.75">{html.escape(head)}</span><br><span '
                      f'style="font-family: monospace; white-space: pre-wrap; line-height: 1.6">{text}</span></div>')
    return "".join(blocks)


def strip_figure(tok: TokenTrace, trace: TraceView, weights: np.ndarray, what: str) -> go.Figure:
    """The attention of every response token before F, with each step's span tinted by its label."""
    a0 = tok.answer[0]
    x = np.arange(tok.prompt_len, a0)
    fig = go.Figure(go.Bar(x=x - tok.prompt_len, y=weights[tok.prompt_len:a0], marker_color=f"rgb({SHADE})",
                           customdata=[[repr(tok.texts[t])[1:-1][:30], "-" if tok.steps[t] is None else tok.steps[t]]
                                       for t in x],
                           hovertemplate="token %{x} %{customdata[0]} (step %{customdata[1]})<br>attention %{y:.4f}"
                                         "<extra></extra>"))
    for k, (a, b) in enumerate(_step_spans(tok)):
        label = trace.labels[k] if k < len(trace.labels) else None
        fig.add_vrect(x0=a - tok.prompt_len - 0.5, x1=b - tok.prompt_len - 0.5, fillcolor=label_colour(label),
                      opacity=0.15, line_width=0, layer="below")
    fig.update_layout(title=f"Attention of F over the reasoning, token by token ({what}); tint = step label",
                      xaxis_title="response token", yaxis_title="attention from F", bargap=0, height=300,
                      margin={"t": 50, "b": 40})
    return fig


def _step_spans(tok: TokenTrace) -> list[tuple[int, int]]:
    spans: dict[int, list[int]] = {}
    for t, k in enumerate(tok.steps):
        if k is not None:
            spans.setdefault(k, []).append(t)
    return [(ts[0], ts[-1] + 1) for _, ts in sorted(spans.items())]


def side_by_side_figure(tok: TokenTrace, rows: dict[str, np.ndarray]) -> go.Figure:
    """Heads as rows, response tokens before F as columns; each row scaled to its own maximum."""
    a0, p = tok.answer[0], tok.prompt_len
    names = list(rows)
    z = np.stack([rows[n][p:a0] / max(float(rows[n][p:a0].max()), 1e-12) for n in names])
    text = [repr(tok.texts[t])[1:-1][:30] for t in range(p, a0)]
    fig = go.Figure(go.Heatmap(z=z, x=np.arange(a0 - p), y=names, colorscale="Blues", zmin=0, zmax=1,
                               customdata=np.array([text] * len(names)),
                               colorbar={"title": "share of<br>row max"},
                               hovertemplate="%{y} · token %{x} %{customdata}<br>%{z:.2f} of the row's max"
                                             "<extra></extra>"))
    for a, _ in _step_spans(tok)[1:]:
        fig.add_vline(x=a - p - 0.5, line_width=1, line_color="rgba(0,0,0,0.25)")
    fig.update_layout(title="Heads side by side: attention of F per response token (lines: step starts)",
                      xaxis_title="response token", height=120 + 32 * len(names), margin={"t": 50, "b": 40})
    return fig


def steps_table(ws: Workspace, index: int, names: list[str]) -> pd.DataFrame:
    """Step scores S_k of each chosen head, side by side."""
    trace = ws.traces[index]
    table = pd.DataFrame({"step": range(len(trace.step_texts)),
                          "label": [x or "unlabelled" for x in trace.labels[: len(trace.step_texts)]],
                          "text": [t.strip()[:90] for t in trace.step_texts]})
    for name in names:
        heads = selected_heads(ws) if name == KFH_MEAN else [parse_head(name)]
        table[name] = ws.step_scores(index, heads)
    return table


page_header("Token attention", "F", "S_k", "labels", "KFH")
ws = workspace()
if ws is None:
    st.stop()
if not ws.has_traces:
    st.info(f"{ws.run_dir} holds the head table only: it lacks {' and '.join(ws.missing)}, which this page needs "
            "(with the model the traces were scored with).")
    st.stop()
index = trace_picker(ws)
trace = ws.traces[index]
loaded = model_or_error(settings())
if loaded is None:
    st.stop()
if ws.fingerprint != loaded.fingerprint:
    st.info(f"These traces were scored with model {ws.model!r} (weights {ws.fingerprint[:12]}); the sidebar's model "
            f"is {loaded.name!r} (weights {loaded.fingerprint[:12]}). Choose {ws.model!r} in the sidebar to see "
            "where its answer looks, token by token.")
    st.stop()
try:
    record = trace_records(ws, loaded)[trace.trace_id]
    tok = _token_trace(loaded.fingerprint, trace_key(record), record, loaded.tokenizer)
except (*USER_ERRORS, OSError) as e:
    st.error(str(e))
    st.stop()

c1, c2, c3 = st.columns([2, 3, 2])
with c1:
    choice, heads = head_picker(ws, "Shade the text by", "token_colour")
kfh = selected_heads(ws)
default_side = [o for o in head_options(ws) if o == KFH_MEAN or parse_head(o) in kfh]
if choice not in default_side:
    default_side.append(choice)
side = c2.multiselect("Heads side by side", head_options(ws), default=default_side[:MAX_SIDE_BY_SIDE],
                      max_selections=MAX_SIDE_BY_SIDE, key="side_heads")
a0, a1 = tok.answer
row = c3.selectbox("Answer token(s)", [ALL_F, *range(a1 - a0)], key="answer_row",
                   format_func=lambda r: "all of F (mean of its rows)" if r == ALL_F
                   else f"F[{r}] {tok.texts[a0 + r]!r}",
                   help="whose attention to show: the mean over the answer's tokens, or one answer token's row")

wanted = sorted({h for name in [choice, *side] for h in (kfh if name == KFH_MEAN else [parse_head(name)])})
if not wanted:
    st.info("Choose a head (or KFHs on the Heads page).")
    st.stop()
rows = attention_rows(loaded, record, wanted)
if rows is None:
    st.stop()
position = {h: i for i, h in enumerate(wanted)}


def weights_of(name: str) -> np.ndarray:
    """[a1] attention of F (all rows' mean, or the chosen row) for a head or the KFH mean."""
    hs = kfh if name == KFH_MEAN else [parse_head(name)]
    per_head = rows[[position[h] for h in hs]]  # [n, |F|, a1]
    return (per_head.mean(axis=1) if row == ALL_F else per_head[:, row]).mean(axis=0)


weights = weights_of(choice)
p = tok.prompt_len
shares = {"prompt": weights[:p].sum(), "reasoning": weights[p:a0].sum(), "answer": weights[a0:].sum()}
st.markdown(f"**{choice}**: of the answer's attention, " + ", ".join(f"{v:.0%} goes to the {k}"
                                                                     for k, v in shares.items())
            + f". The reasoning has {a0 - p} tokens in {len(trace.step_texts)} steps.")
strip = strip_figure(tok, trace, weights, choice)
st.plotly_chart(strip, key="token_strip")
figure_downloads(strip, f"tokens_{trace.trace_id}")

st.subheader("The reasoning, shaded by the answer's attention")
scores = ws.step_scores(index, heads)
scale = float(weights[p:a0].max())
st.caption("Shade ∝ √(attention / the largest on a reasoning token), so faint reads are visible; hover a token for "
           "its number. The header of each step gives its score S_k.")
with st.expander("Prompt, shaded the same way"):
    st.html(tokens_html(tok, trace, weights, scores, 0, p, scale, outside="prompt"))
st.html(legend_html() + tokens_html(tok, trace, weights, scores, p, a0, scale))

if side:
    st.subheader("Heads side by side")
    fig = side_by_side_figure(tok, {name: weights_of(name) for name in side})
    st.plotly_chart(fig, key="side_by_side")
    figure_downloads(fig, f"heads_{trace.trace_id}")
    table = steps_table(ws, index, side)
    st.dataframe(table, hide_index=True, key="side_steps",
                 column_config={name: st.column_config.ProgressColumn(name, format="%.4f", min_value=0.0,
                                                                      max_value=float(table[name].max()) or 1.0)
                                for name in side})
