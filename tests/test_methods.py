"""Method comparison maths (analyses/methods.py) on hand-made runs, and the reproduce script end to end."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from analyses.methods import RunFiles, check_claims, dynamics_table, markdown_table, method_table, run_row, \
    tokens_accuracy_figure


def run(method, seed, tokens, acc, crit=2.0, precision=None, start_tokens=100.0):
    start = {"accuracy": 0.9, "mean_response_tokens": start_tokens, "critical_steps_per_response": 2.0,
             "redundant_step_fraction": 0.6}
    final = {"accuracy": acc, "mean_response_tokens": tokens, "critical_steps_per_response": crit,
             "redundant_step_fraction": 0.3}
    metrics = [{"step": 1, "attenuation_precision": precision}, {"step": 2, "attenuation_precision": None}]
    return RunFiles(method, seed, start, final, metrics, wall_s=60.0 + seed)


def test_run_row_and_method_table_average_over_seeds():
    rows = [run_row(run("attnpo", 0, 50.0, 0.90, precision=0.8)), run_row(run("attnpo", 1, 70.0, 0.94, precision=0.6))]
    assert rows[0]["token_change"] == pytest.approx(-0.5) and rows[0]["attenuation_precision"] == 0.8
    assert rows[0]["critical_kept"] == 1.0
    (e,) = method_table(rows + [run_row(run("rloo", 0, 100.0, 0.9))], ["attnpo"])
    assert e["seeds"] == 2 and e["tokens"] == 60.0 and e["tokens_std"] == pytest.approx(math.sqrt(200))
    assert e["accuracy"] == pytest.approx(0.92) and e["attenuation_precision"] == pytest.approx(0.7)
    assert e["wall_s"] == 60.5


def test_markdown_table_shows_mean_and_std_and_dashes_for_missing():
    rows = [run_row(run("rloo", s, 100.0 - s, 0.9)) for s in range(3)]
    md = markdown_table(method_table(rows, ["rloo"]))
    line = md.splitlines()[2]
    assert line.startswith("| rloo | 3 | 0.900 ± 0.000 | 99.0 ± 1.0 | -1.0% ± 1.0% |")
    assert "| – |" in line  # no attenuation precision for RLOO


def test_dynamics_table_averages_each_third_of_training_over_seeds():
    def trained(seed, first, last):
        metrics = [{"step": i + 1, "mean_response_tokens": first if i < 10 else last, "accuracy": 1.0,
                    "redundant_step_fraction": 0.5, "attenuation_precision": None if i < 20 else 0.8}
                   for i in range(30)]
        return RunFiles("tlmre", seed, {}, {}, metrics, 1.0)

    md = dynamics_table([trained(0, 90.0, 50.0), trained(1, 80.0, 40.0)], ["tlmre", "rloo"])
    lines = md.splitlines()
    assert len(lines) == 3, "a method without runs gets no row"
    assert lines[2] == "| tlmre | 85.0 → 45.0 → 45.0 | 1.000 → 1.000 → 1.000 | 0.500 → 0.500 → 0.500 | – | – → – → 0.800 | – | – |"


def table_of(spec):
    rows = [run_row(run(m, s, tok + 2 * s, acc, precision=0.9)) for m, (tok, acc) in spec.items() for s in range(3)]
    return method_table(rows, list(spec))


def test_claims_follow_the_numbers():
    ablation = {"conditions": {"none": {"pass@1": 0.95}, "high": {"pass@1": 0.30}, "low": {"pass@1": 0.90}}}
    stable = [{"pearson_step_scores": [1.0, 0.93, 0.90]}]
    good = table_of({"tlmre": (80, 0.85), "attnpo_pos": (45, 0.88), "attnpo": (40, 0.92), "oracle": (35, 0.93)})
    verdicts = {c.claim.split(" (")[0][:20]: c.verdict for c in check_claims(good, ablation, stable)}
    assert list(verdicts.values()) == ["holds"] * 7, verdicts

    bad = table_of({"tlmre": (40, 0.92), "attnpo_pos": (90, 0.80), "attnpo": (80, 0.70), "oracle": (90, 0.60)})
    unstable = [{"pearson_step_scores": [1.0, 0.5]}]
    swapped = {"conditions": {"none": {"pass@1": 0.95}, "high": {"pass@1": 0.9}, "low": {"pass@1": 0.5}}}
    verdicts = [c.verdict for c in check_claims(bad, swapped, unstable)]
    # AttnPO is longer than TLMRE here, so it has no shortening of its own for Pos-Adv to account for
    assert verdicts == ["does not hold", "not testable"] + ["does not hold"] * 5, verdicts

    weak_pos = table_of({"tlmre": (80, 0.85), "attnpo_pos": (70, 0.88), "attnpo": (40, 0.92)})
    (pos,) = [c for c in check_claims(weak_pos, None, []) if c.claim.startswith("Pos-Adv alone")]
    assert pos.verdict == "does not hold" and "25%" in pos.measured  # 10 of AttnPO's 40 extra points


def test_a_difference_inside_the_seed_spread_is_within_noise():
    rows = [run_row(run("tlmre", s, 60 + 20 * s, 0.9)) for s in range(3)]
    rows += [run_row(run("attnpo", s, 58 + 20 * s, 0.9)) for s in range(3)]
    (claim,) = [c for c in check_claims(method_table(rows, ["tlmre", "attnpo"]), None, []) if "TLMRE" in c.claim]
    assert claim.verdict == "within noise"


def test_sooner_shortening_is_judged_on_differences_paired_by_seed():
    def trained(method, seed, tokens):
        metrics = [{"step": i + 1, "mean_response_tokens": tokens - i} for i in range(5)]
        return run_row(RunFiles(method, seed, {"accuracy": 1.0, "mean_response_tokens": 90.0},
                                {"accuracy": 1.0, "mean_response_tokens": 50.0}, metrics, 1.0))

    # seeds differ a lot (70 / 80 / 90) but AttnPO is 2-3 tokens below TLMRE in every one: a paired effect
    rows = [trained("tlmre", s, t) for s, t in enumerate([70, 80, 90])]
    rows += [trained("attnpo", s, t) for s, t in enumerate([68, 77, 88])]
    assert rows[0]["train_tokens"] == 68.0  # mean of 70, 69, ..., 66
    table = method_table(rows, ["tlmre", "attnpo"])
    (sooner,) = [c for c in check_claims(table, None, [], rows) if c.claim.startswith("(ours)")]
    assert sooner.verdict == "holds" and "+2.0, +3.0, +2.0" in sooner.measured
    mixed = rows[:3] + [trained("attnpo", s, t) for s, t in enumerate([72, 77, 90])]  # -2, +3, 0
    (sooner,) = [c for c in check_claims(method_table(mixed, ["tlmre", "attnpo"]), None, [], mixed)
                 if c.claim.startswith("(ours)")]
    assert sooner.verdict == "within noise"
    assert not [c for c in check_claims(table, None, []) if c.claim.startswith("(ours)")], "needs the rows"
    one_seed = [rows[0], rows[3]]
    (sooner,) = [c for c in check_claims(method_table(one_seed, ["tlmre", "attnpo"]), None, [], one_seed)
                 if c.claim.startswith("(ours)")]
    assert sooner.verdict == "not measured"


def test_publish_leaves_big_trace_files_in_the_work_folder(tmp_path, monkeypatch):
    from experiments import reproduce

    work, out = tmp_path / "work", tmp_path / "out"
    (work / "discover").mkdir(parents=True)
    for name in ("sra.csv", "kfh.json", "traces.jsonl", "scores.safetensors"):
        (work / "discover" / name).write_bytes(b"x" * 100)
    reproduce.publish(work, out)
    assert sorted(p.name for p in (out / "discover").iterdir()) == ["kfh.json", "scores.safetensors", "sra.csv",
                                                                    "traces.jsonl"]
    monkeypatch.setattr(reproduce, "MAX_TRACE_FILE_BYTES", 99)
    shutil.rmtree(out)
    reproduce.publish(work, out)
    assert sorted(p.name for p in (out / "discover").iterdir()) == ["kfh.json", "sra.csv"]


def test_published_results_are_not_git_ignored():
    """docs/results/<model>/runs/ holds the runs' metrics the app plots: an ignore rule for the work
    folder (runs/ at the top) must not swallow it."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("docs/results/organism/runs/attnpo-seed0/metrics.jsonl",
                 "docs/results/organism/stability/attnpo-seed0/stability.json",
                 "docs/results/organism/discover/traces.jsonl"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=root, timeout=60)
        assert ignored.returncode == 1, f"{path} is git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/reproduce/x"], cwd=root, timeout=60).returncode == 0


def test_reproduce_quick_runs_every_stage_and_writes_the_report(tmp_path):
    from experiments import reproduce

    out = tmp_path / "results"
    # two runs side by side in worker processes, as the full run does on a CPU
    summary = reproduce.main(["--quick", "--out", str(out), "--methods", "tlmre", "attnpo", "--steps", "2",
                              "--jobs", "2"])
    assert [e["method"] for e in summary["methods"]] == ["tlmre", "attnpo"]
    assert all(e["seeds"] == 1 and e["tokens"] > 0 for e in summary["methods"])
    report = (out / "REPORT.md").read_text()
    for c in summary["claims"]:
        assert c["claim"] in report and c["verdict"] in ("holds", "does not hold", "within noise", "not testable",
                                                          "not measured")
    assert "| attnpo | 1 |" in report and (out / "methods.csv").exists()
    for name in ("discover/kfh.json", "discover/traces.jsonl", "discover/scores.safetensors", "ablation.json",
                 "runs/attnpo-seed0/metrics.jsonl", "runs/attnpo-seed0/eval_final.json",
                 "stability/attnpo-seed0/stability.json", "figures/tokens_accuracy.html", "figures/sra_heatmap.html"):
        assert (out / name).exists(), name
    # what the app shows beside a result file: the model, heads and settings it was made with
    kfh = json.loads((out / "discover" / "kfh.json").read_text())
    ablation = json.loads((out / "ablation.json").read_text())
    assert ablation["kfh"] == kfh["names"] and ablation["fingerprint"] == kfh["fingerprint"]
    assert ablation["model"] == "organism" and ablation["created"] and ablation["traces"]["source"] == "organism"
    stab = json.loads((out / "stability" / "attnpo-seed0" / "stability.json").read_text())
    assert stab["fingerprint"] == kfh["fingerprint"] and stab["kfh"] == kfh["names"] and stab["created"]
    assert not list(out.glob("runs/*/checkpoints")), "checkpoints stay in the work folder"
    # the start evaluation is the same for every run (same model, prompts, sampling seed): identical files
    starts = {(out / "runs" / r / "eval_start.json").read_text() for r in ("tlmre-seed0", "attnpo-seed0")}
    assert len(starts) == 1
    assert all((out / "runs" / r / "wall_clock.json").exists() for r in ("tlmre-seed0", "attnpo-seed0"))
    # a run killed after its step-1 checkpoint is resumed there, and only it is trained again
    killed = out / "work" / "runs" / "attnpo-seed0"
    shutil.rmtree(killed / "checkpoints" / "step_2")
    for name in ("eval_final.json", "wall_clock.json"):
        (killed / name).unlink()
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "accur')  # killed while writing a metrics line
    kept = (out / "work" / "runs" / "tlmre-seed0" / "wall_clock.json").read_text()
    summary = reproduce.main(["--quick", "--out", str(out), "--methods", "tlmre", "attnpo", "--steps", "2"])
    assert json.loads((killed / "wall_clock.json").read_text())["resumed_at_step"] == 1
    assert [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "work" / "runs" / "tlmre-seed0" / "wall_clock.json").read_text() == kept
    # stages in the work folder are reused only under the budget that made them
    with pytest.raises(SystemExit, match="steps: 2 there, 3 now"):
        reproduce.main(["--quick", "--out", str(out), "--methods", "tlmre", "attnpo", "--steps", "3"])
    # a second call finds every stage done and only rewrites the report from the same files
    again = reproduce.main(["--quick", "--out", str(out), "--methods", "tlmre", "attnpo", "--steps", "2"])
    assert json.dumps(again["methods"]) == json.dumps(summary["methods"])  # NaN-safe comparison


def test_the_budget_reaches_every_run_config(tmp_path):
    from experiments import reproduce

    def rollouts(argv):
        b = reproduce.budget_from(reproduce.parse_args(argv))
        cfg = reproduce.run_config("tlmre", 0, b, tmp_path / "kfh.json", argv[1])
        return cfg.rollout.prompts_per_step, cfg.train.steps, cfg.train.lr

    assert rollouts(["--model", "organism-hard"]) == (8, 60, 3e-4)
    assert rollouts(["--model", "organism-hard", "--prompts-per-step", "16", "--steps", "30"]) == (16, 30, 3e-4)


def test_power_check_needs_the_oracle_to_dominate_tlmre():
    def verdict(oracle, tlmre):
        (c,) = [c for c in check_claims(table_of({"tlmre": tlmre, "oracle": oracle}), None, [])
                if c.claim.startswith("Power check")]
        return c.verdict

    assert verdict((60, 0.90), (60, 0.80)) == "holds"  # more accurate at the same length
    assert verdict((40, 0.85), (60, 0.85)) == "holds"  # shorter beyond the seed spread at the same accuracy
    assert verdict((61, 0.85), (60, 0.85)) == "within noise"
    assert verdict((70, 0.90), (60, 0.80)) == "within noise"  # a trade, not dominance
    assert verdict((60, 0.80), (60, 0.90)) == "does not hold"


def test_tokens_accuracy_figure_draws_every_run_and_the_method_means():
    rows = [run_row(run(m, s, 50.0 + s, 0.9)) for m in ("tlmre", "oracle") for s in range(3)]
    fig = tokens_accuracy_figure(method_table(rows, ["tlmre", "oracle"]), rows)
    points = [t for t in fig.data if t.mode == "markers"]
    assert [len(t.x) for t in points] == [3, 3]  # one point per run, per method
    means = [t for t in fig.data if t.mode == "markers+text" and t.name != "start"]
    assert [t.x[0] for t in means] == [51.0, 51.0]
