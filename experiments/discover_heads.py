"""Find Key-Focus Heads: score every head on a labelled trace set, rank by SRA, write kfh.json.

    python experiments/discover_heads.py --model organism --n-traces 200 --out runs/kfh
    python experiments/discover_heads.py --model smollm2 --out runs/kfh-smollm2
    python experiments/discover_heads.py --model path/to/model --traces my-traces.jsonl --labels file:labels.jsonl \\
        --dtype bfloat16 --correct-only --out runs/kfh-mine
    python experiments/discover_heads.py --model smollm2 --labels none --rank-by receiver --out runs/kfh-free

For a model that is not an organism, --traces defaults to the bundled real R1 traces (labelled by
their Thought Anchors chunk tags); traces longer than the model's context are dropped with a
warning that names them (--max-tokens lowers the limit).  KFHs are the top-N heads by SRA on a
discovery split; their SRA (with a bootstrap CI) on the held-out rest is set against trivial
rankers, and the verdict says whether any KFH beats them beyond the CI (printed, and kept in
baselines.json).  Finished traces are cached in OUT/cache, so rerunning a killed command resumes.
Writes: sra.csv, kfh.json, traces.jsonl, labels.jsonl, scores.safetensors, baselines.json,
figures/sra_heatmap.*, figures/sra_by_layer.*.

``--labels none``: no labels, so no SRA; the heads are ranked over all traces by a label-free
ranker (``--rank-by``, analyses/label_free.py).  Writes kfh.json (the ranker recorded, SRA null),
label_free.csv, traces.jsonl, scores.safetensors, figures/label_free_heatmap.*.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
from safetensors.torch import save_file

from analyses.figures import save_figure
from analyses.label_free import PROXIMITY, RANKERS, as_tensors, gather_evidence, label_free_heads
from analyses.labels import default_labels, get_labels, label_codes, write_labels
from analyses.sra import by_layer_figure, discover, has_pairs, heatmap_figure, json_float, rank_grid, sra_table
from analyses.verdict import verdict
from workbench.cache import add_cache_arguments, cache_dir
from workbench.cli import run_command
from workbench.heads import head_name, model_shape
from workbench.kfh import KFHSelection, save_kfh
from workbench.models import LoadedModel, add_model_arguments, model_from_args
from workbench.provenance import stamp
from workbench.traces import (add_trace_arguments, check_trace_arguments, default_preset, traces_from_args,
                             write_traces)
from workbench.tracing import ScoreCache, trace_step_scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path)
    add_trace_arguments(p, n_traces=200)
    p.add_argument("--correct-only", action="store_true",
                   help="keep only traces known to be correct (a trace file's is_correct, or the verifier)")
    p.add_argument("--labels", default=None,
                   help="organism | file:PATH | counterfactual[:top=F|:threshold=NATS] | chunks | none "
                        "(default: organism for the organism, chunks when every trace has Thought Anchors "
                        "chunks, as the bundled R1 traces do, else counterfactual; none: rank without labels)")
    p.add_argument("--rank-by", choices=RANKERS, default="receiver",
                   help="with --labels none: the label-free ranker (receiver: one forward per trace; "
                        "counterfactual: K + 1 forwards per trace)")
    p.add_argument("--proximity", type=int, default=PROXIMITY, help="receiver: nearest later segments left out")
    p.add_argument("--top-n", type=int, default=3)
    p.add_argument("--discovery-frac", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CI")
    p.add_argument("--backend", default="native", help="tracing backend: native | nnsight | transformer_lens")
    p.add_argument("--batch-size", type=int, default=8, help="traces per tracing batch (at most 8192 padded tokens)")
    add_cache_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, loaded: LoadedModel | None = None) -> dict:
    """Run the study; ``loaded`` (optional) is the model ``--model`` names, already loaded."""
    args = parse_args(argv)
    check_trace_arguments(args, args.model)
    loaded = loaded or model_from_args(args)
    records = traces_from_args(args, loaded, correct_only=args.correct_only)
    labels_spec = args.labels or default_labels(loaded, records)
    folder = cache_dir(args)
    cache = ScoreCache(folder) if folder else None
    if labels_spec == "none":
        return label_free(args, loaded, records, cache)
    labels = get_labels(labels_spec, records, loaded, cache=cache)
    codes = [label_codes(x) for x in labels]
    unpaired = [r.trace_id for r, c in zip(records, codes) if not has_pairs(c)]
    if unpaired:
        warnings.warn(f"{len(unpaired)} of {len(records)} traces have no critical + redundant pair of steps "
                      f"under --labels {labels_spec} and count in no SRA: {', '.join(map(repr, unpaired[:5]))}"
                      + (f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""), stacklevel=2)
    scores = trace_step_scores(loaded, [r.item() for r in records], backend=args.backend,
                               batch_size=args.batch_size, cache=cache, progress=True)
    arrays = [s.numpy() for s in scores]
    result = discover(arrays, codes, [r.step_lengths for r in records], top_n=args.top_n,
                      discovery_frac=args.discovery_frac, seed=args.seed, n_boot=args.n_boot)
    judged = verdict(result, n_boot=args.n_boot, seed=args.seed)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(sra_table(result))
    table.to_csv(out / "sra.csv", index=False)
    n_layers, n_heads, _ = model_shape(loaded.model.config)
    settings = {"n_traces": len(records), "traces": args.traces, "preset": args.preset or default_preset(loaded),
                "labels": labels_spec, "top_n": args.top_n, "discovery_frac": args.discovery_frac,
                "seed": args.seed, "n_discovery": result.discovery.n_traces, "n_held_out": result.held_out.n_traces,
                "temperature": args.temperature, "backend": args.backend, "max_tokens": args.max_tokens,
                "correct_only": args.correct_only, "dtype": str(loaded.dtype).removeprefix("torch."),
                "sra_discovery": [float(result.discovery.sra[h]) for h in result.heads],
                "created": stamp(loaded)["created"]}
    sel = KFHSelection(loaded.name, loaded.fingerprint, n_layers, n_heads, result.heads,
                       [float(result.held_out.sra[h]) for h in result.heads], settings)  # held-out SRA
    save_kfh(out / "kfh.json", sel)
    write_traces(out / "traces.jsonl", records, labels)
    write_labels(out / "labels.jsonl", records, labels)
    save_file({r.trace_id: s.contiguous() for r, s in zip(records, scores)}, str(out / "scores.safetensors"),
              metadata={"model": loaded.name, "fingerprint": loaded.fingerprint, "shape": "[layers, heads, steps]"})
    best = table.sort_values("sra", ascending=False).iloc[0]
    summary = {"held_out": {"n_traces": result.held_out.n_traces,
                            "best_head": {"name": best["name"], "sra": json_float(best["sra"]),
                                          "ci_low": json_float(best["ci_low"]), "ci_high": json_float(best["ci_high"]),
                                          "sra_redundant_first": json_float(best["sra_redundant_first"])},
                            "kfh": {h: json_float(table.loc[table.name == h, "sra"].iloc[0]) for h in sel.names},
                            "n_traces_redundant_first": result.held_out_redundant_first.n_traces},
               "baselines": result.baselines, "verdict": judged, "traces_without_pairs": unpaired,
               "discovery_ids": [records[i].trace_id for i in result.discovery_ids],
               "held_out_ids": [records[i].trace_id for i in result.held_out_ids]}
    (out / "baselines.json").write_text(json.dumps(summary, indent=2) + "\n")
    held = result.held_out
    heatmap = heatmap_figure(held.sra, marked=result.heads, ci=(held.ci_low, held.ci_high),
                             rank=rank_grid(result.discovery.sra), rank_label="by discovery SRA",
                             marked_label="KFH (top on the discovery split)")
    save_figure(heatmap, out / "figures", "sra_heatmap")
    save_figure(by_layer_figure(result.held_out.sra, result.baselines), out / "figures", "sra_by_layer")
    report(summary, result.discovery.n_traces)
    return summary


def label_free(args: argparse.Namespace, loaded: LoadedModel, records: list, cache: ScoreCache | None) -> dict:
    """``--labels none``: rank heads with ``--rank-by`` over all traces, write kfh.json without SRA."""
    evidence = gather_evidence(loaded, records, [args.rank_by], cache=cache, batch_size=args.batch_size)
    heads, scores = label_free_heads(evidence, args.rank_by, args.top_n, args.proximity)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    n_layers, n_heads, _ = model_shape(loaded.model.config)
    settings = {"n_traces": len(records), "traces": args.traces, "preset": args.preset or default_preset(loaded),
                "labels": "none", "method": args.rank_by, "proximity": args.proximity, "top_n": args.top_n,
                "score": [float(scores[h]) for h in heads], "temperature": args.temperature,
                "max_tokens": args.max_tokens, "correct_only": args.correct_only,
                "dtype": str(loaded.dtype).removeprefix("torch."), "created": stamp(loaded)["created"],
                "note": "ranked without labels: no SRA was measured"}
    sel = KFHSelection(loaded.name, loaded.fingerprint, n_layers, n_heads, heads, [float("nan")] * len(heads),
                       settings)
    save_kfh(out / "kfh.json", sel)
    write_traces(out / "traces.jsonl", records)
    save_file({r.trace_id: t for r, t in zip(records, as_tensors(evidence.step_scores))},
              str(out / "scores.safetensors"),
              metadata={"model": loaded.name, "fingerprint": loaded.fingerprint, "shape": "[layers, heads, steps]"})
    table = pd.DataFrame([{"layer": l, "head": h, "name": head_name((l, h)), args.rank_by: scores[l, h]}
                          for l in range(n_layers) for h in range(n_heads)])
    table.to_csv(out / "label_free.csv", index=False)
    save_figure(heatmap_figure(scores, f"label-free {args.rank_by} score per head, {len(records)} traces", heads,
                               value_label=args.rank_by, chance=None), out / "figures", "label_free_heatmap")
    print(f"\nKFHs by the label-free {args.rank_by} ranker over {len(records)} traces: {', '.join(sel.names)}")
    print(table.sort_values(args.rank_by, ascending=False).head(max(5, len(heads))).to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    print("No SRA without labels: these heads are ranked, not validated. Check them with "
          "experiments/ablate_steps.py --measure logprob, or give labels (--labels file:PATH | counterfactual).")
    return {"kfh": sel.names, "method": args.rank_by, "scores": {head_name(h): float(scores[h]) for h in heads}}



def report(summary: dict, n_discovery: int) -> None:
    """The chosen KFHs with their held-out SRA and CI next to the trivial rankers, then the verdict."""
    v, held = summary["verdict"], summary["held_out"]
    print(f"\nKFHs (top {len(v['kfh'])} by SRA on {n_discovery} discovery traces), SRA on {v['n_held_out']} held-out "
          f"traces ({held['n_traces_redundant_first']} with a redundant step before a critical one):")
    print(f"  {'head':<16} {'sra':>6} {'95% CI':>15} {'discovery':>9}")
    for k in v["kfh"]:
        print(f"  {k['name']:<16} {_f(k['sra']):>6} {_ci(k):>15} {_f(k['sra_discovery']):>9}")
    for name, b in summary["baselines"].items():
        print(f"  {f'[{name} ranker]':<16} {_f(b['sra']):>6} {_ci(b):>15} {'-':>9}")
    best = held["best_head"]
    print(f"  (best head on the held-out split itself, chosen after the fact: {best['name']} {_f(best['sra'])})")
    for line in v["lines"]:
        print(line)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ci(row: dict) -> str:
    return f"[{_f(row['ci_low'])}, {_f(row['ci_high'])}]"


if __name__ == "__main__":
    raise SystemExit(run_command(main))
