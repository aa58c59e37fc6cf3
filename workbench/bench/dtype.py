"""What ``--dtype`` costs: ``python -m workbench.bench dtype --model M --traces FILE [--json]``.

Loads the model once per dtype and scores every head of the same teacher-forced traces (token
ids read, or sampled in float32, once).  Per
dtype: the weights' memory (exact: parameters x bytes), tracing seconds (median of ``--repeats``
after one warm-up trace) and tokens/s, and against float32 the largest step-score difference,
the Spearman correlation of the step scores, and -- when the traces carry labels the default
labels source can read (organism, or the R1 traces' chunks) -- the largest change in a head's SRA
and how many of float32's top-3 heads stay in the top 3.  Speed ratios are within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from analyses.labels import default_labels, get_labels, label_codes
from analyses.sra import sra, top_heads
from workbench.models import DTYPES, LoadedModel, load_model
from workbench.traces import TraceRecord, load_traces
from workbench.tracing import trace_step_scores


def measure(loaded: LoadedModel, records: list[TraceRecord], repeats: int) -> dict:
    items = [r.item() for r in records]
    trace_step_scores(loaded, items[:1], batch_size=1)  # warm-up
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = trace_step_scores(loaded, items, batch_size=1)
        seconds.append(time.perf_counter() - t0)
    spec_labels = default_labels(loaded, records)
    codes = None if spec_labels == "counterfactual" else [label_codes(x) for x in get_labels(spec_labels, records,
                                                                                             loaded, progress=False)]
    tokens = sum(len(it.input_ids) for it in items)
    return {"dtype": str(loaded.dtype).removeprefix("torch."), "weights_mb": sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20,
            "seconds": statistics.median(seconds), "tokens": tokens,
            "tokens_per_s": tokens / statistics.median(seconds), "scores": [s.numpy() for s in scores], "codes": codes}


def compare(base: dict, row: dict) -> dict:
    """Score and SRA agreement of ``row`` with the float32 ``base``."""
    flat_b = np.concatenate([s.ravel() for s in base["scores"]])
    flat_r = np.concatenate([s.ravel() for s in row["scores"]])
    out = {"max_abs_score_diff": float(np.abs(flat_b - flat_r).max()),
           "score_spearman": float(spearmanr(flat_b, flat_r).statistic),
           "speed_vs_float32": row["tokens_per_s"] / base["tokens_per_s"],
           "memory_vs_float32": row["weights_mb"] / base["weights_mb"]}
    if base["codes"] is not None:
        sra_b = sra(base["scores"], base["codes"], n_boot=0).sra
        sra_r = sra(row["scores"], row["codes"], n_boot=0).sra
        out["max_abs_sra_diff"] = float(np.nanmax(np.abs(sra_b - sra_r)))
        out["top3_heads_kept"] = len(set(top_heads(sra_b, 3)) & set(top_heads(sra_r, 3)))
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m workbench.bench dtype", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="organism")
    p.add_argument("--traces", default=None, help="trace file (default: organism traces sampled by the model)")
    p.add_argument("--n-traces", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs, records = [], None
    for dtype in dict.fromkeys(["float32", *args.dtypes]):
        loaded = load_model(args.model, device="cpu", dtype=dtype)
        if records is None:  # the same token ids for every dtype (organism traces are sampled in float32)
            records = load_traces(args.traces or "organism", loaded, args.n_traces, max_tokens=args.max_tokens,
                                  progress=False)
        runs.append(measure(loaded, records, args.repeats))
        del loaded
    rows = [{k: v for k, v in r.items() if k not in ("scores", "codes")} | compare(runs[0], r) for r in runs]
    result = {"model": args.model, "traces": args.traces or "organism", "threads": args.threads, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for r in rows:
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
