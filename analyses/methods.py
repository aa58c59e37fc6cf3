"""Method comparison: one table row per training method (mean ± std over seeds), the paper's claims
checked against it, and the figures.  Pure functions over the files a training run writes
(``eval_start.json``, ``eval_final.json``, ``metrics.jsonl``) plus its wall-clock seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

# table columns: (key, header, format)
COLUMNS = [
    ("accuracy", "held-out accuracy", "{:.3f}"),
    ("tokens", "mean response tokens", "{:.1f}"),
    ("token_change", "tokens vs start", "{:+.1%}"),
    ("train_tokens", "rollout tokens during training", "{:.1f}"),
    ("redundant_share", "redundant-step share", "{:.3f}"),
    ("critical_kept", "critical steps vs start (ratio)", "{:.3f}"),
    ("attenuation_precision", "attenuation precision", "{:.3f}"),
    ("wall_s", "wall-clock per run (s)", "{:.0f}"),
]


@dataclass
class RunFiles:
    """What one finished run wrote, already parsed."""

    method: str
    seed: int
    eval_start: dict
    eval_final: dict
    metrics: list[dict]
    wall_s: float


def _mean(values) -> float:
    """Mean of the values that are numbers (None and NaN skipped); NaN when there are none."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def run_row(run: RunFiles) -> dict:
    """The table's numbers for one run (NaN where a number does not apply)."""
    s, f = run.eval_start, run.eval_final
    crit_start = s.get("critical_steps_per_response", math.nan)
    return {
        "method": run.method, "seed": run.seed,
        "accuracy": f["accuracy"], "start_accuracy": s["accuracy"],
        "tokens": f["mean_response_tokens"], "start_tokens": s["mean_response_tokens"],
        "token_change": f["mean_response_tokens"] / s["mean_response_tokens"] - 1,
        "train_tokens": _mean(m.get("mean_response_tokens") for m in run.metrics),
        "redundant_share": f.get("redundant_step_fraction", math.nan),
        "critical_kept": f.get("critical_steps_per_response", math.nan) / crit_start if crit_start else math.nan,
        "attenuation_precision": _mean(m.get("attenuation_precision") for m in run.metrics),
        "wall_s": run.wall_s,
    }


def method_table(rows: list[dict], order: list[str]) -> list[dict]:
    """Per method, in ``order``: the mean and std over its seeds of every column, and the seed count."""
    out = []
    for method in order:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        entry = {"method": method, "seeds": len(mine)}
        for key in [c[0] for c in COLUMNS] + ["start_accuracy", "start_tokens"]:
            finite = [r[key] for r in mine if not math.isnan(r[key])]
            entry[key] = _mean(finite)
            entry[key + "_std"] = float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan
        out.append(entry)
    return out


def _cell(entry: dict, key: str, fmt: str) -> str:
    mean, std = entry[key], entry[key + "_std"]
    if math.isnan(mean):
        return "–"
    return fmt.format(mean) + ("" if math.isnan(std) else " ± " + fmt.format(std).lstrip("+"))


def markdown_table(table: list[dict]) -> str:
    """The method table as markdown, ``mean ± std`` cells."""
    head = ["method", "seeds"] + [c[1] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in table:
        lines.append("| " + " | ".join([e["method"], str(e["seeds"])] + [_cell(e, k, f) for k, _, f in COLUMNS]) + " |")
    return "\n".join(lines)


# training-dynamics columns: (metrics.jsonl key, header, format)
DYNAMICS = [
    ("mean_response_tokens", "rollout tokens", "{:.1f}"),
    ("accuracy", "rollout accuracy", "{:.3f}"),
    ("redundant_step_fraction", "redundant-step share", "{:.3f}"),
    ("frac_steps_attenuated", "steps attenuated", "{:.3f}"),
    ("attenuation_precision", "attenuation precision", "{:.3f}"),
    ("frac_steps_protected", "steps protected", "{:.3f}"),
    ("protection_precision", "protection precision", "{:.3f}"),
]


def dynamics_table(runs: list[RunFiles], order: list[str]) -> str:
    """Markdown: per method, each training metric averaged over the first, middle and last third
    of the steps (then over seeds), as ``a → b → c``; shows how fast each method removes what."""
    def thirds(metrics: list[dict], key: str) -> list[float]:
        return [_mean(metrics[i].get(key) for i in part) for part in np.array_split(np.arange(len(metrics)), 3)]

    head = ["method"] + [c[1] for c in DYNAMICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in order:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        cells = [method]
        for key, _, fmt in DYNAMICS:
            means = [_mean(col) for col in zip(*(thirds(r.metrics, key) for r in mine))]
            cells.append("–" if all(math.isnan(v) for v in means) else " → ".join(
                "–" if math.isnan(v) else fmt.format(v) for v in means))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Claim:
    claim: str
    measured: str
    verdict: str  # "holds" | "does not hold" | "within noise" | "not testable" | "not measured"


def _spread(*entries_keys) -> float:
    """Pooled noise of a difference: the root sum of the stds (a std that is NaN counts as 0)."""
    return math.sqrt(sum((0.0 if math.isnan(e[k + "_std"]) else e[k + "_std"]) ** 2 for e, k in entries_keys))


def _verdict(difference: float, noise: float) -> str:
    """``difference`` > 0 means the claim's direction."""
    if math.isnan(difference):
        return "not measured"
    if abs(difference) <= noise:
        return "within noise"
    return "holds" if difference > 0 else "does not hold"


def _pos_adv_claim(a: dict, p: dict, t: dict | None) -> Claim:
    """Pos-Adv's share of AttnPO's shortening.  Both carry the length penalty, so with a TLMRE row
    the share is of what AttnPO cuts *beyond* the length penalty alone; when AttnPO cuts nothing
    beyond it (within noise or less), there is nothing to attribute and the claim is not testable."""
    claim = "Pos-Adv alone gives most of AttnPO's shortening"
    if t is None:
        if a["token_change"] >= 0:
            return Claim(claim, f"AttnPO did not shorten ({a['token_change']:+.1%})", "not testable")
        share = p["token_change"] / a["token_change"]
        return Claim(claim, f"Pos-Adv {p['token_change']:+.1%} of AttnPO's {a['token_change']:+.1%} ({share:.0%} "
                     "of it; no TLMRE run to separate the length penalty)", "holds" if share >= 0.5 else "does not hold")
    extra_a, extra_p = t["token_change"] - a["token_change"], t["token_change"] - p["token_change"]
    measured = (f"beyond TLMRE's {t['token_change']:+.1%}: AttnPO {-extra_a:+.1%}, Pos-Adv {-extra_p:+.1%} "
                "(points of tokens vs start)")
    if extra_a <= _spread((a, "token_change"), (t, "token_change")):
        return Claim(claim, measured + "; AttnPO cuts nothing beyond the length penalty here", "not testable")
    share = extra_p / extra_a
    return Claim(claim, measured + f"; Pos-Adv gives {share:.0%} of it", "holds" if share >= 0.5 else "does not hold")


def _faster_claim(rows: list[dict]) -> Claim | None:
    """Ours, not the paper's: AttnPO's rollouts get short sooner than TLMRE's.  Paired by seed (a
    seed draws the same prompts in every method), on the mean rollout length over all RL steps;
    it holds when the mean paired difference exceeds the std of the differences."""
    by_seed = {(r["method"], r["seed"]): r["train_tokens"] for r in rows}
    diffs = np.array([by_seed[("tlmre", s)] - by_seed[("attnpo", s)]
                      for m, s in by_seed if m == "attnpo" and ("tlmre", s) in by_seed])
    if len(diffs) == 0:
        return None
    claim = "(ours) AttnPO shortens sooner than the length penalty alone: fewer rollout tokens during training"
    if len(diffs) < 2:
        return Claim(claim, "needs at least 2 seeds to judge a paired difference", "not measured")
    return Claim(claim, "TLMRE minus AttnPO, mean rollout tokens over training, per seed: "
                 + ", ".join(f"{d:+.1f}" for d in diffs), _verdict(float(diffs.mean()), float(diffs.std(ddof=1))))


def power_claim(o: dict, t: dict) -> Claim:
    """The testbed's power check: can a perfect head beat the length penalty at all?  The oracle
    (true step labels) must dominate TLMRE: higher accuracy by more than the pooled seed std at no
    more mean tokens, or fewer tokens by more than the pooled std at no lower mean accuracy.  When
    it cannot, the task does not test whether step-level credit beats a length penalty."""
    acc, fewer = o["accuracy"] - t["accuracy"], t["tokens"] - o["tokens"]
    acc_noise, tok_noise = _spread((o, "accuracy"), (t, "accuracy")), _spread((o, "tokens"), (t, "tokens"))
    measured = (f"oracle {o['accuracy']:.3f} at {o['tokens']:.1f} tokens, TLMRE {t['accuracy']:.3f} at "
                f"{t['tokens']:.1f} (accuracy {acc:+.3f}, pooled std {acc_noise:.3f}; tokens {-fewer:+.1f}, "
                f"pooled std {tok_noise:.1f})")
    if math.isnan(acc) or math.isnan(fewer):
        verdict = "not measured"
    elif (acc > acc_noise and fewer >= 0) or (fewer > tok_noise and acc >= 0):
        verdict = "holds"
    elif (acc < -acc_noise and fewer <= 0) or (fewer < -tok_noise and acc <= 0):
        verdict = "does not hold"
    else:
        verdict = "within noise"
    return Claim("Power check: the oracle (true step labels) beats the length penalty alone (TLMRE)", measured,
                 verdict)


def check_claims(table: list[dict], ablation: dict | None, stability: list[dict],
                 rows: list[dict] | None = None) -> list[Claim]:
    """The paper's claims, each with the number measured here and a verdict (plus ours, from the
    per-run ``rows``, when given).

    A difference counts only when it exceeds the pooled seed std of the two rows compared.
    """
    by = {e["method"]: e for e in table}
    claims = []

    def have(*names):
        return all(n in by for n in names)

    if have("attnpo", "tlmre"):
        a, t = by["attnpo"], by["tlmre"]
        shorter = t["token_change"] - a["token_change"]  # > 0: AttnPO cut more
        acc = a["accuracy"] - t["accuracy"]
        v_short = _verdict(shorter, _spread((a, "token_change"), (t, "token_change")))
        v_acc = _verdict(acc, _spread((a, "accuracy"), (t, "accuracy")))
        verdict = "holds" if v_short == "holds" and v_acc != "does not hold" else (
            "does not hold" if "does not hold" in (v_short, v_acc) else "within noise")
        claims.append(Claim("AttnPO shortens more than the length penalty alone (TLMRE) at equal or better accuracy",
                            f"tokens {a['token_change']:+.1%} vs {t['token_change']:+.1%}; "
                            f"accuracy {a['accuracy']:.3f} vs {t['accuracy']:.3f}", verdict))
    if have("attnpo", "attnpo_pos"):
        a, p = by["attnpo"], by["attnpo_pos"]
        claims.append(_pos_adv_claim(a, p, by.get("tlmre")))
        claims.append(Claim("Neg-Adv adds accuracy (AttnPO against Pos-Adv alone)",
                            f"accuracy {a['accuracy']:.3f} vs {p['accuracy']:.3f}",
                            _verdict(a["accuracy"] - p["accuracy"], _spread((a, "accuracy"), (p, "accuracy")))))
    if have("oracle", "tlmre"):
        claims.append(power_claim(by["oracle"], by["tlmre"]))
    if have("attnpo", "oracle"):
        a, o = by["attnpo"], by["oracle"]
        better = (a["token_change"] - o["token_change"]) + (o["accuracy"] - a["accuracy"])
        claims.append(Claim("The oracle (true step labels) bounds what a perfect head could give",
                            f"oracle tokens {o['token_change']:+.1%}, accuracy {o['accuracy']:.3f}; "
                            f"AttnPO {a['token_change']:+.1%}, {a['accuracy']:.3f}",
                            _verdict(better, _spread((a, "token_change"), (o, "token_change"),
                                                     (a, "accuracy"), (o, "accuracy")))))
    if stability:
        pearson = [p for s in stability for p in s["pearson_step_scores"][1:] if p is not None]
        claims.append(Claim("The KFHs stay stable during training (Pearson of KFH step scores > 0.85)",
                            f"min {min(pearson):.3f}, mean {np.mean(pearson):.3f} over "
                            f"{len(pearson)} checkpoints" if pearson else "no checkpoint compared",
                            "not measured" if not pearson else ("holds" if min(pearson) > 0.85 else "does not hold")))
    if ablation:  # ablation.json of experiments/ablate_steps.py: conditions[name]["pass@1"]
        cond = ablation["conditions"]
        high, low, none = cond["high"]["pass@1"], cond["low"]["pass@1"], cond["none"]["pass@1"]
        claims.append(Claim("Removing high-score steps hurts pass@1 much more (30+ points) than removing "
                            "low-score steps",
                            f"pass@1: intact {none:.3f}, high removed {high:.3f}, low removed {low:.3f} "
                            f"(gap {low - high:+.3f})", "holds" if low - high >= 0.3 else (
                                "does not hold" if low - high <= 0 else "within noise")))
    faster = _faster_claim(rows) if rows else None
    return claims + ([faster] if faster else [])


def tokens_accuracy_figure(table: list[dict], rows: list[dict] | None = None, title: str | None = None) -> go.Figure:
    """The Pareto view: held-out accuracy against mean response tokens, every run (``rows``) a small
    point and each method's mean ± seed std a large one, with the start model."""
    fig = go.Figure()
    colours = dict(zip([e["method"] for e in table], qualitative.Plotly))
    for e in table:
        colour = colours[e["method"]]
        mine = [r for r in rows or [] if r["method"] == e["method"]]
        if mine:
            fig.add_trace(go.Scatter(
                x=[r["tokens"] for r in mine], y=[r["accuracy"] for r in mine], mode="markers", name=e["method"],
                legendgroup=e["method"], showlegend=False, marker={"size": 7, "color": colour, "opacity": 0.5},
                hovertext=[f"{e['method']} seed {r['seed']}" for r in mine], hoverinfo="text+x+y"))
        fig.add_trace(go.Scatter(
            x=[e["tokens"]], y=[e["accuracy"]], mode="markers+text", text=[e["method"]], textposition="top center",
            name=e["method"], legendgroup=e["method"], marker={"size": 13, "color": colour, "symbol": "diamond"},
            error_x={"type": "data", "array": [0 if math.isnan(e["tokens_std"]) else e["tokens_std"]]},
            error_y={"type": "data", "array": [0 if math.isnan(e["accuracy_std"]) else e["accuracy_std"]]}))
    if table:
        fig.add_trace(go.Scatter(x=[table[0]["start_tokens"]], y=[table[0]["start_accuracy"]], mode="markers+text",
                                 text=["start"], textposition="bottom center", name="start",
                                 marker={"size": 12, "symbol": "x", "color": "black"}))
    fig.update_layout(title=(title or "Held-out accuracy against response length after training")
                      + "<br><sup>each run a point; diamonds: mean ± std over seeds; ✕: the start model</sup>",
                      xaxis_title="mean response tokens", yaxis_title="held-out accuracy", template="plotly_white")
    return fig


def curves_figure(runs: list[RunFiles], key: str = "mean_response_tokens") -> go.Figure:
    """A training metric against step, averaged over each method's seeds."""
    fig = go.Figure()
    for method in dict.fromkeys(r.method for r in runs):
        series = [[m[key] for m in r.metrics] for r in runs if r.method == method]
        n = min(len(s) for s in series)
        if n == 0:
            continue
        mean = np.mean([s[:n] for s in series], axis=0)
        fig.add_trace(go.Scatter(x=list(range(1, n + 1)), y=mean, mode="lines", name=method))
    fig.update_layout(title=f"{key} during training (mean over seeds)", xaxis_title="step", yaxis_title=key,
                      template="plotly_white")
    return fig
