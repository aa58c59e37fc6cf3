"""The verdict on a KFH discovery: do the chosen heads rank critical steps better than the trivial rankers?

The KFHs are chosen on the discovery split, so only their held-out SRA is evidence.  A KFH beats
the trivial rankers when, for every ranker, the 95% paired-bootstrap CI of the mean per-trace
difference (head SRA minus ranker SRA, on the same held-out traces) lies above 0.  Below
``MIN_HELD_OUT`` held-out traces no claim is supported, whatever the numbers.  ``verdict`` gives
the numbers and the plain lines that the script prints, ``baselines.json`` keeps and the app shows.
"""

from __future__ import annotations

import numpy as np

from analyses.sra import Discovery, bootstrap_ci, json_float
from workbench.heads import head_name

MIN_HELD_OUT = 10  # held-out traces with both kinds of step, below which SRA supports no claim


def _paired(diff: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of per-trace differences and its bootstrap CI (the mean itself when n_boot = 0)."""
    mean = float(diff.mean())
    if not n_boot:
        return mean, mean, mean
    low, high = bootstrap_ci(diff[:, None], n_boot, seed=seed)
    return mean, float(low[0]), float(high[0])


def verdict(result: Discovery, n_boot: int = 1000, seed: int = 0) -> dict:
    """Each KFH's held-out SRA + CI, its paired difference to each trivial ranker, and the verdict lines."""
    n = result.held_out.n_traces
    kfh = []
    for layer, head in result.heads:
        row = {"name": head_name((layer, head)), "sra_discovery": json_float(result.discovery.sra[layer, head]),
               "sra": json_float(result.held_out.sra[layer, head]),
               "ci_low": json_float(result.held_out.ci_low[layer, head]),
               "ci_high": json_float(result.held_out.ci_high[layer, head]), "vs_rankers": {}}
        for name, per_ranker in result.baselines_per_trace.items():
            if n:
                mean, low, high = _paired(result.held_out_per_trace[:, layer, head] - per_ranker, n_boot, seed)
                row["vs_rankers"][name] = {"diff": mean, "ci_low": low, "ci_high": high, "beats": low > 0}
        row["beats_rankers"] = bool(n) and all(v["beats"] for v in row["vs_rankers"].values())
        kfh.append(row)
    ranked = [(name, b) for name, b in result.baselines.items() if b["sra"] is not None]
    best_name, best = max(ranked, key=lambda nb: nb[1]["sra"]) if ranked else (None, None)
    out = {"n_held_out": n, "min_held_out": MIN_HELD_OUT, "enough_held_out": n >= MIN_HELD_OUT, "kfh": kfh,
           "best_ranker": None if best is None else {"name": best_name, "sra": best["sra"], "ci_low": best["ci_low"],
                                                     "ci_high": best["ci_high"]},
           "beats_rankers": [k["name"] for k in kfh if k["beats_rankers"]]}
    out["lines"] = verdict_lines(out)
    return out


def verdict_lines(v: dict) -> list[str]:
    """The verdict in plain sentences: the size warning first, then whether any KFH beats the rankers."""
    n, lines = v["n_held_out"], []
    if n == 0:
        return ["No held-out trace has both critical and redundant steps: there is no held-out SRA to judge "
                "the KFHs by (more traces, or another labels source)."]
    if not v["enough_held_out"]:
        lines.append(f"WARNING: only {n} held-out trace(s) with both critical and redundant steps; below "
                     f"{v['min_held_out']} the SRA cannot support a claim (use more traces).")
    best = v["best_ranker"]
    ranker = f"the {best['name']} ranker {best['sra']:.3f}" if best else "the trivial rankers"
    winners = v["beats_rankers"]
    if not winners:
        top = max(v["kfh"], key=lambda k: -np.inf if k["sra"] is None else k["sra"])
        lines.append(f"No KFH beats the trivial rankers beyond the 95% CI (paired bootstrap over {n} held-out "
                     f"traces): the best KFH, {top['name']}, scores {_fmt(top['sra'])} against {ranker}. "
                     "These heads are not shown to find the critical steps.")
    else:
        rest = [k["name"] for k in v["kfh"] if k["name"] not in winners]
        lines.append(f"{', '.join(winners)} beat{'s' if len(winners) == 1 else ''} every trivial ranker beyond the "
                     f"95% CI (paired bootstrap over {n} held-out traces; best ranker: {ranker})"
                     + (f"; {', '.join(rest)} do{'es' if len(rest) == 1 else ''} not." if rest else "."))
    return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
