"""Head-level causal check: forced-answer accuracy with the KFHs ablated vs as many random heads.

    python experiments/causal_heads.py --model organism --kfh runs/kfh/kfh.json --out runs/causal
    python experiments/causal_heads.py --model organism --kfh runs/kfh/kfh.json --ablation mean --out ...

Writes causal.json (accuracy intact / KFHs ablated / each random draw, and the changes) and
figures/causal.*.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses.causal import ABLATIONS, causal_figure, run_causal
from analyses.figures import save_figure
from workbench.cli import run_command
from workbench.kfh import load_kfh
from workbench.models import LoadedModel, add_model_arguments, model_from_args
from workbench.traces import add_trace_arguments, check_trace_arguments, traces_from_args, verifier_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--kfh", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    add_trace_arguments(p, n_traces=100)
    p.add_argument("--ablation", choices=ABLATIONS, default="zero")
    p.add_argument("--n-random", type=int, default=5, help="random head sets (each as large as the KFH set)")
    p.add_argument("--verifier", default=None, help="organism | math (default: organism for the organism)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, loaded: LoadedModel | None = None) -> dict:
    """Run the study; ``loaded`` (optional) is the model ``--model`` names, already loaded."""
    args = parse_args(argv)
    check_trace_arguments(args, args.model)
    loaded = loaded or model_from_args(args)
    sel = load_kfh(args.kfh, loaded)
    verifier = verifier_for(loaded, args.verifier)
    records = traces_from_args(args, loaded, correct_only=True, seed=args.seed + 2_000_003)
    result = run_causal(loaded, records, sel.heads, verifier, ablation=args.ablation, n_random=args.n_random,
                        seed=args.seed, batch_size=args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "causal.json").write_text(json.dumps(result, indent=2) + "\n")
    save_figure(causal_figure(result), args.out / "figures", "causal")
    print(f"\nforced-answer accuracy on {result['n_traces']} correct traces ({args.ablation} ablation):")
    print(f"  intact {result['accuracy_none']:.3f} | KFHs {', '.join(result['kfh'])} ablated "
          f"{result['accuracy_kfh']:.3f} ({result['delta_kfh']:+.3f}) | random heads "
          f"{', '.join(f'{a:.3f}' for a in result['accuracy_random'])} "
          f"(mean change {result['delta_random_mean']:+.3f})")
    return result


if __name__ == "__main__":
    raise SystemExit(run_command(main))
