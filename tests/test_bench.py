"""Smoke test of ``python -m workbench.bench tracing --json``: rows come out, failures become rows."""

from __future__ import annotations

import json
import subprocess
import sys

from workbench.bench.__main__ import subcommands
from workbench.bench.tracing import markdown, run_worker, synthetic_item
from workbench.tracing.items import check_item


def test_dispatcher_finds_the_tracing_subcommand():
    assert "tracing" in subcommands()
    done = subprocess.run([sys.executable, "-m", "workbench.bench", "no-such-bench"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "tracing" in done.stderr


def test_synthetic_traces_are_valid():
    for length in (128, 1024, 16384):
        item = synthetic_item(100, length)
        check_item(item, None)
        assert len(item.input_ids) == length and item.answer[1] == length


def test_quick_json_has_a_row_per_method_and_length():
    cmd = [sys.executable, "-m", "workbench.bench", "tracing", "--quick", "--json", "--threads", "1",
           "--methods", "sdpa_forward", "native"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert sorted((r["method"], r["seq_len"]) for r in rows) == [
        ("native", 256), ("native", 512), ("sdpa_forward", 256), ("sdpa_forward", 512)]
    for r in rows:
        assert r["model"] == "organism" and "error" not in r, r
        assert r["seconds"] > 0 and r["peak_mb"] > 0 and 1 <= r["repeats"] <= 3
    table = markdown(rows)
    assert table.splitlines()[0] == "| model | seq_len | sdpa_forward | native |" and "| organism | 512 |" in table


def test_a_failing_worker_becomes_error_rows():
    spec = {"model": "no-such-model", "method": "native", "lengths": [256, 512], "cap_s": 5,
            "budget_s": 120, "threads": 1}
    rows = run_worker(spec, timeout=300)
    assert rows[0]["seq_len"] == 256 and "no-such-model" in rows[0]["error"]
    assert rows[1]["seq_len"] == 512 and rows[1]["skipped"] == "failed at 256"


def test_logprob_quick_json_compares_the_two_passes():
    assert "logprob" in subcommands()
    cmd = [sys.executable, "-m", "workbench.bench", "logprob", "--quick", "--json", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["model"] == "organism" and [r["seq_len"] for r in result["rows"]] == [256, 512]
    for r in result["rows"]:
        assert r["peak_mb_full"] > 0 and r["peak_mb"] > 0 and r["seconds_full"] > 0 and r["seconds"] > 0
        assert r["max_abs_diff"] < 1e-5  # the lean pass gives the same log-probs


def test_dtype_bench_compares_each_dtype_with_float32():
    cmd = [sys.executable, "-m", "workbench.bench", "dtype", "--model", "organism", "--n-traces", "4", "--repeats", "1",
           "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["dtype"]: r for r in json.loads(done.stdout)["rows"]}
    assert sorted(rows) == ["bfloat16", "float32"]
    assert rows["bfloat16"]["memory_vs_float32"] == 0.5 and rows["bfloat16"]["tokens"] == rows["float32"]["tokens"]
    assert 0 < rows["bfloat16"]["max_abs_score_diff"] < 0.1 and rows["bfloat16"]["score_spearman"] > 0.9
