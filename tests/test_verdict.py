"""The verdict on a discovery: the plain line when no KFH beats the trivial rankers, and the size warning."""

from __future__ import annotations

import re

import numpy as np

from analyses.sra import discover
from analyses.verdict import MIN_HELD_OUT, verdict
from experiments.discover_heads import report

NO_HEAD = "No KFH beats the trivial rankers beyond the 95% CI"


def _traces(n: int, planted: bool, seed: int = 0):
    """Critical steps are the long ones (the "longer" ranker is near perfect); head L1H2 tracks the
    labels only when ``planted``, every other head is noise."""
    rng = np.random.default_rng(seed)
    scores, codes, lengths = [], [], []
    for _ in range(n):
        k = int(rng.integers(5, 9))
        c = rng.permutation(np.array([1, 1] + [0] * (k - 2)))
        s = rng.random((2, 3, k))
        if planted:
            s[1, 2] = c + 0.01 * rng.random(k)
        scores.append(s), codes.append(c)
        lengths.append([int(x) for x in np.where(c == 1, 30, 10) + rng.integers(0, 25, k)])  # longer ~ critical
    return scores, codes, lengths


def _summary(result, judged) -> dict:
    best = {"name": "L0H0", "sra": 0.5}
    return {"verdict": judged, "baselines": result.baselines,
            "held_out": {"n_traces_redundant_first": 0, "best_head": best}}


def test_no_head_beats_the_rankers_prints_the_line(capsys):
    scores, codes, lengths = _traces(60, planted=False)
    result = discover(scores, codes, lengths, top_n=2, n_boot=300)
    judged = verdict(result, n_boot=300)
    assert judged["beats_rankers"] == [] and judged["enough_held_out"]
    assert not any(k["vs_rankers"]["longer"]["beats"] for k in judged["kfh"])
    report(_summary(result, judged), result.discovery.n_traces)
    printed = capsys.readouterr().out
    assert NO_HEAD in printed and "the longer ranker" in printed and "WARNING" not in printed
    for k in judged["kfh"]:  # the chosen KFHs are listed with held-out SRA, CI and discovery SRA
        row = rf"{k['name']}\s+{k['sra']:.3f}\s+\[{k['ci_low']:.3f}, {k['ci_high']:.3f}\]\s+{k['sra_discovery']:.3f}"
        assert re.search(row, printed), (row, printed)


def test_a_head_that_beats_the_rankers_gets_no_such_line(capsys):
    scores, codes, lengths = _traces(60, planted=True)
    result = discover(scores, codes, lengths, top_n=2, n_boot=300)
    judged = verdict(result, n_boot=300)
    assert judged["beats_rankers"] == ["L1H2"]
    assert all(v["beats"] and v["ci_low"] > 0 for v in judged["kfh"][0]["vs_rankers"].values())
    report(_summary(result, judged), result.discovery.n_traces)
    printed = capsys.readouterr().out
    assert NO_HEAD not in printed and "L1H2 beats every trivial ranker beyond the 95% CI" in printed
    assert f"{judged['kfh'][1]['name']} does not" in printed  # the other KFH, noise, is named as such


def test_too_few_held_out_traces_warn_even_for_a_clear_winner():
    scores, codes, lengths = _traces(2 * (MIN_HELD_OUT - 1), planted=True)
    judged = verdict(discover(scores, codes, lengths, top_n=1, n_boot=200), n_boot=200)
    assert judged["n_held_out"] == MIN_HELD_OUT - 1 and not judged["enough_held_out"]
    assert judged["lines"][0].startswith(f"WARNING: only {MIN_HELD_OUT - 1} held-out trace(s)")
    scores, codes, lengths = _traces(2 * MIN_HELD_OUT, planted=True)
    judged = verdict(discover(scores, codes, lengths, top_n=1, n_boot=200), n_boot=200)
    assert judged["enough_held_out"] and not any(line.startswith("WARNING") for line in judged["lines"])


def test_traces_without_pairs_are_not_split():
    """Only traces with both kinds of step go into the discovery and held-out halves."""
    scores, codes, lengths = _traces(12, planted=True)
    codes[3] = np.ones_like(codes[3])  # critical only
    codes[7] = np.zeros_like(codes[7])  # redundant only
    result = discover(scores, codes, lengths, top_n=1, n_boot=50)
    split = result.discovery_ids + result.held_out_ids
    assert sorted(split) == [i for i in range(12) if i not in (3, 7)]
    assert result.discovery.n_traces + result.held_out.n_traces == 10
