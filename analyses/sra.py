"""Step Ranking Accuracy (SRA) of every head, its bootstrap CI, trivial baselines and KFH selection.

SRA of a head on one trace = the fraction of its (critical, redundant) step pairs that the head's
step scores order correctly (critical higher; ties count half) -- a per-trace AUC.  A head's SRA
is the mean over the traces that have both kinds of step.  Every head is computed at once: a
trace's scores are a ``[..., K]`` array (``[L, H, K]`` for all heads), so the pair comparison is
one broadcast ``[..., C, R]`` per trace.

Trivial rankers score each step without the model -- earlier ranks higher, longer ranks higher,
random -- and a head is only interesting if it beats them, including on the traces where a
redundant step comes before a critical one (where position alone cannot win).  KFHs are chosen
on a discovery split and their SRA is reported on the held-out rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from workbench.heads import Head, head_name

BASELINES = ("earlier", "longer", "random")


def trace_sra(scores: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
    """Pairwise ranking accuracy of ``scores[..., K]`` against label ``codes[K]`` (1/0/-1).

    None when the trace lacks critical or redundant steps (it has no pairs).
    """
    scores = np.asarray(scores, dtype=np.float64)
    codes = np.asarray(codes)
    if scores.shape[-1] != len(codes):
        raise ValueError(f"scores have {scores.shape[-1]} steps but labels have {len(codes)}")
    crit, red = scores[..., codes == 1], scores[..., codes == 0]
    if crit.shape[-1] == 0 or red.shape[-1] == 0:
        return None
    diff = crit[..., :, None] - red[..., None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(-2, -1))


def per_trace_sra(scores: list[np.ndarray], codes: list[np.ndarray],
                  shape: tuple[int, ...] = ()) -> tuple[np.ndarray, list[int]]:
    """``[n_valid, ...]`` per-trace SRA and the indices of the traces that have both kinds.

    ``shape`` is the head shape to use when ``scores`` is empty.
    """
    rows, kept = [], []
    for i, (s, c) in enumerate(zip(scores, codes)):
        if not np.isfinite(s).all():
            raise ValueError(f"trace {i}: scores contain NaN or inf")
        v = trace_sra(s, c)
        if v is not None:
            rows.append(v)
            kept.append(i)
    shape = np.asarray(scores[0]).shape[:-1] if scores else shape
    return (np.stack(rows) if rows else np.zeros((0, *shape))), kept


def bootstrap_ci(per_trace: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                 chunk: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the mean over traces, resampling traces with replacement."""
    n = len(per_trace)
    if n == 0:
        nan = np.full(per_trace.shape[1:], np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    means = np.concatenate([per_trace[rng.integers(0, n, (min(chunk, n_boot - b), n))].mean(axis=1)
                            for b in range(0, n_boot, chunk)])
    return np.quantile(means, alpha / 2, axis=0), np.quantile(means, 1 - alpha / 2, axis=0)


def mean_ci(values, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean over traces of per-trace ``values`` with its bootstrap 95% CI (Nones when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    low, high = bootstrap_ci(v, n_boot, seed=seed)
    return {"mean": float(v.mean()), "ci_low": float(low), "ci_high": float(high), "n": len(v)}


@dataclass
class SRAResult:
    sra: np.ndarray  # [...] mean over valid traces (NaN when none)
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_traces: int  # traces with both kinds of step


def sra(scores: list[np.ndarray], codes: list[np.ndarray], n_boot: int = 1000, seed: int = 0,
        shape: tuple[int, ...] = ()) -> SRAResult:
    """Mean per-trace SRA (NaN where no trace has pairs) with a bootstrap CI (none when n_boot=0)."""
    per, kept = per_trace_sra(scores, codes, shape)
    mean = per.mean(axis=0) if len(kept) else np.full(per.shape[1:], np.nan)
    low, high = bootstrap_ci(per, n_boot, seed=seed) if n_boot else (mean, mean)
    return SRAResult(mean, low, high, len(kept))


def redundant_first(codes: np.ndarray) -> bool:
    """Does some redundant step come before some critical step?"""
    codes = np.asarray(codes)
    red, crit = np.flatnonzero(codes == 0), np.flatnonzero(codes == 1)
    return bool(len(red) and len(crit) and red[0] < crit[-1])


def baseline_scores(name: str, step_lengths: list[int], rng: np.random.Generator) -> np.ndarray:
    """``[1, K]`` scores of a trivial ranker: ``earlier``, ``longer`` or ``random``."""
    k = len(step_lengths)
    if name == "earlier":
        return -np.arange(k, dtype=np.float64)[None]
    if name == "longer":
        return np.asarray(step_lengths, dtype=np.float64)[None]
    if name == "random":
        return rng.random((1, k))
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


def baselines(codes: list[np.ndarray], step_lengths: list[list[int]], n_boot: int = 1000,
              seed: int = 0) -> dict[str, dict]:
    """SRA (+CI) of each trivial ranker on all traces and on the redundant-first subset."""
    rng = np.random.default_rng(seed)
    subset = [i for i, c in enumerate(codes) if redundant_first(c)]
    out = {}
    for name in BASELINES:
        s = [baseline_scores(name, lengths, rng) for lengths in step_lengths]
        full = sra(s, codes, n_boot, seed, shape=(1,))
        sub = sra([s[i] for i in subset], [codes[i] for i in subset], n_boot, seed, shape=(1,))
        out[name] = {"sra": _num(full.sra[0]), "ci_low": _num(full.ci_low[0]), "ci_high": _num(full.ci_high[0]),
                     "n_traces": full.n_traces, "sra_redundant_first": _num(sub.sra[0]),
                     "n_traces_redundant_first": sub.n_traces}
    return out


def _num(x) -> float | None:
    """A float for JSON, None for NaN."""
    x = float(x)
    return None if np.isnan(x) else x


def top_heads(sra_lh: np.ndarray, top_n: int) -> list[Head]:
    """The ``top_n`` heads by SRA (NaN last; ties by position), best first."""
    flat = np.nan_to_num(sra_lh, nan=-np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:top_n]
    n_heads = sra_lh.shape[1]
    return [(int(i // n_heads), int(i % n_heads)) for i in order]


@dataclass
class Discovery:
    """KFHs chosen on the discovery split; every head's SRA on both splits."""

    heads: list[Head]
    discovery: SRAResult  # [L, H]
    held_out: SRAResult  # [L, H], with bootstrap CI
    held_out_redundant_first: SRAResult  # [L, H] on held-out traces where a redundant step precedes a critical one
    discovery_ids: list[int]
    held_out_ids: list[int]
    baselines: dict[str, dict]  # trivial rankers on the held-out split


def split(n: int, discovery_frac: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of ``n`` traces into discovery and held-out indices."""
    if not 0 < discovery_frac < 1:
        raise ValueError(f"discovery fraction must be in (0, 1), got {discovery_frac}")
    if n < 2:
        raise ValueError(f"need at least 2 traces to split into discovery and held-out sets, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    cut = min(max(1, round(discovery_frac * n)), n - 1)
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())


def discover(scores: list[np.ndarray], codes: list[np.ndarray], step_lengths: list[list[int]], top_n: int = 3,
             discovery_frac: float = 0.5, seed: int = 0, n_boot: int = 1000) -> Discovery:
    """Select the top-N heads by SRA on a discovery split, report SRA on the held-out split."""
    disc, held = split(len(scores), discovery_frac, seed)
    shape = np.asarray(scores[0]).shape[:-1]
    d = sra([scores[i] for i in disc], [codes[i] for i in disc], n_boot=0, shape=shape)
    if d.n_traces == 0:
        raise ValueError(f"none of the {len(disc)} discovery traces has both critical and redundant steps; "
                         "cannot rank heads (more traces, or another labels source)")
    h = sra([scores[i] for i in held], [codes[i] for i in held], n_boot=n_boot, seed=seed, shape=shape)
    sub = [i for i in held if redundant_first(codes[i])]
    hs = sra([scores[i] for i in sub], [codes[i] for i in sub], n_boot=0, shape=shape)
    base = baselines([codes[i] for i in held], [step_lengths[i] for i in held], n_boot=n_boot, seed=seed)
    return Discovery(top_heads(d.sra, top_n), d, h, hs, disc, held, base)


def sra_table(result: Discovery) -> list[dict]:
    """One row per head: layer, head, name, held-out sra + CI, discovery sra, redundant-first sra."""
    n_layers, n_heads = result.discovery.sra.shape
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            rows.append({"layer": layer, "head": head, "name": head_name((layer, head)),
                         "sra": result.held_out.sra[layer, head], "ci_low": result.held_out.ci_low[layer, head],
                         "ci_high": result.held_out.ci_high[layer, head],
                         "sra_discovery": result.discovery.sra[layer, head],
                         "sra_redundant_first": result.held_out_redundant_first.sra[layer, head]})
    return rows


def heatmap_figure(sra_lh: np.ndarray, title: str = "SRA per head (held-out)",
                   marked: list[Head] | None = None, label: str = "SRA") -> go.Figure:
    """Layer x head heatmap, 0.5 (chance) in white; selected heads outlined.  Another ``label``
    (any per-head score, e.g. a label-free ranker's) gets its own colour range."""
    n_layers, n_heads = sra_lh.shape
    scale = {"zmin": 0, "zmax": 1, "zmid": 0.5, "colorscale": "RdBu_r"} if label == "SRA" else {"colorscale": "Viridis"}
    fig = go.Figure(go.Heatmap(z=sra_lh, x=[f"H{h}" for h in range(n_heads)], y=[f"L{l}" for l in range(n_layers)],
                               colorbar={"title": label}, **scale,
                               text=np.round(sra_lh, 2), texttemplate="%{text}" if sra_lh.size <= 400 else None,
                               hovertemplate=f"layer %{{y}} head %{{x}}: {label} %{{z:.3f}}<extra></extra>"))
    for layer, head in marked or []:
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line={"color": "black", "width": 3})
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", yaxis={"autorange": True})
    return fig


def by_layer_figure(sra_lh: np.ndarray, baselines_: dict[str, dict] | None = None,
                    title: str = "SRA by layer (held-out)") -> go.Figure:
    """Every head's SRA as a point per layer, the layer's best as a line, baselines dashed."""
    n_layers, n_heads = sra_lh.shape
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.repeat(np.arange(n_layers), n_heads), y=sra_lh.ravel(), mode="markers",
                             name="heads", text=[head_name((l, h)) for l in range(n_layers) for h in range(n_heads)],
                             marker={"opacity": 0.6}))
    fig.add_trace(go.Scatter(x=np.arange(n_layers), y=np.nanmax(np.nan_to_num(sra_lh, nan=-np.inf), axis=1),
                             mode="lines+markers", name="best head"))
    for name, b in (baselines_ or {}).items():
        if b["sra"] is not None:
            fig.add_hline(y=b["sra"], line_dash="dash", annotation_text=f"{name} ranker", line_color="gray")
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="SRA", yaxis_range=[0, 1])
    return fig
