"""Stability maths: correlations and top-N overlap against the first checkpoint, KFH step scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analyses.figures import short_labels
from analyses.stability import MEASURES, checkpoint_summary, compare, kfh_step_scores, sra_grids_figure, \
    stability_figure


def _summary(sra_lh, step_scores):
    return {"sra": np.asarray(sra_lh, dtype=float), "step_scores": np.asarray(step_scores, dtype=float)}


def test_kfh_step_scores_mean_over_heads_concatenated():
    a = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    b = np.ones((2, 3, 2))
    got = kfh_step_scores([a, b], [(0, 1), (1, 2)])
    assert np.allclose(got, np.concatenate([(a[0, 1] + a[1, 2]) / 2, [1.0, 1.0]]))


def test_compare_against_the_first_checkpoint():
    ref = _summary([[0.9, 0.5, 0.4], [0.3, 0.8, 0.6]], [1.0, 2.0, 3.0, 4.0])
    same = _summary(ref["sra"] * 0.5 + 0.1, ref["step_scores"] * 3)  # affine: Pearson 1, top heads unchanged
    other = _summary([[0.2, 0.5, 0.9], [0.3, 0.4, 0.95]], [4.0, 1.0, 3.0, 2.0])
    out = compare([ref, same, other], top_n=2)
    assert out["pearson_sra"][:2] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert out["spearman_sra"][1] == pytest.approx(1.0)
    assert out["pearson_sra"][2] == pytest.approx(stats.pearsonr(ref["sra"].ravel(), other["sra"].ravel())[0])
    assert out["spearman_sra"][2] == pytest.approx(stats.spearmanr(ref["sra"].ravel(), other["sra"].ravel())[0])
    assert out["pearson_step_scores"][2] == pytest.approx(stats.pearsonr([1, 2, 3, 4], [4, 1, 3, 2])[0])
    # top-2 of ref: L0H0 (0.9), L1H1 (0.8); of other: L1H2 (0.95), L0H2 (0.9) -> no overlap
    assert out["topn_overlap"] == [1.0, 1.0, 0.0]
    assert out["top_heads"][2] == [[1, 2], [0, 2]]


def test_constant_vectors_give_no_correlation():
    ref = _summary([[0.5, 0.5]], [1.0, 1.0])
    out = compare([ref, _summary([[0.4, 0.6]], [1.0, 2.0])], top_n=1)
    assert out["pearson_sra"] == [None, None] and out["pearson_step_scores"] == [None, None]


def test_checkpoint_summary_and_figure():
    scores = [np.array([[[3.0, 1.0, 2.0]]]), np.array([[[0.0, 5.0]]])]
    codes = [np.array([1, 0, 1]), np.array([1, 0])]
    s = checkpoint_summary(scores, codes, [(0, 0)])
    assert s["sra"][0, 0] == pytest.approx(0.5) and np.allclose(s["step_scores"], [3, 1, 2, 0, 5])
    result = {"checkpoints": ["a", "b"], **compare([s, s], 1)}
    assert len(stability_figure(result).data) == 4


def test_stability_figures_read_plainly_with_real_checkpoint_paths():
    run = "/home/me/runs/reproduce/organism/runs/attnpo-seed0/checkpoints"
    result = {"checkpoints": ["organism", f"{run}/step_20", f"{run}/step_40"], "pearson_sra": [1, 0.9, 0.8],
              "spearman_sra": [1, 0.9, 0.7], "pearson_step_scores": [1, 0.99, 0.98], "topn_overlap": [1, 1, 0.5],
              "top_heads": [[[1, 1]], [[1, 1]], [[2, 0]]], "sra": [[[0.5, 0.9], [0.2, 0.7]]] * 3}
    fig = stability_figure(result)
    assert list(fig.layout.xaxis.ticktext) == ["organism", "step_20", "step_40"]
    assert [t.name for t in fig.data] == list(MEASURES.values())  # words, not pearson_sra
    assert fig.layout.legend.orientation == "h"
    grids = sra_grids_figure(result)
    assert [a.text for a in grids.layout.annotations] == ["organism", "step_20", "step_40"]
    assert np.array_equal(np.asarray(grids.data[0].z), [[0.5, 0.9], [0.2, 0.7]])
    stars = [t for t in grids.data if t.type == "scatter"]
    assert [(list(t.y), list(t.x)) for t in stars] == [([1], [1]), ([1], [1]), ([2], [0])]
    assert short_labels(["/a/seed0/step_20", "/a/seed1/step_20"]) == ["seed0/step_20", "seed1/step_20"]
