"""Log-prob pass benchmark: ``python -m workbench.bench logprob [--json] [--quick]``.

Peak extra memory and seconds of the trainer's no-grad log-prob pass (the old-log-prob pass of
every step) on one row of T tokens (64 prompt tokens, the rest response), two ways:

- ``full``: the pass before issue 14, kept here as the baseline -- the model's full ``[W, V]``
  logits, the response rows gathered into ``[T, V]``, an fp32 ``log_softmax`` over them;
- ``lean``: ``workbench.training.logprobs.response_logprobs`` -- the decoder's hidden states, the LM
  head on the response positions only, a chunked selective log-softmax.

Default model: ``qwen2-1.5b-shape`` from the tracing bench (random weights in the shape of
DeepSeek-R1-Distill-Qwen-1.5B, 152k vocabulary), fp32 on the CPU, at 2048 and 4096 tokens.  Memory
as in the tracing bench: the peak RSS (VmHWM, reset before each run) minus the RSS with the model
loaded.  The two methods alternate in one process, ``--repeats`` runs each per length (median
seconds, largest peak).  Target: at 4096 tokens ``peak_mb <= 0.3 * peak_mb_full`` and
``seconds <= seconds_full``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from workbench.bench.tracing import build_model, limit_memory, settle, status_kb
from workbench.training.batch import Packed, autocast, pack
from workbench.training.logprobs import response_logprobs

PROMPT_TOKENS = 64
PLAN = ("qwen2-1.5b-shape", [2048, 4096])
QUICK = ("organism", [256, 512])


def full_vocab_logprobs(model, batch: Packed) -> torch.Tensor:
    """The trainer's log-prob pass before issue 14 (untempered): full logits, ``[T, V]`` gather, fp32 log-softmax."""
    with autocast(batch.input_ids.device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    picked = logits.gather(1, batch.positions[..., None].expand(-1, -1, logits.shape[-1]))
    return torch.log_softmax(picked.float(), -1).gather(-1, batch.targets[..., None]).squeeze(-1)


def synthetic_row(vocab: int, length: int) -> Packed:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(3, vocab, (length,), generator=g).tolist()
    return pack([ids[:PROMPT_TOKENS]], [ids[PROMPT_TOKENS:]], pad_id=0)


METHODS = {"full": full_vocab_logprobs, "lean": response_logprobs}


def measure(fn, model, batch: Packed, base: int) -> tuple[float, float, torch.Tensor]:
    """Seconds, peak extra MB and the result of one no-grad run of ``fn``."""
    settle()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn(model, batch)
    seconds = time.perf_counter() - t0
    peak = ((status_kb("VmHWM") << 10) - base) / 2**20
    return seconds, peak, out


def run(model_name: str, lengths: list[int], repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    limit_memory()
    loaded = build_model(model_name, max(lengths))
    model = loaded.model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    for fn in METHODS.values():  # warm-up: one-time allocations and kernels
        with torch.no_grad():
            fn(model, synthetic_row(vocab, 128))
    base = settle()
    rows = []
    for length in lengths:
        batch = synthetic_row(vocab, length)
        seconds: dict[str, list[float]] = {m: [] for m in METHODS}
        peaks: dict[str, float] = dict.fromkeys(METHODS, 0.0)
        outs: dict[str, torch.Tensor] = {}
        for r in range(repeats):
            for name in (METHODS if r % 2 == 0 else reversed(list(METHODS))):  # alternate the order
                s, peak, outs[name] = measure(METHODS[name], model, batch, base)
                seconds[name].append(s)
                peaks[name] = max(peaks[name], peak)
        row = {"seq_len": length, "response_tokens": length - PROMPT_TOKENS,
               "peak_mb_full": round(peaks["full"], 1), "peak_mb": round(peaks["lean"], 1),
               "seconds_full": round(statistics.median(seconds["full"]), 3),
               "seconds": round(statistics.median(seconds["lean"]), 3),
               "max_abs_diff": float((outs["full"] - outs["lean"]).abs().max())}
        row["peak_ratio"] = round(row["peak_mb"] / row["peak_mb_full"], 3) if row["peak_mb_full"] > 0 else None
        row["seconds_ratio"] = round(row["seconds"] / row["seconds_full"], 3)
        rows.append(row)
        print(f"[bench] {model_name} {length}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return {"model": model_name, "vocab_size": vocab, "device": "cpu", "threads": threads, "repeats": repeats,
            "dtype": str(next(model.parameters()).dtype), "rows": rows,
            "target": "peak_mb <= 0.3 * peak_mb_full and seconds <= seconds_full at 4096 tokens"}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m workbench.bench logprob", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    p.add_argument("--quick", action="store_true", help="the organism at 256 and 512 tokens (a smoke test)")
    p.add_argument("--lengths", nargs="+", type=int, help="override the sequence lengths")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    model_name, lengths = QUICK if args.quick else PLAN
    result = run(model_name, sorted(args.lengths or lengths), args.repeats, args.threads)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']} (vocabulary {result['vocab_size']}, {result['dtype']}, {result['threads']} threads)")
    print("| seq_len | peak MB full | peak MB lean | ratio | s full | s lean | ratio | max |diff| |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['seq_len']} | {r['peak_mb_full']:.0f} | {r['peak_mb']:.0f} | {r['peak_ratio']} | "
              f"{r['seconds_full']:.2f} | {r['seconds']:.2f} | {r['seconds_ratio']} | {r['max_abs_diff']:.2e} |")
