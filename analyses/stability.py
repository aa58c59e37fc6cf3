"""Stability of KFHs across checkpoints: do the same heads keep attending to the same steps?

On one fixed, labelled trace set, each checkpoint gives every head's SRA and every step's KFH
score (mean over the KFHs).  Each checkpoint is compared with the first: Pearson and Spearman
correlation of the per-head SRA vectors, Pearson correlation of the step scores, and the overlap
of the top-N heads by SRA (|top_i & top_0| / N).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import stats

from analyses.figures import short_labels
from analyses.sra import json_float, sra, top_heads
from workbench.heads import Head, head_name

MEASURES = {  # stability.json key -> what it measures, in words
    "pearson_sra": "per-head SRA, Pearson r",
    "spearman_sra": "per-head SRA, rank correlation (Spearman)",
    "pearson_step_scores": "KFH step scores, Pearson r",
    "topn_overlap": "share of the top-N heads kept",
}


def kfh_step_scores(scores: list[np.ndarray], heads: list[Head]) -> np.ndarray:
    """The mean KFH score of every step of every trace, concatenated: ``[sum K]``."""
    idx = tuple(np.array(heads).T)
    return np.concatenate([np.asarray(s)[idx].mean(axis=0) for s in scores])


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None  # undefined for constant vectors
    return float(fn(a[ok], b[ok])[0])


def checkpoint_summary(scores: list[np.ndarray], codes: list[np.ndarray], kfh: list[Head]) -> dict:
    """Per-head SRA ``[L, H]`` and KFH step scores of one checkpoint on the fixed trace set."""
    return {"sra": sra(scores, codes, n_boot=0).sra, "step_scores": kfh_step_scores(scores, kfh)}


def compare(summaries: list[dict], top_n: int) -> dict:
    """Each checkpoint against the first (the first against itself gives 1s)."""
    ref = summaries[0]
    ref_top = set(top_heads(ref["sra"], top_n))
    out = {"pearson_sra": [], "spearman_sra": [], "pearson_step_scores": [], "topn_overlap": [], "top_heads": []}
    for s in summaries:
        a, b = ref["sra"].ravel(), s["sra"].ravel()
        out["pearson_sra"].append(_corr(stats.pearsonr, a, b))
        out["spearman_sra"].append(_corr(stats.spearmanr, a, b))
        out["pearson_step_scores"].append(_corr(stats.pearsonr, ref["step_scores"], s["step_scores"]))
        top = top_heads(s["sra"], top_n)
        out["topn_overlap"].append(len(ref_top & set(top)) / top_n)
        out["top_heads"].append([list(h) for h in top])
    return out


def stability_result(checkpoints: list[str], summaries: list[dict], kfh: list[Head], top_n: int) -> dict:
    """The core of ``stability.json``: the checkpoints, the measures against the first, the KFHs and
    each checkpoint's per-head SRA grid (NaN as null)."""
    grids = [[[json_float(v) for v in row] for row in s["sra"]] for s in summaries]
    return {"checkpoints": list(checkpoints), **compare(summaries, top_n), "kfh": [head_name(h) for h in kfh],
            "top_n": top_n, "sra": grids}


def stability_figure(result: dict) -> go.Figure:
    """The agreement measures against the first checkpoint, one line each, in plain words."""
    labels = short_labels(result["checkpoints"])
    fig = go.Figure()
    for key, words in MEASURES.items():
        fig.add_trace(go.Scatter(x=list(range(len(labels))), y=result[key], mode="lines+markers", name=words,
                                 customdata=result["checkpoints"],
                                 hovertemplate="%{customdata}<br>%{y:.3f}<extra>" + key + "</extra>"))
    fig.update_layout(title=f"KFH stability against {labels[0]} (the first checkpoint)", yaxis_range=[-1.05, 1.05],
                      xaxis={"tickmode": "array", "tickvals": list(range(len(labels))), "ticktext": labels,
                             "title": "checkpoint"}, yaxis_title="agreement with the first checkpoint",
                      legend={"orientation": "h", "y": -0.3}, margin={"b": 140})
    return fig


def sra_grids_figure(result: dict) -> go.Figure:
    """Each checkpoint's per-head SRA (``result["sra"]``, ``[checkpoint][layer][head]``) side by side,
    on one colour scale, with the checkpoint's top heads starred."""
    grids = [np.array(g, dtype=float) for g in result["sra"]]
    labels = short_labels(result["checkpoints"])
    fig = make_subplots(rows=1, cols=len(grids), subplot_titles=labels, shared_yaxes=True,
                        horizontal_spacing=min(0.04, 0.5 / max(1, len(grids))))
    for i, grid in enumerate(grids, 1):
        n_layers, n_heads = grid.shape
        names = np.array([[head_name((l, h)) for h in range(n_heads)] for l in range(n_layers)])
        fig.add_trace(go.Heatmap(z=grid, zmin=0, zmax=1, zmid=0.5, colorscale="RdBu_r", showscale=i == 1,
                                 colorbar={"title": "SRA"}, customdata=names,
                                 hovertemplate=labels[i - 1] + " %{customdata}: SRA %{z:.3f}<extra></extra>"),
                      row=1, col=i)
        top = result.get("top_heads", [[]] * len(grids))[i - 1]
        fig.add_trace(go.Scatter(x=[h for _, h in top], y=[l for l, _ in top], mode="markers", showlegend=i == 1,
                                 name="top heads of the checkpoint", hoverinfo="skip",
                                 marker={"symbol": "star", "size": 12, "color": "gold",
                                         "line": {"color": "black", "width": 1}}), row=1, col=i)
        fig.update_xaxes(dtick=1, title_text="head", row=1, col=i)
    fig.update_yaxes(dtick=1, autorange="reversed", title_text="layer", row=1, col=1)
    fig.update_layout(title="Per-head SRA at each checkpoint", legend={"orientation": "h", "y": -0.25})
    return fig
