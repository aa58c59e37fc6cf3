"""Label-free head ranking: the statistics against their definitions, synthetic heads whose answer is
known (a head with concentrated attention ranks first), the selection study, and the scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from analyses.label_free import (MIN_STEPS, Evidence, compare_selections, excess_kurtosis, ranker_scores,
                                 spearman_last_axis, summarize_seeds, vertical_scores)
from analyses.sra import top_heads

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the statistics

def test_excess_kurtosis_is_scipys_and_skips_nan():
    rng = np.random.default_rng(0)
    x = rng.gamma(0.5, size=(3, 4, 17))
    np.testing.assert_allclose(excess_kurtosis(x), stats.kurtosis(x, axis=-1, fisher=True, bias=True), rtol=1e-10)
    y = x[0, 0].copy()
    y[[2, 5]] = np.nan
    assert excess_kurtosis(y) == pytest.approx(stats.kurtosis(y[np.isfinite(y)], fisher=True, bias=True))
    assert np.isnan(excess_kurtosis(np.ones(10)))  # no spread
    assert np.isnan(excess_kurtosis(np.arange(MIN_STEPS - 1.0)))  # too few values
    assert excess_kurtosis(np.r_[np.zeros(19), 1.0]) > excess_kurtosis(rng.random(20))  # one spike: heavy tail


def test_vertical_scores_average_the_segments_far_enough_below():
    k = 5
    m = np.arange((k + 1) * k, dtype=float).reshape(k + 1, k)  # rows: 5 steps then F
    v1 = vertical_scores(m, proximity=1)
    assert v1[0] == pytest.approx(m[1:, 0].mean()) and v1[4] == pytest.approx(m[5, 4])  # step 4: F only
    v4 = vertical_scores(m, proximity=4)
    assert v4[0] == pytest.approx(m[4:, 0].mean()) and v4[1] == pytest.approx(m[5, 1])
    assert np.isnan(v4[2:]).all()  # nothing 4 segments below
    with pytest.raises(ValueError, match="proximity must be at least 1"):
        vertical_scores(m, proximity=0)


def test_spearman_last_axis_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 3, 9)), rng.random(9)
    want = np.array([[stats.spearmanr(a[i, j], b).statistic for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(spearman_last_axis(a, b), want, rtol=1e-10)
    assert np.isnan(spearman_last_axis(a, np.ones(9))).all()


# ---------------------------------------------------------------- synthetic heads: the answer is known

def _synthetic(n_traces: int, seed: int):
    """2 layers x 3 heads.  Head L1H2 concentrates its attention on one or two critical steps of each
    trace (it receives from every later segment and the answer reads them); the others spread theirs
    over every earlier step with noise.  Step 0 is the plan."""
    rng = np.random.default_rng(seed)
    matrices, codes, drops = [], [], []
    for _ in range(n_traces):
        k = int(rng.integers(10, 16))
        crit = rng.choice(np.arange(1, k), size=int(rng.integers(1, 3)), replace=False)
        c = np.zeros(k, dtype=np.int8)
        c[crit], c[0] = 1, -1
        m = rng.random((2, 3, k + 1, k)) * 0.2 + 1.0
        m[1, 2] = rng.random((k + 1, k)) * 0.05
        m[1, 2][:, crit] += 3.0
        m *= np.tril(np.ones((k + 1, k)))  # causal: a step sees itself and earlier steps only
        matrices.append(m)
        codes.append(c)
        drops.append(np.where(c == 1, 2.0, 0.1) + rng.random(k) * 0.05)  # removing a critical step costs log p(F)
    scores = [m[..., -1, :] * 4 for m in matrices]  # |F| = 4
    return Evidence(scores, matrices, drops), codes


@pytest.mark.parametrize("method", ["receiver", "answer_kurtosis", "counterfactual"])
def test_the_concentrated_head_ranks_first(method):
    evidence, _ = _synthetic(12, seed=2)
    scores = ranker_scores(method, evidence, proximity=2)
    assert scores.shape == (2, 3)
    assert top_heads(scores, 1) == [(1, 2)], scores


def test_receiver_ignores_attention_to_near_neighbours():
    """Heavy attention to the step just before (recency) is not receiving: with proximity 4 a head
    that only looks one step back scores no higher than a diffuse one."""
    rng = np.random.default_rng(3)
    k = 14
    diffuse = np.tril(rng.random((k + 1, k)) * 0.2 + 1.0)
    recency = diffuse * 0.1
    recency[np.arange(1, k + 1), np.arange(k)] += 5.0  # each segment looks at the step just before it
    evidence = Evidence([np.zeros((1, 2, k))], [np.stack([diffuse, recency])[None]])
    far = ranker_scores("receiver", evidence, proximity=4)
    near = ranker_scores("receiver", evidence, proximity=1)
    assert near[0, 1] > near[0, 0] and far[0, 1] == pytest.approx(far[0, 0])  # kurtosis ignores the 0.1 scale


def test_compare_selections_measures_what_a_ranking_gives_away():
    evidence, codes = _synthetic(40, seed=4)
    disc, held = list(range(20)), list(range(20, 40))
    good = ranker_scores("receiver", evidence, disc, proximity=2)
    bad = -good  # ranks the concentrated head last
    res = compare_selections(evidence.step_scores, codes, {"good": good, "bad": bad}, disc, held, top_n=1,
                             n_boot=200, seed=0)
    sel = res["selections"]
    assert sel["sra"]["heads"] == sel["good"]["heads"] == ["L1H2"] and sel["good"]["overlap_with_sra_choice"] == 1
    assert sel["good"]["gap_to_sra_choice"]["mean"] == 0 and sel["sra"]["held_out_sra"]["mean"] > 0.95
    assert sel["bad"]["gap_to_sra_choice"]["ci_low"] > 0.2 and sel["bad"]["overlap_with_sra_choice"] == 0
    assert sel["good"]["spearman_with_held_out_sra"]["mean"] > 0 > sel["bad"]["spearman_with_held_out_sra"]["mean"]
    assert res["n_held_out"] == 20
    summary = summarize_seeds([res, res])
    assert summary["bad"]["held_out_sra"]["mean"] == sel["bad"]["held_out_sra"]["mean"]
    assert summary["bad"]["held_out_sra"]["std"] == 0 and summary["bad"]["held_out_sra"]["n_seeds"] == 2


def test_unknown_ranker_and_missing_evidence_are_named():
    evidence, _ = _synthetic(2, seed=5)
    with pytest.raises(ValueError, match="unknown label-free ranker 'entropy'"):
        ranker_scores("entropy", evidence)
    with pytest.raises(ValueError, match="receiver ranker needs the step x step attention"):
        ranker_scores("receiver", Evidence(evidence.step_scores))
    with pytest.raises(ValueError, match="counterfactual ranker needs the drops"):
        ranker_scores("counterfactual", Evidence(evidence.step_scores))


# ---------------------------------------------------------------- the scripts

def test_study_on_the_organism(organism, tmp_path):
    from experiments import label_free

    doc = label_free.main(["--n-traces", "16", "--seeds", "0", "1", "--n-boot", "50", "--out", str(tmp_path)],
                          loaded=organism)
    assert [s["seed"] for s in doc["seeds"]] == [0, 1] and doc["settings"]["labels"] == "organism"
    for s in doc["seeds"]:
        assert set(s["selections"]) == {"sra", "receiver", "answer_kurtosis", "counterfactual"}
        for sel in s["selections"].values():
            v = sel["held_out_sra"]
            assert len(sel["heads"]) == 3 and 0 <= v["ci_low"] <= v["mean"] <= v["ci_high"] <= 1
    assert doc["summary"]["sra"]["held_out_sra"]["n_seeds"] == 2
    back = json.loads((tmp_path / "label_free.json").read_text())
    assert back["summary"] == json.loads(json.dumps(doc["summary"]))
    assert (tmp_path / "figures" / "label_free.html").exists() and (tmp_path / "label_free_heads.csv").exists()


def test_discover_without_labels_then_ablate_as_a_user_runs_it(tmp_path):
    env_cmd = [sys.executable]
    d, a = tmp_path / "discover", tmp_path / "ablate"
    done = subprocess.run([*env_cmd, "experiments/discover_heads.py", "--n-traces", "12", "--labels", "none",
                           "--out", str(d)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No SRA without labels" in done.stdout
    kfh = json.loads((d / "kfh.json").read_text())
    assert kfh["sra"] == [None] * 3 and kfh["settings"]["method"] == "receiver"
    assert kfh["settings"]["labels"] == "none" and len(kfh["settings"]["score"]) == 3
    assert not (d / "sra.csv").exists() and (d / "label_free.csv").exists()
    done = subprocess.run([*env_cmd, "experiments/ablate_steps.py", "--kfh", str(d / "kfh.json"), "--n-traces", "3",
                           "--measure", "logprob", "--out", str(a)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((a / "ablation.json").read_text())["kfh"] == kfh["names"]
