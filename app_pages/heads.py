"""Heads: SRA of every (layer, head), the KFH selection, and its export as kfh.json."""

from __future__ import annotations

import shlex
from pathlib import Path

import streamlit as st

from analyses.sra import by_layer_figure, heatmap_figure
from app_pages.export import figure_downloads
from app_pages.state import USER_ERRORS, selected_heads, set_selected_heads, settings, workspace
from workbench.heads import head_name
from workbench.kfh import KFHSelection, save_kfh


def train_command(model: str, organism: bool, kfh_path: Path) -> str:
    """The trainer invocation that uses ``kfh_path``: the organism's AttnPO config, or the HF one
    (SmolLM2 by default; any other model is passed as ``model.name``)."""
    path = kfh_path.resolve()
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    config = "configs/organism/attnpo.yaml" if organism else "configs/hf/smollm2.yaml"
    override = "" if model == ("organism" if organism else "smollm2") else f" model.name={shlex.quote(model)}"
    return f"python -m workbench.train --config {config}{override} kfh.path={shlex.quote(str(shown))}"


st.title("Key-Focus Heads")
ws = workspace()
if ws is None:
    st.stop()
n_total = ws.n_layers * ws.n_heads
held = ws.settings.get("n_held_out")
st.caption(f"{ws.source} · model **{ws.model}** · {len(ws.traces)} traces · labels: {ws.settings.get('labels', '?')}"
           + (f" · SRA on {held} held-out traces (heads ranked on the discovery half)" if held is not None else ""))
for line in (ws.verdict or {}).get("lines", []):  # do discovery's KFHs beat the trivial rankers (analyses.verdict)
    (st.success if ws.verdict["beats_rankers"] and not line.startswith("WARNING") else st.warning)(line)

# --- selection: top-N by discovery SRA, then add / remove by hand --------------------------------------
names = [head_name(h) for h in ws.top(n_total)]  # best first


def _take_top() -> None:
    set_selected_heads(ws, [head_name(h) for h in ws.top(int(st.session_state["top_n"]))])


def _take_picked() -> None:
    set_selected_heads(ws, st.session_state["kfh_widget"])


left, right = st.columns([1, 3])
left.number_input("Top N", min_value=1, max_value=n_total, value=min(len(ws.kfh) or 3, n_total), key="top_n",
                  on_change=_take_top, help="select the N best heads by SRA (discovery split)")
st.session_state["kfh_widget"] = [head_name(h) for h in selected_heads(ws)]  # the choice survives page switches
picked = right.multiselect("KFHs (add or remove heads)", names, key="kfh_widget", on_change=_take_picked)
heads = selected_heads(ws)

# --- heatmap and table ----------------------------------------------------------------------------------
grid = ws.grid("sra")
heatmap = heatmap_figure(grid, title=f"SRA per head ({ws.model}, {ws.n_layers} layers x {ws.n_heads} heads)",
                         marked=heads)
st.plotly_chart(heatmap, key="sra_heatmap")
figure_downloads(heatmap, "sra_heatmap")

table = ws.table.copy()
table.insert(0, "KFH", table["name"].isin(picked))
table = table.sort_values("sra", ascending=False, na_position="last")
st.subheader("All heads")
st.caption("Click a column header to sort. CI: 95% bootstrap over traces.")
number = st.column_config.NumberColumn(format="%.3f")
st.dataframe(table, hide_index=True, key="sra_table",
             column_config={c: number for c in table.columns if c.startswith(("sra", "ci_"))})

by_layer = by_layer_figure(grid, ws.baselines)
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
