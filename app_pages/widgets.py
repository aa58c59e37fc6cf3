"""Pickers and colours that several pages share: the trace and the head, kept in the shared view
(so that a trace or a head chosen on one page is the one the next page shows, and the link has it)."""

from __future__ import annotations

import streamlit as st

from app_pages.data import Workspace
from app_pages.state import selected_heads, set_view, view
from workbench.heads import Head, head_name, parse_head

# step labels: apart from each other and from the blue score shading
LABEL_COLOURS = {"critical": "#d62728", "redundant": "#8c8c8c", "plan": "#9467bd", None: "#e3b505"}
SHADE = "31, 119, 180"  # score shading (blue, RGB): darker = more attention from F
KFH_MEAN = "KFH mean"
CORRECT = {True: "correct", False: "wrong", None: "unverified"}


def label_colour(label: str | None) -> str:
    return LABEL_COLOURS.get(label, LABEL_COLOURS[None])


def legend_html() -> str:
    """One line saying what the label bars and the shading mean."""
    items = "".join(f'<span style="border-left: 6px solid {c}; padding-left: 4px; margin-right: 12px">'
                    f'{x or "unlabelled"}</span>' for x, c in LABEL_COLOURS.items())
    return (f'<p style="font-size: 0.8em">Left bar: step label: {items} · background: the answer\'s attention '
            f'(<span style="background: rgba({SHADE}, 0.8); color: white; padding: 0 4px">more</span> '
            f'<span style="background: rgba({SHADE}, 0.1); padding: 0 4px">less</span>)</p>')


def trace_picker(ws: Workspace) -> int:
    """Index of the trace chosen here or on another page."""
    ids = [t.trace_id for t in ws.traces]
    st.session_state["trace_index"] = ids.index(view("trace")) if view("trace") in ids else 0
    return st.selectbox("Trace", range(len(ids)), key="trace_index",
                        on_change=lambda: set_view("trace", ids[st.session_state["trace_index"]]),
                        format_func=lambda i: f"{ids[i]} · {len(ws.traces[i].step_texts)} steps · "
                                              f"{CORRECT[ws.traces[i].correct]}")


def head_options(ws: Workspace) -> list[str]:
    """The KFH mean (when KFHs are chosen), then every head, best first."""
    return ([KFH_MEAN] if selected_heads(ws) else []) + [head_name(h) for h in ws.top(ws.n_layers * ws.n_heads)]


def head_picker(ws: Workspace, label: str, key: str) -> tuple[str, list[Head]]:
    """The KFH mean or one head (the head in focus, by default); returns the choice and its heads."""
    kfh = selected_heads(ws)
    options = head_options(ws)
    st.session_state[key] = view("head") if view("head") in options else options[0]
    choice = st.selectbox(label, options, key=key,
                          on_change=lambda: set_view("head", None if st.session_state[key] == KFH_MEAN
                                                     else st.session_state[key]),
                          format_func=lambda o: f"KFH mean ({', '.join(map(head_name, kfh))})" if o == KFH_MEAN else o,
                          help="the KFH mean is what AttnPO compares with the baseline; the KFHs and the head in "
                               "focus are chosen on the Heads page (click a heatmap cell)")
    return choice, kfh if choice == KFH_MEAN else [parse_head(choice)]
