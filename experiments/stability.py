"""KFH stability across checkpoints: per-head SRA and per-step KFH scores on one fixed trace set.

    python experiments/stability.py --checkpoints organism runs/train/checkpoints/step_50 --out runs/stability
    python experiments/stability.py --checkpoints organism --sft-steps 30 --out runs/stability

The traces are sampled (or read) once, with the first checkpoint, and labelled once; every
checkpoint is then teacher-forced on the same token ids.  The KFHs whose step scores are
compared come from ``--kfh`` or, by default, are the first checkpoint's top-N heads by SRA.
``--sft-steps N`` appends a copy of the first checkpoint fine-tuned for N supervised steps on
the trace set's responses: a second checkpoint of the same shape when no training run exists.
Writes stability.json (with the first checkpoint's name and fingerprint, the KFHs, the trace set
and the date) and figures/stability.*.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from analyses.figures import save_figure
from analyses.labels import default_labels, get_labels, label_codes
from analyses.sra import sra, top_heads
from analyses.stability import checkpoint_summary, stability_figure, stability_result
from workbench.cli import run_command
from workbench.kfh import load_kfh
from workbench.models import LoadedModel, add_model_arguments, model_from_args
from workbench.provenance import stamp
from workbench.traces import add_trace_arguments, check_trace_arguments, traces_from_args
from workbench.tracing import trace_step_scores
from workbench.training.sft import supervised_finetune


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="model specs; the first is the reference")
    p.add_argument("--out", required=True, type=Path)
    add_model_arguments(p, model=False)
    add_trace_arguments(p, n_traces=100)
    p.add_argument("--labels", default=None,
                   help="as in discover_heads.py (default: organism / chunks / counterfactual)")
    p.add_argument("--kfh", type=Path, default=None,
                   help="heads for the step scores (default: the first checkpoint's top-N by SRA)")
    p.add_argument("--top-n", type=int, default=3)
    p.add_argument("--sft-steps", type=int, default=0,
                   help="add a copy of the first checkpoint fine-tuned N steps on the traces")
    p.add_argument("--sft-lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="tracing batch size")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, loaded: LoadedModel | None = None) -> dict:
    """Run the study; ``loaded`` (optional) is the already-loaded first checkpoint."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    check_trace_arguments(args, args.checkpoints[0])
    first = loaded or model_from_args(args, args.checkpoints[0])
    checkpoints = list(args.checkpoints)
    records = traces_from_args(args, first)
    if args.sft_steps:
        torch.manual_seed(args.seed)
        checkpoints.append(str(supervised_finetune(first, records, args.sft_steps, args.sft_lr,
                                                   args.out / f"sft-{args.sft_steps}")))
    labels_spec = args.labels or default_labels(first, records)
    codes = [label_codes(x) for x in get_labels(labels_spec, records, first)]
    items = [r.item() for r in records]
    vocab = first.tokenizer.get_vocab()
    summaries, kfh = [], None
    for spec in checkpoints:
        ckpt = first if spec == checkpoints[0] else model_from_args(args, spec)
        if ckpt.tokenizer.get_vocab() != vocab:
            raise ValueError(f"checkpoint {spec!r} has another tokenizer than {checkpoints[0]!r}; "
                             "stability needs the same token ids at every checkpoint")
        scores = [s.numpy() for s in trace_step_scores(ckpt, items, batch_size=args.batch_size, progress=True)]
        if kfh is None:
            kfh = (load_kfh(args.kfh, first, same_weights=False).heads if args.kfh
                   else top_heads(sra(scores, codes, n_boot=0).sra, args.top_n))
        summaries.append(checkpoint_summary(scores, codes, kfh))
        print(f"{spec}: best head SRA {np.nanmax(summaries[-1]['sra']):.3f}")
    result = {**stability_result(checkpoints, summaries, kfh, args.top_n), "n_traces": len(records),
              "labels": labels_spec, **stamp(first),
              "traces": {"source": args.traces, "n_traces": args.n_traces, "seed": args.seed}}
    (args.out / "stability.json").write_text(json.dumps(result, indent=2) + "\n")
    save_figure(stability_figure(result), args.out / "figures", "stability")
    for key in ("pearson_sra", "spearman_sra", "pearson_step_scores", "topn_overlap"):
        print(f"{key:>20}: " + "  ".join("-" if v is None else f"{v:.3f}" for v in result[key]))
    return result


if __name__ == "__main__":
    raise SystemExit(run_command(main))
