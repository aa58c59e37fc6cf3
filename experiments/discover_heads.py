"""Find Key-Focus Heads: score every head on a labelled trace set, rank by SRA, write kfh.json.

    python experiments/discover_heads.py --model organism --n-traces 200 --out runs/discover
    python experiments/discover_heads.py --model smollm2 --traces ../shared/data/r1-traces/x.jsonl \\
        --labels chunks --n-traces 6 --out runs/discover-smollm2
    python experiments/discover_heads.py --model M --traces T.jsonl --labels none --rank-by receiver --out DIR

KFHs are the top-N heads by SRA on a discovery split; the SRA (with a bootstrap CI) that
``sra.csv`` reports is measured on the held-out rest, next to trivial rankers (``baselines.json``).
Writes: sra.csv, kfh.json, traces.jsonl, labels.jsonl, scores.safetensors, baselines.json,
figures/sra_heatmap.*, figures/sra_by_layer.*.

``--labels none``: no labels, so no SRA; the heads are ranked over all traces by a label-free
ranker (``--rank-by``, analyses/label_free.py).  Writes kfh.json (the ranker recorded, SRA null),
label_free.csv, traces.jsonl, scores.safetensors, figures/label_free_heatmap.*.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import save_file

from analyses.figures import save_figure
from analyses.label_free import PROXIMITY, RANKERS, as_tensors, gather_evidence, label_free_heads
from analyses.labels import get_labels, label_codes, write_labels
from analyses.sra import by_layer_figure, discover, heatmap_figure, sra_table
from workbench.heads import head_name, model_shape
from workbench.kfh import KFHSelection, save_kfh
from workbench.models import LoadedModel, load_model
from workbench.traces import add_trace_arguments, default_preset, is_organism, traces_from_args, write_traces
from workbench.tracing import ScoreCache, trace_step_scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="organism", help="organism | smollm2 | HF folder | .gguf | hub id")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, type=Path)
    add_trace_arguments(p, n_traces=200)
    p.add_argument("--labels", default=None,
                   help="organism | file:PATH | counterfactual[:top=F|:threshold=NATS] | chunks | none "
                        "(default: organism for the organism, else counterfactual; none: rank without labels)")
    p.add_argument("--rank-by", choices=RANKERS, default="receiver",
                   help="with --labels none: the label-free ranker (receiver: one forward per trace; "
                        "counterfactual: K + 1 forwards per trace)")
    p.add_argument("--proximity", type=int, default=PROXIMITY, help="receiver: nearest later segments left out")
    p.add_argument("--top-n", type=int, default=3)
    p.add_argument("--discovery-frac", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CI")
    p.add_argument("--backend", default="native", help="tracing backend: native | nnsight | transformer_lens")
    p.add_argument("--batch-size", type=int, default=8, help="tracing batch size")
    p.add_argument("--cache", type=Path, default=None, help="score cache folder (content-hashed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, loaded: LoadedModel | None = None) -> dict:
    """Run the study; ``loaded`` (optional) is the model ``--model`` names, already loaded."""
    args = parse_args(argv)
    loaded = loaded or load_model(args.model, device=args.device)
    labels_spec = args.labels or ("organism" if is_organism(loaded) else "counterfactual")
    records = traces_from_args(args, loaded)
    if labels_spec == "none":
        return label_free(args, loaded, records)
    labels = get_labels(labels_spec, records, loaded)
    codes = [label_codes(x) for x in labels]
    scores = trace_step_scores(loaded, [r.item() for r in records], backend=args.backend,
                               batch_size=args.batch_size, cache=args.cache and ScoreCache(args.cache),
                               progress=True)
    arrays = [s.numpy() for s in scores]
    result = discover(arrays, codes, [r.step_lengths for r in records], top_n=args.top_n,
                      discovery_frac=args.discovery_frac, seed=args.seed, n_boot=args.n_boot)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(sra_table(result))
    table.to_csv(out / "sra.csv", index=False)
    n_layers, n_heads, _ = model_shape(loaded.model.config)
    settings = {"n_traces": len(records), "traces": args.traces, "preset": args.preset or default_preset(loaded),
                "labels": labels_spec, "top_n": args.top_n, "discovery_frac": args.discovery_frac,
                "seed": args.seed, "n_discovery": result.discovery.n_traces, "n_held_out": result.held_out.n_traces,
                "temperature": args.temperature, "backend": args.backend,
                "sra_discovery": [float(result.discovery.sra[h]) for h in result.heads]}
    sel = KFHSelection(loaded.name, loaded.fingerprint, n_layers, n_heads, result.heads,
                       [float(result.held_out.sra[h]) for h in result.heads], settings)  # held-out SRA
    save_kfh(out / "kfh.json", sel)
    write_traces(out / "traces.jsonl", records, labels)
    write_labels(out / "labels.jsonl", records, labels)
    save_file({r.trace_id: s.contiguous() for r, s in zip(records, scores)}, str(out / "scores.safetensors"),
              metadata={"model": loaded.name, "fingerprint": loaded.fingerprint, "shape": "[layers, heads, steps]"})
    best = table.sort_values("sra", ascending=False).iloc[0]
    summary = {"held_out": {"n_traces": result.held_out.n_traces,
                            "best_head": {"name": best["name"], "sra": _num(best["sra"]),
                                          "ci_low": _num(best["ci_low"]), "ci_high": _num(best["ci_high"]),
                                          "sra_redundant_first": _num(best["sra_redundant_first"])},
                            "kfh": {h: _num(table.loc[table.name == h, "sra"].iloc[0]) for h in sel.names},
                            "n_traces_redundant_first": result.held_out_redundant_first.n_traces},
               "baselines": result.baselines, "discovery_ids": [records[i].trace_id for i in result.discovery_ids],
               "held_out_ids": [records[i].trace_id for i in result.held_out_ids]}
    (out / "baselines.json").write_text(json.dumps(summary, indent=2) + "\n")
    save_figure(heatmap_figure(result.held_out.sra, marked=result.heads), out / "figures", "sra_heatmap")
    save_figure(by_layer_figure(result.held_out.sra, result.baselines), out / "figures", "sra_by_layer")
    _report(table, sel, result, summary)
    return summary


def label_free(args: argparse.Namespace, loaded: LoadedModel, records: list) -> dict:
    """``--labels none``: rank heads with ``--rank-by`` over all traces, write kfh.json without SRA."""
    evidence = gather_evidence(loaded, records, [args.rank_by], cache=args.cache and ScoreCache(args.cache),
                               batch_size=args.batch_size)
    heads, scores = label_free_heads(evidence, args.rank_by, args.top_n, args.proximity)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    n_layers, n_heads, _ = model_shape(loaded.model.config)
    settings = {"n_traces": len(records), "traces": args.traces, "preset": args.preset or default_preset(loaded),
                "labels": "none", "method": args.rank_by, "proximity": args.proximity, "top_n": args.top_n,
                "score": [float(scores[h]) for h in heads], "temperature": args.temperature,
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
                               label=args.rank_by), out / "figures", "label_free_heatmap")
    print(f"\nKFHs by the label-free {args.rank_by} ranker over {len(records)} traces: {', '.join(sel.names)}")
    print(table.sort_values(args.rank_by, ascending=False).head(max(5, len(heads))).to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    print("No SRA without labels: these heads are ranked, not validated. Check them with "
          "experiments/ablate_steps.py --measure logprob, or give labels (--labels file:PATH | counterfactual).")
    return {"kfh": sel.names, "method": args.rank_by, "scores": {head_name(h): float(scores[h]) for h in heads}}


def _num(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _report(table: pd.DataFrame, sel: KFHSelection, result, summary: dict) -> None:
    print(f"\nKFHs (top {len(sel.heads)} on {result.discovery.n_traces} discovery traces): {', '.join(sel.names)}")
    print(f"held-out SRA over {result.held_out.n_traces} traces "
          f"({result.held_out_redundant_first.n_traces} with a redundant step before a critical one):")
    cols = ["name", "sra", "ci_low", "ci_high", "sra_discovery", "sra_redundant_first"]
    top = table.sort_values("sra", ascending=False).head(max(5, len(sel.heads)))[cols]
    rows = [*top.itertuples(index=False)]
    for name, b in result.baselines.items():
        rows.append((f"[{name} ranker]", b["sra"], b["ci_low"], b["ci_high"], float("nan"), b["sra_redundant_first"]))
    print(pd.DataFrame(rows, columns=cols).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main(sys.argv[1:])
