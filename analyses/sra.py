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


def summarize(per: np.ndarray, n_boot: int = 1000, seed: int = 0) -> SRAResult:
    """Mean of ``[n, ...]`` per-trace SRA (NaN when n = 0) with a bootstrap CI (none when n_boot=0)."""
    mean = per.mean(axis=0) if len(per) else np.full(per.shape[1:], np.nan)
    low, high = bootstrap_ci(per, n_boot, seed=seed) if n_boot else (mean, mean)
    return SRAResult(mean, low, high, len(per))


def sra(scores: list[np.ndarray], codes: list[np.ndarray], n_boot: int = 1000, seed: int = 0,
        shape: tuple[int, ...] = ()) -> SRAResult:
    """Mean per-trace SRA (NaN where no trace has pairs) with a bootstrap CI (none when n_boot=0)."""
    return summarize(per_trace_sra(scores, codes, shape)[0], n_boot, seed)


def has_pairs(codes: np.ndarray) -> bool:
    """Does the trace have a critical and a redundant step (so SRA can use it)?"""
    codes = np.asarray(codes)
    return bool((codes == 1).any() and (codes == 0).any())


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


def baseline_step_scores(step_lengths: list[list[int]], seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Every trivial ranker's ``[1, K]`` scores of every trace (the random one seeded)."""
    rng = np.random.default_rng(seed)
    return {name: [baseline_scores(name, lengths, rng) for lengths in step_lengths] for name in BASELINES}


def baselines(codes: list[np.ndarray], step_lengths: list[list[int]], n_boot: int = 1000,
              seed: int = 0) -> dict[str, dict]:
    """SRA (+CI) of each trivial ranker on all traces and on the redundant-first subset."""
    subset = [i for i, c in enumerate(codes) if redundant_first(c)]
    out = {}
    for name, s in baseline_step_scores(step_lengths, seed).items():
        full = sra(s, codes, n_boot, seed, shape=(1,))
        sub = sra([s[i] for i in subset], [codes[i] for i in subset], n_boot, seed, shape=(1,))
        out[name] = {"sra": json_float(full.sra[0]), "ci_low": json_float(full.ci_low[0]),
                     "ci_high": json_float(full.ci_high[0]),
                     "n_traces": full.n_traces, "sra_redundant_first": json_float(sub.sra[0]),
                     "n_traces_redundant_first": sub.n_traces}
    return out


def json_float(x) -> float | None:
    """A float for JSON, None for NaN."""
    x = float(x)
    return None if np.isnan(x) else x


def top_heads(sra_lh: np.ndarray, top_n: int) -> list[Head]:
    """The ``top_n`` heads by SRA (NaN last; ties by position), best first."""
    flat = np.nan_to_num(sra_lh, nan=-np.inf).ravel()
    order = np.argsort(-flat, kind="stable")[:top_n]
    n_heads = sra_lh.shape[1]
    return [(int(i // n_heads), int(i % n_heads)) for i in order]


def rank_grid(sra_lh: np.ndarray) -> np.ndarray:
    """Each head's rank by SRA (1 = best; NaN last; ties by position), as ``top_heads`` orders them."""
    ranks = np.empty(sra_lh.size, dtype=int)
    ranks[[l * sra_lh.shape[1] + h for l, h in top_heads(sra_lh, sra_lh.size)]] = np.arange(1, sra_lh.size + 1)
    return ranks.reshape(sra_lh.shape)


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
    held_out_per_trace: np.ndarray  # [n, L, H] per-trace SRA of the held-out traces that have pairs
    baselines_per_trace: dict[str, np.ndarray]  # [n] per-trace SRA of each trivial ranker, same traces


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
    """Select the top-N heads by SRA on a discovery split, report SRA on the held-out split.

    Only traces with both kinds of step are split (the others have no SRA on either side).
    """
    valid = [i for i, c in enumerate(codes) if has_pairs(c)]
    if len(valid) < 2:
        raise ValueError(f"only {len(valid)} of {len(codes)} traces have both critical and redundant steps; at least "
                         "2 are needed to rank heads on one split and test them on another (more traces, or "
                         "another labels source)")
    disc, held = ([valid[i] for i in part] for part in split(len(valid), discovery_frac, seed))
    shape = np.asarray(scores[0]).shape[:-1]
    d = sra([scores[i] for i in disc], [codes[i] for i in disc], n_boot=0, shape=shape)
    held_codes, held_lengths = [codes[i] for i in held], [step_lengths[i] for i in held]
    per_held = per_trace_sra([scores[i] for i in held], held_codes, shape)[0]
    h = summarize(per_held, n_boot, seed)
    sub = [i for i in held if redundant_first(codes[i])]
    hs = sra([scores[i] for i in sub], [codes[i] for i in sub], n_boot=0, shape=shape)
    base = baselines(held_codes, held_lengths, n_boot=n_boot, seed=seed)
    base_per = {name: per_trace_sra(s, held_codes, (1,))[0][:, 0]
                for name, s in baseline_step_scores(held_lengths, seed).items()}
    return Discovery(top_heads(d.sra, top_n), d, h, hs, disc, held, base, per_held, base_per)


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


def heatmap_figure(sra_lh: np.ndarray, title: str = "SRA per head (held-out)", marked: list[Head] | None = None,
                   ci: tuple[np.ndarray, np.ndarray] | None = None, rank: np.ndarray | None = None,
                   rank_label: str = "", marked_label: str = "KFH", value_label: str = "SRA",
                   chance: float | None = 0.5) -> go.Figure:
    """Layer x head heatmap, ``chance`` (0.5 for SRA) in white on a 0..1 scale, ``marked`` heads
    starred (with a legend entry).  ``chance=None`` for any other per-head score (e.g. a label-free
    ranker's, ``value_label`` naming it): its own colour range.

    Hovering a cell names the head (``L2H1``) with its value, its CI (``ci``: low and high grids)
    and its rank (``rank``: 1 = best; ``rank_label`` says by what); an invisible marker sits on
    every cell so that a click selects the head (Streamlit's ``on_select``): heatmap cells
    themselves are not selectable.
    """
    n_layers, n_heads = sra_lh.shape
    layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    scale = {"colorscale": "Viridis"} if chance is None else {"zmin": 0, "zmax": 1, "zmid": chance,
                                                              "colorscale": "RdBu_r"}
    fig = go.Figure(go.Heatmap(z=sra_lh, x=np.arange(n_heads), y=np.arange(n_layers), **scale,
                               colorbar={"title": value_label}, hoverinfo="skip",
                               text=np.round(sra_lh, 2), texttemplate="%{text}" if sra_lh.size <= 400 else None))
    low, high = ci if ci is not None else (np.full_like(sra_lh, np.nan), np.full_like(sra_lh, np.nan))
    ranks = rank if rank is not None else np.full(sra_lh.shape, np.nan)
    cells = np.stack([np.vectorize(lambda l, h: head_name((l, h)))(layers, heads), sra_lh, low, high, ranks],
                     axis=-1).reshape(-1, 5)
    hover = "<b>%{customdata[0]}</b><br>" + value_label + " %{customdata[1]:.3f}"
    hover += " (95% CI %{customdata[2]:.3f}–%{customdata[3]:.3f})" if ci is not None else ""
    hover += f"<br>rank %{{customdata[4]}} of {sra_lh.size} {rank_label}".rstrip() if rank is not None else ""
    fig.add_trace(go.Scatter(x=heads.ravel(), y=layers.ravel(), mode="markers", customdata=cells, name="heads",
                             showlegend=False, hovertemplate=hover + "<extra></extra>",
                             marker={"symbol": "square", "size": 30, "opacity": 0},
                             selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}}))
    if marked:  # in the cell's top-right corner, clear of its number
        fig.add_trace(go.Scatter(x=[h + 0.33 for _, h in marked], y=[l + 0.27 for l, _ in marked], mode="markers",
                                 name=marked_label, hoverinfo="skip",
                                 marker={"symbol": "star", "size": 14, "color": "gold",
                                         "line": {"color": "black", "width": 1.5}},
                                 selected={"marker": {"opacity": 1}}, unselected={"marker": {"opacity": 1}}))
    fig.update_layout(title=title, hovermode="closest", hoverdistance=-1, plot_bgcolor="white",
                      legend={"orientation": "h", "y": -0.15, "x": 0},
                      xaxis={"title": "head", "tickmode": "array", "tickvals": list(range(n_heads)),
                             "ticktext": [f"H{h}" for h in range(n_heads)], "showgrid": False, "zeroline": False},
                      yaxis={"title": "layer", "tickmode": "array", "tickvals": list(range(n_layers)),
                             "ticktext": [f"L{l}" for l in range(n_layers)], "showgrid": False, "zeroline": False})
    return fig


def by_layer_figure(sra_lh: np.ndarray, baselines_: dict[str, dict] | None = None,
                    title: str = "SRA by layer (held-out)") -> go.Figure:
    """Every head's SRA as a point per layer, the layer's best as a line, baselines dashed."""
    n_layers, n_heads = sra_lh.shape
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.repeat(np.arange(n_layers), n_heads), y=sra_lh.ravel(), mode="markers",
                             name="heads", text=[head_name((l, h)) for l in range(n_layers) for h in range(n_heads)],
                             hovertemplate="%{text}: SRA %{y:.3f}<extra></extra>", marker={"opacity": 0.6}))
    fig.add_trace(go.Scatter(x=np.arange(n_layers), y=np.nanmax(np.nan_to_num(sra_lh, nan=-np.inf), axis=1),
                             mode="lines+markers", name="best head"))
    for i, (name, b) in enumerate((baselines_ or {}).items()):
        if b["sra"] is not None:  # labels spread along the line: baselines often sit close together
            fig.add_hline(y=b["sra"], line_dash="dash", annotation_text=f"{name} ranker", line_color="gray",
                          annotation_position=("top left", "top", "top right")[i % 3])
    fig.update_layout(title=title, xaxis={"title": "layer", "dtick": 1}, yaxis_title="SRA", yaxis_range=[0, 1])
    return fig
