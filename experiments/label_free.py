"""How much of the SRA-chosen heads' SRA do label-free rankers recover?  (analyses/label_free.py)

    python experiments/label_free.py --model organism --n-traces 200 --out docs/results/organism/label_free
    python experiments/label_free.py --model smollm2 --traces ../shared/data/r1-traces/deepseek-r1-distill-llama-8b.jsonl \\
        --labels chunks --max-tokens 8192 --n-traces 20 --methods receiver answer_kurtosis \\
        --cache runs/cache --out docs/results/smollm2-r1/label_free

Per seed: the traces (organism: fresh samples; a trace file: the same traces, traced once), their
labels, a discovery / held-out split.  The SRA top-N is chosen with the discovery traces' labels,
each ranker's top-N on the same traces without them; both are measured by SRA on the held-out
traces (bootstrap CIs), with the paired gap, the overlap, and the Spearman over all heads between
each ranking and held-out SRA.  Writes label_free.json (every seed, and mean ± std over seeds),
label_free_heads.csv (each head's ranker scores over all traces and held-out SRA, first seed) and
figures/label_free.*.  Traced steps (and counterfactual labels) are cached in OUT/cache, so
rerunning a killed command resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analyses.figures import save_figure
from analyses.label_free import (PROXIMITY, RANKERS, compare_selections, gather_evidence, label_free_figure,
                                 needs, ranker_scores, summarize_seeds)
from analyses.labels import default_labels, get_labels, label_codes
from analyses.sra import baselines, per_trace_sra, split
from workbench.cache import add_cache_arguments, cache_dir
from workbench.cli import run_command
from workbench.heads import head_name
from workbench.models import LoadedModel, add_model_arguments, model_from_args
from workbench.provenance import stamp
from workbench.traces import add_trace_arguments, check_trace_arguments, traces_from_args
from workbench.tracing import ScoreCache


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--out", required=True, type=Path)
    add_trace_arguments(p, n_traces=200)
    p.add_argument("--labels", default=None, help="the truth to measure against, as in discover_heads.py "
                                                  "(default: organism for the organism, chunks for traces "
                                                  "that carry them, else counterfactual)")
    p.add_argument("--methods", nargs="+", default=list(RANKERS), help=f"label-free rankers: {', '.join(RANKERS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--top-n", type=int, default=3)
    p.add_argument("--discovery-frac", type=float, default=0.5)
    p.add_argument("--proximity", type=int, default=PROXIMITY, help="receiver: nearest later segments left out")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1, help="tracing batch size")
    add_cache_arguments(p)
    args = p.parse_args(argv)
    needs(args.methods)
    return args


def main(argv: list[str] | None = None, loaded: LoadedModel | None = None) -> dict:
    """Run the study; ``loaded`` (optional) is the model ``--model`` names, already loaded."""
    args = parse_args(argv)
    check_trace_arguments(args, args.model)
    loaded = loaded or model_from_args(args)
    folder = cache_dir(args)
    cache = ScoreCache(folder) if folder else None
    labels_spec, seeds, first, previous = args.labels, [], None, None
    for seed in args.seeds:
        t0 = time.time()
        records = traces_from_args(args, loaded, seed=seed)
        same = previous is not None and [r.input_ids for r in records] == [r.input_ids for r in previous[0]]
        if same:  # a trace file: the same traces, only the split changes
            records, codes, evidence, seconds = previous
        else:
            labels_spec = labels_spec or default_labels(loaded, records)
            codes = [label_codes(x) for x in get_labels(labels_spec, records, loaded, cache=cache)]
            evidence = gather_evidence(loaded, records, args.methods, cache=cache, batch_size=args.batch_size)
            seconds = time.time() - t0
        previous = records, codes, evidence, seconds
        disc, held = split(len(records), args.discovery_frac, seed)
        rankings = {m: ranker_scores(m, evidence, disc, args.proximity) for m in args.methods}
        result = compare_selections(evidence.step_scores, codes, rankings, disc, held, args.top_n, args.n_boot, seed)
        result.update(seed=seed, n_traces=len(records), tracing_seconds=round(seconds, 1),
                      baselines=baselines([codes[i] for i in held], [records[i].step_lengths for i in held],
                                          n_boot=args.n_boot, seed=seed))
        seeds.append(result)
        first = first or (records, codes, evidence, disc, held)
        print(f"[label-free] seed {seed}: " + "; ".join(
            f"{n} {s['held_out_sra']['mean']:.3f}" for n, s in result["selections"].items()), flush=True)

    summary = summarize_seeds(seeds)
    trivial = {name: float(np.mean([s["baselines"][name]["sra"] for s in seeds if s["baselines"][name]["sra"]
                                    is not None])) for name in ("earlier", "longer")}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    settings = {**stamp(loaded), "traces": args.traces,
                "labels": labels_spec, "methods": args.methods, "seeds": args.seeds, "top_n": args.top_n,
                "discovery_frac": args.discovery_frac, "proximity": args.proximity, "max_tokens": args.max_tokens,
                "n_traces_requested": args.n_traces}
    doc = {"settings": settings, "summary": summary, "trivial_rankers_held_out_sra": trivial, "seeds": seeds}
    (out / "label_free.json").write_text(json.dumps(doc, indent=2) + "\n")

    records, codes, evidence, disc, held = first
    per, _ = per_trace_sra([evidence.step_scores[i] for i in held], [codes[i] for i in held])
    held_sra = per.mean(0)
    everything = {m: ranker_scores(m, evidence, proximity=args.proximity) for m in args.methods}
    n_layers, n_heads = held_sra.shape
    table = pd.DataFrame([{"name": head_name((l, h)), "layer": l, "head": h, "held_out_sra": held_sra[l, h],
                           **{m: everything[m][l, h] for m in args.methods}}
                          for l in range(n_layers) for h in range(n_heads)])
    table.to_csv(out / "label_free_heads.csv", index=False)
    scatter = {m: (everything[m], held_sra) for m in args.methods}
    save_figure(label_free_figure(summary, trivial, scatter, f"Label-free head selection: {loaded.name}, "
                                  f"{labels_spec} labels, top {args.top_n}, {len(args.seeds)} seeds"),
                out / "figures", "label_free")
    _report(summary)
    return doc


def _report(summary: dict) -> None:
    print("\nheld-out SRA of the top heads (mean ± std over seeds), gap to the SRA choice, "
          "Spearman with held-out SRA over all heads:")
    for name, s in summary.items():
        if name == "all_heads_held_out_sra":
            print(f"  {'mean head':>16}: SRA {s['mean']:.3f} ± {s['std']:.3f}")
            continue
        parts = [f"SRA {s['held_out_sra']['mean']:.3f} ± {s['held_out_sra']['std']:.3f}"]
        if name != "sra":
            parts.append(f"gap {s['gap_to_sra_choice']['mean']:+.3f} ± {s['gap_to_sra_choice']['std']:.3f}")
        if s["spearman_with_held_out_sra"]["mean"] is not None:
            sp = s["spearman_with_held_out_sra"]
            parts.append(f"Spearman {sp['mean']:.2f} ± {sp['std']:.2f}")
        print(f"  {name:>16}: " + ", ".join(parts))


if __name__ == "__main__":
    raise SystemExit(run_command(main))
