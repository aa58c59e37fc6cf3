"""Label-free head ranking: which heads look like Key-Focus Heads when no step has a label?

Each ranker gives every head one score per trace, averaged over traces (higher = more KFH-like):

- ``receiver`` (Thought Anchors' receiver heads, Bogdan et al. 2025): from the head's step x step
  attention (workbench.tracing.step_attention: rows = the K steps then F, columns = steps), the
  *vertical score* of step j is the mean attention it receives from the segments at least
  ``proximity`` segments later (F counts as the last segment; near neighbours are left out, as
  attention to them is mostly recency).  Its excess kurtosis over the steps says how much the head
  singles out a few steps that later text keeps returning to.  One forward pass per trace.
- ``answer_kurtosis``: the same kurtosis over the answer->step scores S_k, the attention AttnPO
  reads.  One forward pass per trace.
- ``counterfactual``: per trace, the Spearman correlation between the head's S_k and the fall of
  log p(F) when step k is removed (`analyses.labels.counterfactual_drops`): agreement with the
  model's own causal importance of each step -- what the labels stand for -- without a label or
  a threshold.  K + 1 forward passes per trace.

Why these are sound: a KFH must separate critical from redundant steps, which needs attention
that is *unequal* across steps (the kurtosis rankers; a head spreading attention evenly ranks
steps at chance) and *aimed at the steps the answer depends on* (the counterfactual ranker).
Concentration alone can also single out the wrong steps (an attention sink on the first step),
which is why the study (`compare_selections`) measures, where labels exist, how much SRA the
label-free choice gives away.  Without labels no SRA can be reported: a label-free ``kfh.json``
says so and records the ranker instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from scipy import stats

from analyses.labels import counterfactual_drops
from analyses.sra import mean_ci, per_trace_sra, sra, top_heads
from workbench.heads import Head, head_name
from workbench.models import LoadedModel
from workbench.traces import TraceRecord
from workbench.tracing import ScoreCache, trace_step_attention, trace_step_scores

RANKERS = ("receiver", "answer_kurtosis", "counterfactual")
PROXIMITY = 4  # Thought Anchors' default: the 3 nearest later sentences are not counted as receivers' senders
MIN_STEPS = 4  # the kurtosis or rank correlation of fewer values says nothing


def excess_kurtosis(x: np.ndarray) -> np.ndarray:
    """Excess kurtosis (m4 / m2^2 - 3) over the last axis, NaN entries left out; NaN where fewer
    than `MIN_STEPS` finite values remain or they do not vary."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(-1)
    mean = np.where(ok, x, 0).sum(-1) / np.maximum(n, 1)
    d = np.where(ok, x - mean[..., None], 0)
    m2, m4 = (d**2).sum(-1) / np.maximum(n, 1), (d**4).sum(-1) / np.maximum(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = m4 / m2**2 - 3
    return np.where((n >= MIN_STEPS) & (m2 > 0), k, np.nan)


def vertical_scores(matrix: np.ndarray, proximity: int = PROXIMITY) -> np.ndarray:
    """[..., K + 1, K] step x step attention -> [..., K]: the mean attention step j receives from the
    segments i >= j + proximity (steps, then F as segment K); NaN for a step with none."""
    if proximity < 1:
        raise ValueError(f"proximity must be at least 1 (a step never counts as its own receiver's sender), "
                         f"got {proximity}")
    matrix = np.asarray(matrix, dtype=np.float64)
    k = matrix.shape[-1]
    later = np.arange(k + 1)[:, None] >= np.arange(k)[None, :] + proximity  # [K + 1, K]
    counts = later.sum(0)
    sums = np.where(later, matrix, 0).sum(-2)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def spearman_last_axis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation over the last axis of ``a`` [..., K] with ``b`` [K] (ties averaged);
    NaN where either does not vary or K < `MIN_STEPS`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ra = stats.rankdata(a, axis=-1)
    rb = stats.rankdata(b)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean()
    denom = np.sqrt((ra**2).sum(-1) * (rb**2).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (ra * rb).sum(-1) / denom
    return np.where((denom > 0) & (b.shape[-1] >= MIN_STEPS), r, np.nan)


def _mean_over_traces(per_trace: list[np.ndarray]) -> np.ndarray:
    """NaN-skipping mean over traces (NaN for a head no trace gives a value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN heads stay NaN
        return np.nanmean(np.stack(per_trace), axis=0)


@dataclass
class Evidence:
    """What the rankers read, per trace (all heads)."""

    step_scores: list[np.ndarray]  # [L, H, K] answer->step scores S
    matrices: list[np.ndarray] | None = None  # [L, H, K + 1, K] step x step attention (receiver)
    drops: list[np.ndarray] | None = None  # [K] fall of log p(F) without each step (counterfactual)


def needs(methods: list[str]) -> tuple[bool, bool]:
    """(step x step matrices, counterfactual drops) that ``methods`` need; unknown names raise."""
    bad = [m for m in methods if m not in RANKERS]
    if bad:
        raise ValueError(f"unknown label-free ranker {bad[0]!r}; choose from {', '.join(RANKERS)}")
    return "receiver" in methods, "counterfactual" in methods


def gather_evidence(loaded: LoadedModel, records: list[TraceRecord], methods: list[str],
                    cache: ScoreCache | None = None, batch_size: int = 1, progress: bool = True) -> Evidence:
    """Trace what ``methods`` need: the step x step attention when ``receiver`` is among them (S
    is its F row times |F|, so no second pass), else S alone; the drops for ``counterfactual``."""
    want_matrices, want_drops = needs(methods)
    items = [r.item() for r in records]
    matrices = None
    if want_matrices:
        traced = trace_step_attention(loaded, items, batch_size=batch_size, cache=cache, progress=progress)
        matrices = [m.numpy() for m in traced]
        scores = [m[..., -1, :] * (it.answer[1] - it.answer[0]) for m, it in zip(matrices, items)]
    else:
        scores = [s.numpy() for s in trace_step_scores(loaded, items, batch_size=max(batch_size, 8), cache=cache,
                                                       progress=progress)]
    drops = counterfactual_drops(loaded, records, progress=progress, cache=cache) if want_drops else None
    return Evidence(scores, matrices, drops)


def ranker_scores(method: str, evidence: Evidence, ids: list[int] | None = None,
                  proximity: int = PROXIMITY) -> np.ndarray:
    """[L, H] label-free score of every head, averaged over the traces ``ids`` (default: all)."""
    needs([method])
    ids = list(range(len(evidence.step_scores))) if ids is None else ids
    if method == "receiver":
        if evidence.matrices is None:
            raise ValueError("the receiver ranker needs the step x step attention (gather it with 'receiver')")
        per = [excess_kurtosis(vertical_scores(evidence.matrices[i], proximity)) for i in ids]
    elif method == "answer_kurtosis":
        per = [excess_kurtosis(evidence.step_scores[i]) for i in ids]
    else:
        if evidence.drops is None:
            raise ValueError("the counterfactual ranker needs the drops (gather them with 'counterfactual')")
        per = [spearman_last_axis(evidence.step_scores[i], evidence.drops[i]) for i in ids]
    return _mean_over_traces(per)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def spearman_ci(scores: np.ndarray, per_trace: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Spearman over heads between ``scores`` [L, H] and the mean of ``per_trace`` [n, L, H] SRA,
    with a bootstrap 95% CI over the traces."""
    point = _spearman(scores.ravel(), per_trace.mean(0).ravel())
    rng = np.random.default_rng(seed)
    n = len(per_trace)
    boots = [_spearman(scores.ravel(), per_trace[rng.integers(0, n, n)].mean(0).ravel()) for _ in range(n_boot)]
    boots = np.asarray([b for b in boots if np.isfinite(b)])
    low, high = (np.quantile(boots, [0.025, 0.975]) if len(boots) else (np.nan, np.nan))
    return {"mean": point, "ci_low": float(low), "ci_high": float(high), "n": n}


def compare_selections(step_scores: list[np.ndarray], codes: list[np.ndarray], rankings: dict[str, np.ndarray],
                       discovery_ids: list[int], held_out_ids: list[int], top_n: int = 3, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """Held-out SRA of the top-N heads chosen by SRA on the discovery traces and by each label-free
    ranking (``rankings``: method -> [L, H], computed without labels); per method the paired gap to
    the SRA choice, the overlap with it, and the Spearman over all heads with held-out SRA."""
    shape = np.asarray(step_scores[0]).shape[:-1]
    disc = sra([step_scores[i] for i in discovery_ids], [codes[i] for i in discovery_ids], n_boot=0, shape=shape)
    if disc.n_traces == 0:
        raise ValueError("no discovery trace has both critical and redundant steps: no SRA selection to compare with")
    per, kept = per_trace_sra([step_scores[i] for i in held_out_ids], [codes[i] for i in held_out_ids], shape)
    if not kept:
        raise ValueError("no held-out trace has both critical and redundant steps: nothing to measure SRA on")
    choices = {"sra": (top_heads(disc.sra, top_n), disc.sra),
               **{m: (top_heads(r, top_n), r) for m, r in rankings.items()}}

    def of(heads: list[Head]) -> np.ndarray:  # per held-out trace: mean SRA of the chosen heads
        return np.mean([per[:, layer, head] for layer, head in heads], axis=0)

    reference = of(choices["sra"][0])
    out = {"n_discovery": disc.n_traces, "n_held_out": len(kept), "top_n": top_n,
           "all_heads_held_out_sra": mean_ci(per.mean(axis=(1, 2)), n_boot, seed), "selections": {}}
    for name, (heads, ranking) in choices.items():
        out["selections"][name] = {
            "heads": [head_name(h) for h in heads],
            "held_out_sra": mean_ci(of(heads), n_boot, seed),
            "gap_to_sra_choice": mean_ci(reference - of(heads), n_boot, seed),
            "overlap_with_sra_choice": len(set(heads) & set(choices["sra"][0])) / top_n,
            "spearman_with_held_out_sra": spearman_ci(ranking, per, n_boot, seed)}
    return out


def summarize_seeds(results: list[dict]) -> dict:
    """Mean ± std over seeds of each selection's held-out SRA, gap to the SRA choice and Spearman."""
    def agg(values: list[float]) -> dict:
        v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
        return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None,
                "n_seeds": len(v)}

    names = results[0]["selections"]
    return {"all_heads_held_out_sra": agg([r["all_heads_held_out_sra"]["mean"] for r in results]),
            **{name: {key: agg([r["selections"][name][key]["mean"] for r in results])
                      for key in ("held_out_sra", "gap_to_sra_choice", "spearman_with_held_out_sra")}
               | {"overlap_with_sra_choice": agg([r["selections"][name]["overlap_with_sra_choice"] for r in results])}
               for name in names}}


def label_free_figure(summary: dict, baselines: dict[str, float] | None = None, scatter: dict | None = None,
                      title: str = "Label-free head selection") -> go.Figure:
    """Top: held-out SRA of the top-N heads by each selection (mean ± std over seeds), the mean
    head and trivial rankers as lines.  Bottom (``scatter``: method -> (scores [L, H], held-out
    SRA [L, H])): each head's label-free score against its held-out SRA."""
    names = [n for n in summary if n != "all_heads_held_out_sra"]
    scatter = scatter or {}
    cols = max(1, len(scatter))
    specs = [[{"colspan": cols}] + [None] * (cols - 1)] + ([[{}] * cols] if scatter else [])
    fig = make_subplots(rows=len(specs), cols=cols, specs=specs, vertical_spacing=0.2,
                        subplot_titles=["held-out SRA of the chosen top heads (mean ± std over seeds)",
                                        *[f"{m}, per head" for m in scatter]])
    fig.add_trace(go.Bar(x=names, y=[summary[n]["held_out_sra"]["mean"] for n in names],
                         error_y={"type": "data", "array": [summary[n]["held_out_sra"]["std"] for n in names]},
                         marker_color=["#444" if n == "sra" else "#1f77b4" for n in names], showlegend=False,
                         text=[f"{summary[n]['held_out_sra']['mean']:.3f}" for n in names], textposition="outside"),
                  row=1, col=1)
    lines = {"mean head": summary["all_heads_held_out_sra"]["mean"], **(baselines or {})}
    for (label, y), dash in zip(lines.items(), ("dash", "dot", "dashdot", "longdash")):
        if y is not None:
            fig.add_trace(go.Scatter(x=[names[0], names[-1]], y=[y, y], mode="lines", name=f"{label} ({y:.3f})",
                                     line={"dash": dash, "color": "gray"}), row=1, col=1)
    fig.update_yaxes(title_text="SRA", range=[0, 1.1], row=1, col=1)
    for c, (method, (score, held)) in enumerate(scatter.items(), start=1):
        n_layers, n_heads = score.shape
        fig.add_trace(go.Scatter(x=score.ravel(), y=held.ravel(), mode="markers", showlegend=False,
                                 text=[head_name((l, h)) for l in range(n_layers) for h in range(n_heads)],
                                 hovertemplate="%{text}: score %{x:.3g}, SRA %{y:.3f}<extra></extra>"),
                      row=2, col=c)
        fig.update_xaxes(title_text=f"{method} score", row=2, col=c)
        fig.update_yaxes(title_text="held-out SRA" if c == 1 else None, row=2, col=c)
    fig.update_layout(title=title, height=700)
    return fig


def label_free_heads(evidence: Evidence, method: str, top_n: int, proximity: int = PROXIMITY
                     ) -> tuple[list[Head], np.ndarray]:
    """The top-N heads by ``method`` over all traces, and every head's score [L, H]."""
    scores = ranker_scores(method, evidence, proximity=proximity)
    if not np.isfinite(scores).any():
        raise ValueError(f"the {method} ranker gave no head a score: traces need at least {MIN_STEPS} steps "
                         "(and, for receiver, steps that later text attends to)")
    return top_heads(scores, top_n), scores


def as_tensors(step_scores: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)) for s in step_scores]
