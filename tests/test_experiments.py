"""The experiment scripts end to end: organism, a tiny random Qwen2, and SmolLM2 on real R1 traces."""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from experiments import ablate_steps, causal_heads, discover_heads, stability
from workbench.kfh import load_kfh
from workbench.models import load_model
from workbench.traces import bundled_r1_traces, read_traces

ROOT = Path(__file__).resolve().parents[1]
R1 = bundled_r1_traces()  # beside the repository, or $KFH_R1_TRACES
SRA_COLUMNS = ["layer", "head", "name", "sra", "ci_low", "ci_high", "sra_discovery", "sra_redundant_first"]
ABLATION_KEYS = {"none", "high", "low", "random"}
QUICKSTART_S = 900  # about 40 s on a busy 2-core CPU; today's kaleido code hung for ever


def _check_discovery(out: Path, loaded, n_traces: int, top_n: int) -> dict:
    layers, heads = loaded.model.config.num_hidden_layers, loaded.model.config.num_attention_heads
    with open(out / "sra.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SRA_COLUMNS and len(rows) == layers * heads
    assert {r["name"] for r in rows} == {f"L{l}H{h}" for l in range(layers) for h in range(heads)}
    sel = load_kfh(out / "kfh.json", loaded)
    assert len(sel.heads) == top_n and sel.settings["n_traces"] == n_traces
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    scores = load_file(str(out / "scores.safetensors"))
    assert len(traces) == n_traces and set(scores) == {t["trace_id"] for t in traces}
    for t in traces:
        assert tuple(scores[t["trace_id"]].shape) == (layers, heads, len(t["step_texts"])) == (
            layers, heads, len(t["labels"]))
    base = json.loads((out / "baselines.json").read_text())
    assert set(base["baselines"]) == {"earlier", "longer", "random"}
    assert set(base["discovery_ids"]).isdisjoint(base["held_out_ids"])
    for name in ("sra_heatmap", "sra_by_layer"):
        assert (out / "figures" / f"{name}.html").stat().st_size > 0
    return base


def _check_ablation(out: Path, ks: list[int]) -> dict:
    res = json.loads((out / "ablation.json").read_text())
    assert set(res["conditions"]) == ABLATION_KEYS and {"n_traces", "m"} <= set(res)
    for cond in res["conditions"].values():
        assert {f"pass@{k}" for k in ks} <= set(cond) and cond["n_traces"] == res["n_traces"]
        values = [cond[f"pass@{k}"] for k in ks]
        if res["n_traces"]:
            assert all(0 <= v <= 1 for v in values) and values == sorted(values)  # pass@k grows with k
    assert (out / "figures" / "ablation.html").exists()
    return res


def _check_stability(out: Path, n_checkpoints: int) -> dict:
    res = json.loads((out / "stability.json").read_text())
    assert len(res["checkpoints"]) == n_checkpoints
    for key in ("pearson_sra", "spearman_sra", "pearson_step_scores", "topn_overlap"):
        assert len(res[key]) == n_checkpoints
        assert res[key][0] == pytest.approx(1.0)  # the first checkpoint against itself
    assert (out / "figures" / "stability.html").exists()
    return res


def test_organism_end_to_end(organism, tmp_path):
    d = tmp_path / "discover"
    discover_heads.main(["--model", "organism", "--n-traces", "12", "--top-n", "2", "--n-boot", "100",
                         "--out", str(d)], loaded=organism)
    _check_discovery(d, organism, 12, 2)
    # the traces file is read back id for id, with the same steps
    back = read_traces(d / "traces.jsonl", organism)
    first = json.loads((d / "traces.jsonl").read_text().splitlines()[0])
    assert back[0].response_ids == first["response_ids"] and [list(s) for s in back[0].seg.steps] == first["steps"]

    a = tmp_path / "ablate"
    ablate_steps.main(["--kfh", str(d / "kfh.json"), "--n-traces", "2", "--n-samples", "4", "--k", "1", "2", "4",
                       "--m", "1", "--out", str(a)], loaded=organism)
    res = _check_ablation(a, [1, 2, 4])
    assert res["m"] == 1 and res["n_samples"] == 4

    c = tmp_path / "causal"
    causal_heads.main(["--kfh", str(d / "kfh.json"), "--n-traces", "3", "--n-random", "2", "--out", str(c)],
                      loaded=organism)
    causal = json.loads((c / "causal.json").read_text())
    assert causal["n_traces"] == 3 and len(causal["accuracy_random"]) == 2 and len(causal["kfh"]) == 2

    s = tmp_path / "stability"
    res = stability.main(["--checkpoints", "organism", "--sft-steps", "2", "--n-traces", "6", "--out", str(s)],
                         loaded=organism)
    _check_stability(s, 2)
    assert res["checkpoints"][1].endswith("sft-2") and load_model(res["checkpoints"][1]).fingerprint != \
        organism.fingerprint


def _quickstart_command() -> list[str]:
    """The README's first Quickstart command, the script part of it (after the installs)."""
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return shlex.split(block.split("&&")[-1])


def test_readme_quickstart_on_a_machine_without_a_browser(organism, browserless_env, tmp_path):
    """A newcomer's first command, run as they run it (a process, PNG export on, no Chrome/Chromium),
    with a small trace count: every file is written, the figures as HTML with one warning, exit 0."""
    cmd = _quickstart_command()
    assert cmd[:2] == ["python", "experiments/discover_heads.py"] and "--n-traces" in cmd and "--out" in cmd
    out = tmp_path / "kfh"
    cmd[0], cmd[cmd.index("--n-traces") + 1], cmd[cmd.index("--out") + 1] = sys.executable, "12", str(out)
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=browserless_env, capture_output=True, text=True, timeout=QUICKSTART_S)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr)
        pytest.fail(f"the Quickstart command did not finish within {QUICKSTART_S} s\nstderr tail: {err[-2000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    _check_discovery(out, organism, 12, 3)
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "plotly.min.js", "sra_by_layer.html", "sra_heatmap.html"]
    assert done.stderr.count("writing HTML figures only") == 1, done.stderr[-3000:]
    assert "KFHs (top 3 by SRA on 6 discovery traces)" in done.stdout


def test_kfh_for_another_model_stops_the_ablation(organism, tiny_qwen2, tmp_path):
    from workbench.kfh import KFHSelection, save_kfh

    path = save_kfh(tmp_path / "kfh.json", KFHSelection("tiny-qwen2", tiny_qwen2.fingerprint, 2, 4, [(1, 3)], [0.9]))
    with pytest.raises(ValueError, match="made for model 'tiny-qwen2'"):
        ablate_steps.main(["--kfh", str(path), "--out", str(tmp_path / "a")], loaded=organism)


@pytest.fixture(scope="module")
def tiny_dir(tiny_qwen2, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_qwen2.model.save_pretrained(path)
    tiny_qwen2.tokenizer.save_pretrained(path)
    return path


def test_tiny_qwen2_end_to_end(tiny_dir, tmp_path):
    """A random model cannot sample traces: it is teacher-forced on the task's reference traces."""
    common = ["--model", str(tiny_dir), "--traces", "organism:reference", "--preset", "organism"]
    d = tmp_path / "discover"
    discover_heads.main([*common, "--n-traces", "8", "--labels", "counterfactual", "--n-boot", "50", "--out", str(d)])
    loaded = load_model(tiny_dir)
    _check_discovery(d, loaded, 8, 3)
    assert load_kfh(d / "kfh.json").settings["labels"] == "counterfactual"

    a = tmp_path / "ablate"
    ablate_steps.main([*common, "--kfh", str(d / "kfh.json"), "--n-traces", "2", "--n-samples", "2", "--k", "1", "2",
                       "--verifier", "organism", "--answer-max-new-tokens", "4", "--mode", "continue", "--out",
                       str(a)])
    assert _check_ablation(a, [1, 2])["mode"] == "continue"

    s = tmp_path / "stability"
    stability.main(["--checkpoints", str(tiny_dir), "--traces", "organism:reference", "--preset", "organism",
                    "--labels", "organism", "--n-traces", "4", "--sft-steps", "1", "--sft-lr", "1e-2",
                    "--out", str(s)])
    res = _check_stability(s, 2)
    assert res["pearson_step_scores"][1] < 1.0  # the fine-tune moved the scores


@pytest.mark.skipif(not R1.exists(), reason=f"real R1 traces not found at {R1}")
def test_smollm2_on_real_r1_traces(smollm2, tmp_path):
    """SmolLM2 teacher-forced on the shortest real R1 traces, labelled by their Thought Anchors tags."""
    common = ["--model", "smollm2", "--traces", str(R1), "--max-tokens", "2100"]
    d = tmp_path / "discover"
    discover_heads.main([*common, "--labels", "chunks", "--n-traces", "4", "--top-n", "3", "--n-boot", "100",
                         "--out", str(d)], loaded=smollm2)
    _check_discovery(d, smollm2, 4, 3)

    a = tmp_path / "ablate"
    res = ablate_steps.main([*common, "--kfh", str(d / "kfh.json"), "--n-traces", "1", "--n-samples", "4",
                             "--k", "1", "4", "--answer-max-new-tokens", "4", "--out", str(a)], loaded=smollm2)
    assert res["n_traces"] == 1
    _check_ablation(a, [1, 4])

    s = tmp_path / "stability"
    stability.main(["--checkpoints", "smollm2", "smollm2", "--traces", str(R1), "--max-tokens", "2100",
                    "--labels", "chunks", "--n-traces", "2", "--out", str(s)], loaded=smollm2)
    _check_stability(s, 2)


@pytest.mark.skipif(not R1.exists(), reason=f"real R1 traces not found at {R1}")
def test_logprob_ablation_of_smollm2_on_a_real_r1_trace_as_a_user_runs_it(smollm2, tmp_path):
    """``ablate_steps.py --measure logprob`` in a subprocess: SmolLM2 never solves these problems
    (pass@k is 0), yet the answer's log-probability is finite and moves with what is removed."""
    from workbench.kfh import KFHSelection, save_kfh

    kfh = save_kfh(tmp_path / "kfh.json", KFHSelection("smollm2", smollm2.fingerprint, 30, 9,
                                                       [(10, 3), (20, 1), (25, 7)], [float("nan")] * 3))
    out = tmp_path / "ablate"
    done = subprocess.run([sys.executable, "experiments/ablate_steps.py", "--model", "smollm2", "--traces", str(R1),
                           "--max-tokens", "2100", "--n-traces", "1", "--kfh", str(kfh), "--measure", "logprob",
                           "--out", str(out)], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((out / "ablation.json").read_text())
    assert res["n_traces"] == 1 and res["measure"] == "logprob" and res["ks"] == []
    values = res["per_trace"][0]["logprob"]
    for cond in ABLATION_KEYS:
        assert all(math.isfinite(values[cond][k]) and values[cond][k] < 0 for k in
                   ("F_total", "F_per_token", "reference_total", "reference_per_token"))
    assert len({round(values[c]["F_total"], 4) for c in ABLATION_KEYS}) == 4  # every condition moves log p(F)
    assert "low - high: F_total" in done.stdout and (out / "figures" / "ablation.html").exists()


def test_trace_files_bad_rows_are_named(tiny_qwen2, tmp_path):
    from workbench.traces import load_traces, reference_organism

    ref = reference_organism(tiny_qwen2.tokenizer, 2, seed=0)
    good = {"id": "a", "prompt": ref[0].prompt, "response": ref[0].response, "is_correct": True}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "prompt": ref[1].prompt}) + "\n")
    with pytest.raises(ValueError, match="trace 'b' \\(row 1\\): field 'response'"):
        read_traces(path, tiny_qwen2)
    no_think = {"id": "c", "prompt": ref[1].prompt, "response": "\nNow a = 1 ."}
    path.write_text(json.dumps(good) + "\n" + json.dumps(no_think) + "\n")
    with pytest.warns(UserWarning, match="dropped 1 trace\\(s\\): 1 x no </think>"):
        records = read_traces(path, tiny_qwen2)
    assert [r.trace_id for r in records] == ["a"] and records[0].correct is True
    assert records[0].response_ids == ref[0].response_ids  # EOS appended, as sampled responses end
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="trace id 'a' appears twice"):
        read_traces(path, tiny_qwen2)
    with pytest.raises(FileNotFoundError, match="neither 'organism' nor an existing file"):
        load_traces(str(tmp_path / "missing.jsonl"), tiny_qwen2, 1)


def test_trace_files_give_the_first_n_usable_traces(tiny_qwen2, tmp_path):
    """Segmentation, length and correctness filters apply before the first ``n`` are taken."""
    from workbench.traces import load_traces, reference_organism

    ref = reference_organism(tiny_qwen2.tokenizer, 6, seed=0)
    rows = [{"id": r.trace_id, "prompt": r.prompt, "response": r.response, "is_correct": True} for r in ref]
    rows[1]["response"] = "\nNow a = 1 ."  # no </think>
    rows[2]["is_correct"] = False
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = [r.trace_id for r in ref]
    with pytest.warns(UserWarning, match="1 x no </think>"):
        assert [r.trace_id for r in read_traces(path, tiny_qwen2, n=2)] == [ids[0], ids[2]]
    with pytest.warns(UserWarning, match="not known to be correct"):
        got = load_traces(str(path), tiny_qwen2, 2, correct_only=True)
    assert [r.trace_id for r in got] == [ids[0], ids[3]]
    limit = len(ref[0].input_ids) - 1
    short = [r.trace_id for i, r in enumerate(ref) if i != 1 and len(r.input_ids) <= limit]
    assert short, "the reference traces should differ in length"
    with pytest.warns(UserWarning, match=f"longer than {limit} tokens"):
        got = load_traces(str(path), tiny_qwen2, 2, max_tokens=limit)
    assert [r.trace_id for r in got] == short[:2] and all(len(r.input_ids) <= limit for r in got)


def test_traces_generated_from_a_prompt_file(organism, tmp_path):
    import random

    from workbench.organism import task
    from workbench.traces import load_traces

    rng = random.Random(11)
    problems = [task.sample_problem(rng) for _ in range(3)]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(p.prompt() for p in problems) + "\n")
    records = load_traces(str(path), organism, 4, seed=0, progress=False, batch_size=4, max_new_tokens=320)
    assert len(records) == 4  # more than the 3 prompts: the file is cycled through
    for r in records:
        sample_index = int(r.trace_id.rsplit("-s", 1)[1])
        assert r.trace_id == f"prompt-{sample_index % 3}-s{sample_index}"
        assert r.prompt == problems[sample_index % 3].prompt()
        assert r.seg.ok and r.response_ids[-1] == organism.tokenizer.eos_token_id
        assert r.correct == task.verify(task.parse_prompt(r.prompt), r.response)
