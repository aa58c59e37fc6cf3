"""Heads: SRA of every (layer, head), the KFH selection (click the heatmap, tick the table), the
head in focus with the steps it looks at most, and the export as kfh.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from analyses.sra import by_layer_figure, heatmap_figure, rank_grid
from app_pages.data import Workspace, ticked_heads, train_command
from app_pages.export import figure_downloads
from app_pages.glossary import page_header
from app_pages.state import USER_ERRORS, focused_head, selected_heads, set_selected_heads, set_view, settings, \
    toggle_head, view, workspace
from workbench.heads import Head, head_name
from workbench.kfh import KFHSelection, save_kfh

SPLITS = {"sra": "held-out SRA", "sra_discovery": "discovery SRA"}
N_EXAMPLES = 6


def head_examples(ws: Workspace, head: Head, n: int = N_EXAMPLES) -> pd.DataFrame:
    """The steps ``head`` scores highest over every trace: what it reads."""
    rows = [{"trace": t.trace_id, "step": k, "label": t.labels[k] or "unlabelled", "S": float(ws.scores[i][head][k]),
             "text": t.step_texts[k].strip()}
            for i, t in enumerate(ws.traces) for k in range(len(t.step_texts))]
    return pd.DataFrame(rows).sort_values("S", ascending=False).head(n)


def _clicked(ws: Workspace, chart_key: str) -> None:
    """A heatmap click: toggle the head as a KFH and put it in focus (the trace viewer colours by it)."""
    points = st.session_state[chart_key].selection.points
    if points:
        head = (int(round(points[0]["y"])), int(round(points[0]["x"])))
        toggle_head(ws, head)
        set_view("head", head_name(head))
        # a fresh chart (new key): a second click on the same cell is a new selection, not a deselection
        st.session_state["heatmap_clicks"] = st.session_state.get("heatmap_clicks", 0) + 1


def _edited(ws: Workspace, table: pd.DataFrame, key: str) -> None:
    """The table's KFH ticks, written back to the selection (best head first)."""
    ticked = ticked_heads(table, st.session_state[key]["edited_rows"])
    set_selected_heads(ws, [head_name(h) for h in ws.top(ws.n_layers * ws.n_heads) if head_name(h) in ticked])
    # a fresh editor (new key) shows the new selection instead of replaying its old edits over it
    st.session_state["table_edits"] = st.session_state.get("table_edits", 0) + 1


page_header("Key-Focus Heads", "SRA", "KFH", "split", "CI", "sra_redundant_first", "baselines", "S_k")
ws = workspace()
if ws is None:
    st.stop()
n_total = ws.n_layers * ws.n_heads
held = ws.settings.get("n_held_out")
st.caption(f"{ws.source} · model **{ws.model}** · {len(ws.traces) or ws.settings.get('n_traces', '?')} traces · "
           f"labels: {ws.settings.get('labels', '?')}"
           + (f" · SRA on {held} held-out traces, heads ranked on the discovery half" if held is not None else "")
           + (f" · made {ws.settings['created'][:16].replace('T', ' ')} UTC" if ws.settings.get("created") else ""))
if not ws.has_traces:
    st.info(f"Showing the head table of {ws.run_dir}: it lacks {' and '.join(ws.missing)}, which the trace viewer, "
            "the token view and the per-head examples need. `python experiments/discover_heads.py --out DIR` writes "
            "them; `experiments/reproduce.py` publishes them beside the table when they are small.")
for line in (ws.verdict or {}).get("lines", []):  # do discovery's KFHs beat the trivial rankers (analyses.verdict)
    (st.success if ws.verdict["beats_rankers"] and not line.startswith("WARNING") else st.warning)(line)

# --- selection: top-N by discovery SRA, then add / remove by hand (or click the heatmap, tick the table) ---
names = [head_name(h) for h in ws.top(n_total)]  # best first by discovery SRA


def _take_top() -> None:
    set_selected_heads(ws, [head_name(h) for h in ws.top(int(st.session_state["top_n"]))])


def _take_picked() -> None:
    set_selected_heads(ws, st.session_state["kfh_widget"])


left, right = st.columns([1, 3])
left.number_input("Top N", min_value=1, max_value=n_total, value=min(len(ws.kfh) or 3, n_total), key="top_n",
                  on_change=_take_top, help="select the N best heads by SRA on the discovery split")
st.session_state["kfh_widget"] = [head_name(h) for h in selected_heads(ws)]  # the choice survives page switches
right.multiselect("KFHs (add or remove heads; or click a heatmap cell)", names, key="kfh_widget",
                  on_change=_take_picked)
heads = selected_heads(ws)
picked = [head_name(h) for h in heads]
ranks = rank_grid(ws.grid(ws.ranking_column()))  # 1 = best on the split the KFHs are chosen on

# --- heatmap: click a cell to toggle it as a KFH and focus it ---------------------------------------------
splits = [c for c in SPLITS if c in ws.table]
if view("split") in splits:
    st.session_state.setdefault("split_widget", view("split"))
split = st.radio("Colour by", splits, format_func=SPLITS.get, horizontal=True, key="split_widget",
                 help="heads are ranked and chosen on the discovery split; held-out SRA is the honest number")
set_view("split", None if split == "sra" else split)
grid = ws.grid(split)
ci = (ws.grid("ci_low"), ws.grid("ci_high")) if split == "sra" else None
heatmap = heatmap_figure(grid, title=f"{SPLITS[split]} per head ({ws.model}, {ws.n_layers} layers x {ws.n_heads} "
                                     "heads; 0.5 = chance)", marked=heads, ci=ci,
                         rank=ranks, rank_label=f"by {SPLITS[ws.ranking_column()]}", marked_label="selected KFH")
heatmap.update_layout(height=max(360, 60 + 42 * ws.n_layers), clickmode="event+select", dragmode=False)
if (focus := focused_head(ws)) is not None:  # the head in focus (last clicked), outlined
    heatmap.add_shape(type="rect", x0=focus[1] - 0.5, x1=focus[1] + 0.5, y0=focus[0] - 0.5, y1=focus[0] + 0.5,
                      line={"color": "black", "width": 2, "dash": "dot"})
chart_key = f"sra_heatmap_{st.session_state.get('heatmap_clicks', 0)}"
st.plotly_chart(heatmap, key=chart_key, on_select=lambda: _clicked(ws, chart_key), selection_mode="points",
                config={"displayModeBar": False})
st.caption("★ = selected KFH; dotted outline = the head in focus. Click a cell to add the head to the KFHs or take "
           "it out; the clicked head is the one the trace viewer and the token view open on. Hover for the CI and "
           "the rank.")
figure_downloads(heatmap, "sra_heatmap")

# --- the head in focus -----------------------------------------------------------------------------------
if focus is not None:
    name = head_name(focus)
    row = ws.table.set_index("name").loc[name]
    st.subheader(f"{name} (KFH)" if name in picked else name)
    ci_text = f" (95% CI {row['ci_low']:.3f}–{row['ci_high']:.3f})" if np.isfinite(row["ci_low"]) else ""
    parts = [f"held-out SRA **{row['sra']:.3f}**{ci_text}"]
    if "sra_discovery" in row:
        parts.append(f"discovery SRA {row['sra_discovery']:.3f}")
    if "sra_redundant_first" in row and np.isfinite(row["sra_redundant_first"]):
        parts.append(f"SRA where a redundant step comes first {row['sra_redundant_first']:.3f}")
    st.markdown(" · ".join(parts) + f" · rank {ranks[focus]} of {n_total}")
    if ws.has_traces:
        b1, b2, _ = st.columns([1, 1, 2])
        if b1.button(f"Open {name} in the trace viewer", icon=":material/notes:", key="open_traces"):
            st.switch_page("app_pages/traces.py")
        if b2.button(f"Token attention of {name}", icon=":material/text_fields:", key="open_tokens"):
            st.switch_page("app_pages/tokens.py")
        st.markdown(f"**What {name} reads**: the steps it scores highest over all {len(ws.traces)} traces")
        st.dataframe(head_examples(ws, focus), hide_index=True, key="head_examples",
                     column_config={"S": st.column_config.NumberColumn(format="%.4f"),
                                    "text": st.column_config.TextColumn(width="large")})

# --- table: tick KFH to select -------------------------------------------------------------------------
table = ws.table.copy()
table.insert(0, "KFH", table["name"].isin(picked))
table.insert(1, "rank", ranks[table["layer"], table["head"]])
table = table.sort_values("sra", ascending=False, na_position="last").reset_index(drop=True)
st.subheader("All heads")
st.caption("Tick **KFH** to select a head. Click a column header to sort. CI: 95% bootstrap over held-out traces; "
           f"rank: by {SPLITS[ws.ranking_column()]}.")
number = st.column_config.NumberColumn(format="%.3f")
table_key = f"sra_table_{st.session_state.get('table_edits', 0)}"
st.data_editor(table, hide_index=True, key=table_key, on_change=lambda: _edited(ws, table, table_key),
               disabled=[c for c in table.columns if c != "KFH"],
               column_config={"KFH": st.column_config.CheckboxColumn("KFH", help="use this head as a KFH"),
                              **{c: number for c in table.columns if c.startswith(("sra", "ci_"))}})

by_layer = by_layer_figure(ws.grid("sra"), ws.baselines)
st.plotly_chart(by_layer, key="sra_by_layer")
figure_downloads(by_layer, "sra_by_layer")

# --- export ---------------------------------------------------------------------------------------------
st.subheader("Export")
default_path = Path(settings().runs_root) / "app" / "kfh.json"
out = st.text_input("kfh.json path", str(default_path), key="kfh_out")
if st.button("Write kfh.json", type="primary", disabled=not heads, key="write_kfh"):
    sra = dict(zip(ws.table["name"], ws.table["sra"]))
    extra = {"top_n": len(heads), "selected_in": "app", "ranked_by": ws.ranking_column()}
    sel = KFHSelection(ws.model, ws.fingerprint, ws.n_layers, ws.n_heads, heads,
                       [float(sra[head_name(h)]) for h in heads], {**ws.settings, **extra})
    try:
        st.session_state["kfh_written"] = str(save_kfh(Path(out), sel))
    except (*USER_ERRORS, OSError) as e:
        st.error(f"Cannot write {out}: {e}")
if written := st.session_state.get("kfh_written"):
    st.success(f"Wrote {written}. Train with these heads:")
    spec = ws.model if ws.run_dir else settings().model  # the spec that loads it (a run names its model only)
    st.code(train_command(spec, ws.settings.get("preset") == "organism", Path(written)), language="bash")
