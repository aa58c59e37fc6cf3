"""Stability of KFHs across checkpoints: do the same heads keep attending to the same steps?

On one fixed, labelled trace set, each checkpoint gives every head's SRA and every step's KFH
score (mean over the KFHs).  Each checkpoint is compared with the first: Pearson and Spearman
correlation of the per-head SRA vectors, Pearson correlation of the step scores, and the overlap
of the top-N heads by SRA (|top_i & top_0| / N).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from scipy import stats

from analyses.sra import sra, top_heads
from workbench.heads import Head


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


def stability_figure(result: dict) -> go.Figure:
    """The four agreement measures against the first checkpoint, one line each."""
    labels = result["checkpoints"]
    fig = go.Figure()
    for key in ("pearson_sra", "spearman_sra", "pearson_step_scores", "topn_overlap"):
        fig.add_trace(go.Scatter(x=list(range(len(labels))), y=result[key], mode="lines+markers", name=key))
    fig.update_layout(title="KFH stability against the first checkpoint", yaxis_range=[-1.05, 1.05],
                      xaxis={"tickmode": "array", "tickvals": list(range(len(labels))), "ticktext": labels,
                             "title": "checkpoint"}, yaxis_title="agreement")
    return fig
