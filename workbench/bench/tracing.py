"""Tracing benchmark: ``python -m workbench.bench tracing [--json] [--quick]``.

Per model and sequence length, the seconds per trace (median of repeats) and peak memory of
scoring all heads of one synthetic trace (64 prompt tokens, 64-token steps, an answer of
min(256, T/8) tokens) with each method:

- ``sdpa_forward``: the decoder forward alone with the model's SDPA attention, no capture (the floor);
- ``native``, ``nnsight``, ``transformer_lens``: the tracing backends;
- ``eager_output_attentions``: eager attention with ``output_attentions`` (the reference backend).

The native method and the floor run the same decoder forward (no LM head).  Memory: every
(model, method) runs in its own subprocess; before each timed run the peak RSS (VmHWM) is reset
through /proc/self/clear_refs, and ``peak_mb`` = that peak minus the RSS with the model loaded
(after malloc_trim), so a method's own model copy counts.  Seconds exclude one-time setup
(copies, nnsight/TransformerLens wrapping), done in a warm-up run at 128 tokens.  An address-space
limit (free memory minus a margin) turns running out of memory into an error row instead of
the OOM killer; a method that errs, is slower than ``--cap-s`` at one length, or would run past its
worker's time budget (wall clock from the worker's launch, imports and loading included), is
skipped at longer ones.  SmolLM2 is de-quantised once into ~/.cache/kfh-workbench/bench/smollm2.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from workbench.heads import all_heads
from workbench.tracing import TraceItem
from workbench.tracing.backends import BACKENDS

METHODS = ("sdpa_forward", "native", "nnsight", "transformer_lens", "eager_output_attentions")
BACKEND_OF = {"native": "native", "nnsight": "nnsight", "transformer_lens": "transformer_lens",
              "eager_output_attentions": "eager"}
K16 = [1024, 2048, 4096, 8192, 16384]
# model -> (lengths, seconds each method's worker may take): about 15 minutes in all on 2 cores
PLANS = {"organism": (K16, 40), "smollm2": (K16, 90), "qwen2-1.5b-shape": ([1024, 2048], 50)}
QUICK = {"organism": ([256, 512], 120)}  # runs take milliseconds: the budget only guards a loaded machine
REPEATS, REPEAT_S = 3, 10.0  # median of up to 3 runs, fewer once a length has taken 10 s
GROWTH = 2.5  # expected ratio of one run's seconds at the next length to those at the last
SMOLLM2_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kfh-workbench" / "bench" / "smollm2"
MARK = "BENCH-ROW "
MARGIN_BYTES = 3 << 30  # memory left free for the rest of the machine


# ---------------------------------------------------------------- models and traces

def synthetic_item(vocab: int, length: int) -> TraceItem:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(3, vocab, (length,), generator=g).tolist()
    answer = (length - min(256, length // 8), length)
    steps = [(s, min(s + 64, answer[0] - 1)) for s in range(64, answer[0] - 1, 64)]
    return TraceItem(ids, steps, answer, f"synthetic-{length}")


def qwen2_15b_shape():
    """Random-init Qwen2 with DeepSeek-R1-Distill-Qwen-1.5B's shape, filled fast by tiling one random block."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.initialization import no_init_weights

    from workbench.models import LoadedModel
    from workbench.organism.tokenizer import build_tokenizer

    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
                      rope_theta=10000.0, tie_word_embeddings=False)
    with no_init_weights():
        model = Qwen2ForCausalLM(cfg).eval()
    block = torch.empty(2 << 20).uniform_(-0.035, 0.035, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            flat, step = p.view(-1), 1 << 20
            if name.endswith("norm.weight"):
                flat.fill_(1.0)
                continue
            for start in range(0, flat.numel(), step):
                n = min(step, flat.numel() - start)
                flat[start : start + n].copy_(block[i % step : i % step + n])
    return LoadedModel(model, build_tokenizer(), "qwen2-1.5b-shape", "random")


def build_model(name: str, max_len: int):
    """Load a benchmark model; RoPE models get their context limit raised to ``max_len``."""
    from workbench.models import load_model

    if name == "qwen2-1.5b-shape":
        return qwen2_15b_shape()
    loaded = load_model(SMOLLM2_CACHE if name == "smollm2" else name, device="cpu")
    cfg = loaded.model.config
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, max_len)  # no learned positions: same cost
    return loaded


def prepare(name: str) -> None:
    """One-time work in the parent: SmolLM2's GGUF is de-quantised to safetensors (reload 0.4 s, not 15 s)."""
    if name == "smollm2" and not (SMOLLM2_CACHE / "config.json").is_file():
        from workbench.checkpoints import save_hf_atomic
        from workbench.models import load_model

        loaded = load_model("smollm2", device="cpu")
        save_hf_atomic(loaded.model, loaded.tokenizer, SMOLLM2_CACHE)


# ---------------------------------------------------------------- worker (one model, one method)

def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def settle() -> int:
    """Give freed memory back to the OS, reset the peak, and return the RSS in bytes."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS") << 10


def limit_memory() -> None:
    available = int(next(l for l in Path("/proc/meminfo").read_text().splitlines()
                         if l.startswith("MemAvailable")).split()[1]) << 10
    limit = (status_kb("VmSize") << 10) + max(available - MARGIN_BYTES, 0)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _runner(loaded, method: str):
    """A function that scores one item with ``method`` (setup happens on its first call)."""
    model = loaded.model
    if method == "sdpa_forward":
        def run(item: TraceItem) -> None:
            with torch.no_grad():
                model.base_model(input_ids=torch.tensor([item.input_ids]), use_cache=False)
        return run
    queue: list[list[TraceItem]] = []
    scores = BACKENDS[BACKEND_OF[method]](model, loaded.tokenizer, (queue.pop() for _ in itertools.count()),
                                          all_heads(model.config))
    def run(item: TraceItem) -> None:
        queue.append([item])
        next(scores)
    return run


def repeats_s(run_s: float) -> float:
    """Seconds one length takes, all its repeats, when a single run takes ``run_s``."""
    return run_s * min(REPEATS, max(1, math.ceil(REPEAT_S / run_s))) if run_s > 0 else 0.0


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    limit_memory()
    emit = lambda row: print(MARK + json.dumps({"model": spec["model"], "method": spec["method"], **row}), flush=True)
    lengths = spec["lengths"]
    loaded = build_model(spec["model"], max(lengths))
    base = settle()
    run = _runner(loaded, spec["method"])
    run(synthetic_item(loaded.model.config.vocab_size, 128))
    last, skip = 0.0, None
    for length in lengths:
        if skip is None and time.time() - spec["launched"] + repeats_s(GROWTH * last) > spec["budget_s"]:
            skip = "time budget"
        if skip is not None:
            emit({"seq_len": length, "skipped": skip})
            continue
        item = synthetic_item(loaded.model.config.vocab_size, length)
        times, peak = [], 0
        try:
            while len(times) < REPEATS and sum(times) < REPEAT_S:
                settle()
                t0 = time.perf_counter()
                run(item)
                times.append(time.perf_counter() - t0)
                peak = max(peak, (status_kb("VmHWM") << 10) - base)
        except (RuntimeError, MemoryError) as e:  # allocation failures under the address-space limit
            emit({"seq_len": length, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            skip = f"failed at {length}"
            continue
        last = statistics.median(times)
        emit({"seq_len": length, "seconds": round(last, 4), "peak_mb": round(peak / 2**20, 1), "repeats": len(times)})
        if last > spec["cap_s"]:
            skip = f"slower than {spec['cap_s']:.0f} s at {length}"


# ---------------------------------------------------------------- parent

def failed_rows(model: str, method: str, lengths: list[int], error: str) -> list[dict]:
    """An error row at the first of ``lengths``, and the others skipped because of it."""
    return [{"model": model, "method": method, "seq_len": lengths[0], "error": error}] + [
        {"model": model, "method": method, "seq_len": n, "skipped": f"failed at {lengths[0]}"} for n in lengths[1:]]


def run_worker(spec: dict, timeout: float) -> list[dict]:
    """Run one worker subprocess; a crash, kill or timeout becomes an error row for the length it was on."""
    cmd = [sys.executable, "-m", "workbench.bench", "tracing", "--worker", json.dumps({**spec, "launched": time.time()})]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        problem = None if proc.returncode == 0 else f"worker exited with code {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=60)  # a killed worker's pipes close at once
        problem = f"timed out after {timeout:.0f} s"
    rows = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
    done = {r["seq_len"] for r in rows}
    missing = [n for n in spec["lengths"] if n not in done]
    if problem and missing:
        tail = err.strip().splitlines()[-1:] or [""]
        rows += failed_rows(spec["model"], spec["method"], missing, f"{problem}: {tail[0][:300]}")
    return rows


def run_all(plans: dict, methods: list[str], cap_s: float, threads: int) -> list[dict]:
    start, rows = time.monotonic(), []
    for model, (lengths, budget_s) in plans.items():
        try:
            prepare(model)
        except Exception as e:  # a model that cannot be had here is a row, not a crash
            rows += [row for m in methods for row in failed_rows(model, m, lengths, f"{type(e).__name__}: {e}")]
            continue
        for method in methods:
            spec = {"model": model, "method": method, "lengths": lengths, "cap_s": cap_s, "budget_s": budget_s,
                    "threads": threads}
            rows += run_worker(spec, timeout=budget_s + 120)  # the worker keeps to its budget; this is a backstop
            print(f"[bench] {model} {method}: {time.monotonic() - start:.0f} s elapsed", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per (model, seq_len), one column per method: seconds and peak MB, or why not."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    cells: dict[tuple, dict] = {}
    for r in rows:
        if "seconds" in r:
            text = f"{r['seconds']:.3g} s, {r['peak_mb']:.0f} MB"
        else:
            text = "OOM" if "memory" in r.get("error", "") else (r.get("error") or r.get("skipped", ""))[:40]
        cells.setdefault((r["model"], r["seq_len"]), {})[r["method"]] = text
    lines = ["| model | seq_len | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for (model, n), c in cells.items():
        lines.append(f"| {model} | {n} | " + " | ".join(c.get(m, "") for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m workbench.bench tracing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the rows as JSON (default: a markdown table)")
    p.add_argument("--quick", action="store_true", help="organism only, 256 and 512 tokens")
    p.add_argument("--models", nargs="+", choices=sorted(PLANS), help="subset of models")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--lengths", nargs="+", type=int, help="override every model's sequence lengths")
    p.add_argument("--budget-s", type=float, help="override the time budget of every (model, method) worker, in seconds")
    p.add_argument("--cap-s", type=float, default=40.0, help="skip longer lengths after a run this slow")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    plans = QUICK if args.quick else {m: PLANS[m] for m in (args.models or PLANS)}
    plans = {m: (sorted(args.lengths or lengths), args.budget_s or budget) for m, (lengths, budget) in plans.items()}
    rows = run_all(plans, args.methods, args.cap_s, args.threads)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
