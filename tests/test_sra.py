"""SRA maths: hand-computed pairs, ties, one-kind traces, the per-trace mean, CI, baselines, selection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analyses.figures import save_figure
from analyses.sra import (baseline_scores, baselines, bootstrap_ci, by_layer_figure, discover, heatmap_figure,
                          per_trace_sra, rank_grid, redundant_first, split, sra, sra_table, top_heads, trace_sra)


def test_hand_computed_pairs():
    # critical steps 0 (3.0) and 2 (2.0) against redundant 1 (1.0) and 3 (0.0): all four pairs right
    assert trace_sra(np.array([3.0, 1.0, 2.0, 0.0]), np.array([1, 0, 1, 0])) == 1.0
    # critical 1 (2.0), 2 (2.0) vs redundant 0 (2.5): both wrong -> 0; step 3 is left out (-1)
    assert trace_sra(np.array([2.5, 2.0, 2.0, 9.0]), np.array([0, 1, 1, -1])) == 0.0
    # critical 0 (1.0) vs redundant 1 (2.0) wrong, vs redundant 2 (0.5) right -> 1/2
    assert trace_sra(np.array([1.0, 2.0, 0.5]), np.array([1, 0, 0])) == 0.5


def test_ties_count_half():
    assert trace_sra(np.array([1.0, 1.0, 1.0]), np.array([1, 0, 0])) == 0.5
    # one tie (0.5) and one right pair (1) out of two -> 0.75
    assert trace_sra(np.array([2.0, 2.0, 1.0]), np.array([1, 0, 0])) == 0.75


def test_trace_with_one_kind_has_no_pairs_and_is_skipped():
    assert trace_sra(np.array([1.0, 2.0]), np.array([1, 1])) is None
    assert trace_sra(np.array([1.0, 2.0]), np.array([0, -1])) is None
    per, kept = per_trace_sra([np.array([[1.0, 2.0]]), np.array([[2.0, 1.0]])], [np.array([1, 1]), np.array([1, 0])])
    assert kept == [1] and per.shape == (1, 1) and per[0, 0] == 1.0
    res = sra([np.array([[1.0, 2.0]])], [np.array([0, 0])], n_boot=10)
    assert res.n_traces == 0 and np.isnan(res.sra).all()


def test_mean_over_traces_not_over_pooled_pairs():
    a = (np.array([[2.0, 1.0]]), np.array([1, 0]))  # 1 pair, right
    b = (np.array([[0.0, 1.0, 2.0, 3.0]]), np.array([1, 0, 0, 0]))  # 3 pairs, all wrong
    res = sra([a[0], b[0]], [a[1], b[1]], n_boot=0)
    assert res.sra[0] == pytest.approx(0.5)  # pooled pairs would give 0.25


def test_vectorised_over_heads_matches_a_loop():
    rng = np.random.default_rng(0)
    codes = np.array([1, 0, -1, 1, 0, 0, 1])
    s = rng.integers(0, 3, size=(3, 4, len(codes))).astype(float)  # small ints: many ties
    got = trace_sra(s, codes)
    for l, h in itertools.product(range(3), range(4)):
        pairs = [(s[l, h, i] > s[l, h, j]) + 0.5 * (s[l, h, i] == s[l, h, j])
                 for i in np.flatnonzero(codes == 1) for j in np.flatnonzero(codes == 0)]
        assert got[l, h] == pytest.approx(np.mean(pairs))


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="NaN or inf"):
        per_trace_sra([np.array([[np.nan, 1.0]])], [np.array([1, 0])])
    with pytest.raises(ValueError, match="3 steps but labels have 2"):
        trace_sra(np.array([1.0, 2.0, 3.0]), np.array([1, 0]))


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    per = rng.uniform(0.7, 1.0, size=(50, 2, 3))
    low, high = bootstrap_ci(per, n_boot=500, seed=3)
    mean = per.mean(0)
    assert (low <= mean).all() and (mean <= high).all() and (high - low > 0).all()
    low2, high2 = bootstrap_ci(per, n_boot=500, seed=3)
    assert np.array_equal(low, low2) and np.array_equal(high, high2)
    const_low, const_high = bootstrap_ci(np.full((20, 1), 0.8), n_boot=100)
    assert const_low[0] == pytest.approx(0.8) and const_high[0] == pytest.approx(0.8)


def test_redundant_first():
    assert redundant_first(np.array([-1, 0, 1]))
    assert not redundant_first(np.array([-1, 1, 1, 0, 0]))
    assert not redundant_first(np.array([1, 1]))


def test_trivial_rankers():
    codes = [np.array([-1, 1, 1, 0, 0]), np.array([-1, 1, 0, 1, 0])]
    lengths = [[5, 9, 9, 3, 3], [5, 2, 8, 2, 8]]
    rng = np.random.default_rng(0)
    assert trace_sra(baseline_scores("earlier", lengths[0], rng), codes[0])[0] == 1.0
    assert trace_sra(baseline_scores("longer", lengths[1], rng), codes[1])[0] == 0.0
    out = baselines(codes, lengths, n_boot=50)
    assert out["earlier"]["sra"] == pytest.approx((1.0 + 0.75) / 2)
    assert out["earlier"]["sra_redundant_first"] == pytest.approx(0.75)  # only trace 1 has a redundant step first
    assert out["earlier"]["n_traces_redundant_first"] == 1
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_scores("shorter", [1, 2], rng)


def test_empty_subsets_give_nan_of_the_right_shape():
    out = baselines([np.array([1, 1, 0])], [[1, 2, 3]], n_boot=10)  # no redundant step before a critical one
    assert out["earlier"]["n_traces_redundant_first"] == 0 and out["earlier"]["sra_redundant_first"] is None
    assert sra([], [], n_boot=10, shape=(2, 3)).sra.shape == (2, 3)
    scores, codes, lengths = _planted(6)
    codes = [np.array([1, 1] + [0] * (len(c) - 2)) for c in codes]  # critical steps first everywhere
    res = discover(scores, codes, lengths, top_n=1, n_boot=10)
    assert res.held_out_redundant_first.n_traces == 0 and np.isnan(res.held_out_redundant_first.sra).all()
    assert len(sra_table(res)) == 12


def test_random_ranker_is_near_chance():
    codes = [np.array([1, 0, 1, 0, 0, 1])] * 400
    out = baselines(codes, [[1] * 6] * 400, n_boot=200)
    assert out["random"]["ci_low"] < 0.5 < out["random"]["ci_high"]


def test_top_heads_order_and_nan_last():
    s = np.array([[0.5, np.nan, 0.9], [0.95, 0.1, 0.9]])
    assert top_heads(s, 3) == [(1, 0), (0, 2), (1, 2)]
    assert top_heads(np.full((1, 2), np.nan), 1) == [(0, 0)]


def test_split_is_disjoint_complete_and_seeded():
    d, h = split(10, 0.3, seed=4)
    assert len(d) == 3 and set(d).isdisjoint(h) and sorted(d + h) == list(range(10))
    assert split(10, 0.3, seed=4) == (d, h) and split(10, 0.3, seed=5) != (d, h)
    with pytest.raises(ValueError, match="fraction"):
        split(10, 1.0, 0)


def _planted(n_traces: int, seed: int = 0):
    """Scores where head L2H1 tracks the labels and every other head is noise."""
    rng = np.random.default_rng(seed)
    scores, codes, lengths = [], [], []
    for _ in range(n_traces):
        k = int(rng.integers(4, 9))
        c = rng.permutation(np.array([-1] + [1] * 2 + [0] * (k - 3)))
        s = rng.random((3, 4, k))
        s[2, 1] = (c == 1) + 0.3 * rng.random(k)
        scores.append(s), codes.append(c), lengths.append(rng.integers(1, 20, k).tolist())
    return scores, codes, lengths


def test_discover_selects_on_discovery_and_reports_held_out():
    scores, codes, lengths = _planted(60)
    res = discover(scores, codes, lengths, top_n=2, discovery_frac=0.5, seed=1, n_boot=300)
    assert res.heads[0] == (2, 1)
    assert set(res.discovery_ids).isdisjoint(res.held_out_ids)
    assert len(res.discovery_ids) + len(res.held_out_ids) == 60
    assert res.held_out.sra[2, 1] > 0.95 and res.held_out.ci_low[2, 1] > 0.5
    # held-out numbers are computed on the held-out traces only
    direct = sra([scores[i] for i in res.held_out_ids], [codes[i] for i in res.held_out_ids], n_boot=0)
    assert np.allclose(direct.sra, res.held_out.sra)
    rows = sra_table(res)
    assert len(rows) == 12 and rows[9]["name"] == "L2H1" and rows[9]["sra"] == res.held_out.sra[2, 1]


def test_figures(tmp_path):
    s = np.array([[0.5, 0.9], [0.2, 0.7]])
    fig = heatmap_figure(s, marked=[(0, 1)], ci=(s - 0.1, s + 0.1), rank=rank_grid(s))
    assert np.array_equal(np.asarray(fig.data[0].z), s)
    cells, marks = fig.data[1], fig.data[2]
    assert marks.name == "KFH" and marks.showlegend is not False
    assert [(round(y), round(x)) for y, x in zip(marks.y, marks.x)] == [(0, 1)]  # in the marked cell
    hover = {tuple(row[:1]): row for row in cells.customdata}  # what a hovered (or clicked) cell says
    assert hover[("L1H1",)][1:].astype(float).tolist() == pytest.approx([0.7, 0.6, 0.8, 2])
    assert list(zip(cells.y, cells.x))[3] == (1, 1) and cells.customdata[3][0] == "L1H1"
    assert rank_grid(np.array([[0.5, np.nan], [0.9, 0.5]])).tolist() == [[2, 4], [1, 3]]
    assert (fig.data[0].zmin, fig.data[0].zmid, fig.data[0].zmax) == (0, 0.5, 1)
    other = heatmap_figure(s * 40, value_label="receiver", chance=None)  # a label-free ranker's score
    assert other.data[0].zmin is None and other.data[0].zmax is None and other.data[0].colorbar.title.text == "receiver"
    assert "receiver" in other.data[1].hovertemplate
    paths = save_figure(by_layer_figure(s, {"earlier": {"sra": 0.6}}), tmp_path, "by_layer")
    assert (tmp_path / "by_layer.html").stat().st_size > 0 and paths[0].name == "by_layer.html"
