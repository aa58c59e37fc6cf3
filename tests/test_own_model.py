"""Bringing your own model, as a user does it: the README's commands in a subprocess, defaults that work
or fail at once, traces over the context, one-line errors, --dtype, --correct-only, and a killed
discovery that resumes from its cache."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments import discover_heads
from workbench.kfh import load_kfh
from workbench.models import smollm2_gguf_path
from workbench.traces import R1_TRACES_ENV, bundled_r1_traces, reference_organism

ROOT = Path(__file__).resolve().parents[1]
R1 = bundled_r1_traces()
needs_r1 = pytest.mark.skipif(not R1.exists(), reason=f"real R1 traces not found at {R1}")
# the README's placeholders, and the tiny size each script runs at here (the README's are full runs)
PLACEHOLDERS = {"path/to/your-model": lambda tmp: str(smollm2_gguf_path()),
                "your-traces.jsonl": lambda tmp: str(short_r1_traces(tmp / "your-traces.jsonl"))}
TINY = {"discover_heads.py": ["--n-traces", "3", "--max-tokens", "2100", "--n-boot", "50"],
        "ablate_steps.py": ["--n-traces", "1", "--max-tokens", "2100", "--n-samples", "2", "--k", "1", "2",
                            "--answer-max-new-tokens", "8"]}


def _env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "KFH_PNG": "0", "PYTHONPATH": str(ROOT), **extra}


def _script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / name), *args]


def readme_commands(section: str = "## Your own model") -> list[str]:
    """The commands of the bash blocks in one README section."""
    text = (ROOT / "README.md").read_text()
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def short_r1_traces(path: Path, n_chunks: int = 30) -> Path:
    """The R1 traces cut after their first ``n_chunks`` chunks, then closed with the reference answer:
    a user's own (short) trace file with chunk labels."""
    rows = []
    for line in R1.read_text().splitlines():
        row = json.loads(line)
        think, pos, kept = row["response"].split("</think>")[0], 0, []
        for chunk in row["chunks"][:n_chunks]:
            start = think.find(chunk["chunk"], pos)
            if start < 0:
                break
            pos = start + len(chunk["chunk"])
            kept.append(chunk)
        rows.append({**row, "response": think[:pos] + f"\n</think>\n\nThe answer is \\boxed{{{row['answer']}}}.",
                     "chunks": kept})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@needs_r1
def test_readme_own_model_commands_run_as_written(tmp_path):
    """Each README command for your own model, at a tiny size, on SmolLM2: it finishes and writes its files."""
    commands = readme_commands()
    assert len(commands) >= 4 and any("--traces" not in c for c in commands), commands
    for command in commands:
        for placeholder, value in PLACEHOLDERS.items():
            command = command.replace(placeholder, value(tmp_path))
        argv = shlex.split(command)
        assert argv[:2] in (["python", "experiments/discover_heads.py"], ["python", "experiments/ablate_steps.py"])
        name = Path(argv[1]).name
        done = subprocess.run(_script(name, *argv[2:], *TINY[name]), cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        out = tmp_path / argv[argv.index("--out") + 1]
        if name == "discover_heads.py":
            summary = json.loads((out / "baselines.json").read_text())
            assert summary["verdict"]["lines"] and all(line in done.stdout for line in summary["verdict"]["lines"])
            assert "WARNING: only" in done.stdout  # 3 traces: far below the held-out minimum
        else:
            result = json.loads((out / "ablation.json").read_text())
            assert result["n_traces"] == 1 and result["per_trace"][0]["answers"]["none"], result["warnings"]


def test_a_model_without_traces_stops_before_loading(tmp_path):
    """No bundled R1 traces and no --traces: a one-line error naming --traces, before the model loads."""
    done = subprocess.run(_script("discover_heads.py", "--model", "smollm2", "--out", str(tmp_path / "x")),
                          env=_env(**{R1_TRACES_ENV: str(tmp_path / "absent.jsonl")}), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--traces FILE" in done.stderr and "absent.jsonl" in done.stderr
    assert "GGUF" not in done.stderr and "Loading weights" not in done.stderr  # never got to loading


@pytest.mark.parametrize("script, args, message", [
    ("discover_heads.py", ["--traces", "missing.jsonl"], "'missing.jsonl' is neither 'organism' nor an existing file"),
    ("discover_heads.py", ["--traces", "organism:reference", "--n-traces", "8", "--max-tokens", "99999"],
     "--max-tokens 99999 exceeds the context"),
    ("ablate_steps.py", ["--kfh", "missing/kfh.json"], "KFH file missing/kfh.json does not exist"),
    ("causal_heads.py", ["--kfh", "missing/kfh.json"], "KFH file missing/kfh.json does not exist"),
    ("stability.py", ["--checkpoints", "no-such-model", "--traces", "t.jsonl"], "unknown model 'no-such-model'"),
    ("discover_heads.py", ["--model", "smollm2", "--traces", "organism"], "--traces organism needs an organism model"),
])
def test_user_mistakes_get_one_line_errors(tmp_path, script, args, message):
    (tmp_path / "t.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    done = subprocess.run(_script(script, *args, "--out", str(tmp_path / "out")), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{script}: error: ") and message in errors[0], done.stderr


def _trace_file(path: Path, records, correct: list[bool] | None = None) -> Path:
    rows = [{"id": r.trace_id, "prompt": r.prompt, "response": r.response,
             "is_correct": True if correct is None else correct[i]} for i, r in enumerate(records)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_traces_over_the_context_are_dropped_by_name(tiny_qwen2, tmp_path):
    """The tiny model's context is 512 tokens: a longer trace is dropped with a warning naming it and the
    flag, and the run goes on (it used to stop with 'exceed the model's context')."""
    records = reference_organism(tiny_qwen2.tokenizer, 8, seed=3)
    long = records[0]
    long.response = " ".join([long.response.split("</think>")[0]] * 20) + " </think>" + long.response.split("</think>")[1]
    path = _trace_file(tmp_path / "t.jsonl", records)
    assert tiny_qwen2.model.config.max_position_embeddings == 512
    with pytest.warns(UserWarning, match=rf"longer than 512 tokens: '{long.trace_id}' \(\d+\); --max-tokens N"):
        summary = discover_heads.main(["--model", "tiny", "--traces", str(path), "--labels", "organism",
                                       "--preset", "organism", "--n-boot", "20", "--out", str(tmp_path / "d")],
                                      loaded=tiny_qwen2)
    sel = load_kfh(tmp_path / "d" / "kfh.json")
    assert sel.settings["n_traces"] == 7 and sel.settings["max_tokens"] == 512
    assert long.trace_id not in summary["discovery_ids"] + summary["held_out_ids"]


@pytest.fixture(scope="module")
def tiny_dir(tiny_qwen2, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_qwen2.model.save_pretrained(path)
    tiny_qwen2.tokenizer.save_pretrained(path)
    return path


def test_dtype_and_correct_only(tiny_qwen2, tiny_dir, tmp_path):
    records = reference_organism(tiny_qwen2.tokenizer, 10, seed=4)
    correct = [i % 3 != 0 for i in range(10)]  # 6 of 10 marked correct
    path = _trace_file(tmp_path / "t.jsonl", records, correct)
    common = ["--model", str(tiny_dir), "--traces", str(path), "--labels", "organism", "--preset", "organism",
              "--n-boot", "20"]
    with pytest.warns(UserWarning, match="4 x not known to be correct"):
        discover_heads.main([*common, "--correct-only", "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")])
    sel = load_kfh(tmp_path / "bf16" / "kfh.json")
    assert sel.settings["dtype"] == "bfloat16" and sel.settings["correct_only"] and sel.settings["n_traces"] == 6
    ids = set(json.loads((tmp_path / "bf16" / "baselines.json").read_text())["discovery_ids"])
    assert ids <= {r.trace_id for r, ok in zip(records, correct) if ok}
    discover_heads.main([*common, "--out", str(tmp_path / "fp32")])
    fp32 = load_kfh(tmp_path / "fp32" / "kfh.json")
    assert fp32.settings["dtype"] == "float32" and fp32.settings["n_traces"] == 10
    assert fp32.fingerprint != sel.fingerprint  # bf16 weights are other weights: their kfh.json says so


def test_killed_discovery_resumes_from_its_cache(tmp_path):
    """SIGKILL a discovery midway; the rerun of the same command traces only the unfinished traces and
    writes the scores an uninterrupted run writes."""
    args = ["--model", "organism", "--traces", "organism:reference", "--n-traces", "300", "--batch-size", "1",
            "--n-boot", "20"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_script("discover_heads.py", *args, "--out", str(killed)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = killed / "cache"
    deadline = time.time() + 240
    try:
        while len(list(cache.glob("[!.]*.safetensors"))) < 30:
            assert proc.poll() is None and time.time() < deadline, "the run ended before 30 traces were cached"
            time.sleep(0.05)
    finally:  # whatever happened, the run does not outlive the test
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    n_cached = len(list(cache.glob("[!.]*.safetensors")))
    assert 30 <= n_cached < 300 and not (killed / "sra.csv").exists()

    rerun = subprocess.run(_script("discover_heads.py", *args, "--out", str(killed)), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reused = int(re.search(r"tracing: (\d+) of 300 traces reused from the cache", rerun.stderr).group(1))
    assert reused == n_cached  # and so only 300 - n_cached forward passes
    assert f"tracing {300 - n_cached} traces" in rerun.stderr

    whole = tmp_path / "whole"
    subprocess.run(_script("discover_heads.py", *args, "--no-cache", "--out", str(whole)), env=_env(), check=True,
                   capture_output=True, timeout=600)
    assert not (whole / "cache").exists()
    a, b = load_file(str(whole / "scores.safetensors")), load_file(str(killed / "scores.safetensors"))
    assert a.keys() == b.keys() and len(a) == 300
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "sra.csv").read_text() == (killed / "sra.csv").read_text()
