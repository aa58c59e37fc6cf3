"""Step ablation: remove the m highest / lowest / random KFH-score steps of correct traces, measure
pass@k and the answer's log-probability.

    python experiments/ablate_steps.py --model organism --kfh runs/kfh/kfh.json --out runs/ablate
    python experiments/ablate_steps.py --model organism --kfh runs/kfh/kfh.json --mode continue --out ...
    python experiments/ablate_steps.py --model smollm2 --kfh runs/kfh-smollm2/kfh.json --measure logprob \
        --out runs/ablate-smollm2

--measure logprob needs no sampling (one forward per condition) and keeps a signal on models that
never solve the task, where pass@k is 0 everywhere.  Traces default as in discover_heads.py (the
bundled R1 traces for a model that is not an organism); only correct ones are ablated.  Finished
traces are cached in OUT/cache (each measure apart), so rerunning a killed command resumes.
Writes ablation.json {"n_traces", "m", "measure", "conditions": {"none"|"high"|"low"|"random":
{"pass@k": .., "logprob": {"F_total"|"F_per_token"|"reference_total"|"reference_per_token":
{"mean", "ci_low", "ci_high", "n"}}}}, "gaps": {"low - high": ..}, "warnings", "per_trace":
[{"removed", "correct", "answers", "logprob"}, ...], ..., "model", "fingerprint", "created", "kfh",
"traces"} and figures/ablation.*.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from analyses.ablation import MEASURES, MODES, ablation_figure, gap_lines, run_ablation, summary_rows
from analyses.figures import save_figure
from workbench.cache import JsonCache, add_cache_arguments, cache_dir
from workbench.cli import run_command
from workbench.kfh import load_kfh
from workbench.models import LoadedModel, add_model_arguments, model_from_args
from workbench.provenance import stamp
from workbench.traces import add_trace_arguments, check_trace_arguments, traces_from_args, verifier_for
from workbench.tracing import ScoreCache, trace_step_scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--kfh", required=True, type=Path, help="kfh.json written by discover_heads.py for this model")
    p.add_argument("--out", required=True, type=Path)
    add_trace_arguments(p, n_traces=100)
    p.add_argument("--m", type=float, default=2, help="steps to remove: an integer, or a fraction in (0, 1)")
    p.add_argument("--n-samples", type=int, default=32, help="answers sampled per trace and condition")
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--measure", choices=MEASURES, default="both",
                   help="passk: sample answers; logprob: teacher-force the trace's own answer F after </think> "
                        "(one forward per condition, no sampling); both (default)")
    p.add_argument("--mode", choices=MODES, default="forced",
                   help="forced: append </think> and sample the answer; continue: let the model keep reasoning")
    p.add_argument("--answer-temperature", type=float, default=1.0)
    p.add_argument("--answer-max-new-tokens", type=int, default=None)
    p.add_argument("--verifier", default=None, help="organism | math (default: organism for the organism)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="answers sampled at once")
    p.add_argument("--keep-answers", type=int, default=4,
                   help="answers kept per trace and condition in ablation.json, with their verdicts")
    add_cache_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None, loaded: LoadedModel | None = None) -> dict:
    """Run the study; ``loaded`` (optional) is the model ``--model`` names, already loaded."""
    args = parse_args(argv)
    check_trace_arguments(args, args.model)
    loaded = loaded or model_from_args(args)
    sel = load_kfh(args.kfh, loaded)
    verifier = verifier_for(loaded, args.verifier)
    # a seed apart from discovery's default, so these are fresh problems for the organism sampler
    records = traces_from_args(args, loaded, correct_only=True, seed=args.seed + 1_000_003)
    folder = cache_dir(args)
    scores = trace_step_scores(loaded, [r.item() for r in records], heads=sel.heads, progress=True,
                               cache=folder and ScoreCache(folder))
    step_scores = [s.numpy().mean(axis=0) for s in scores]
    result = run_ablation(loaded, records, step_scores, args.m, verifier, n_samples=args.n_samples, ks=tuple(args.k),
                          mode=args.mode, temperature=args.answer_temperature,
                          max_new_tokens=args.answer_max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                          measure=args.measure, cache=folder and JsonCache(folder), keep_answers=args.keep_answers)
    result.update(stamp(loaded), kfh=sel.names, traces={"source": args.traces, "n_traces": args.n_traces,
                                                          "seed": args.seed + 1_000_003, "correct_only": True})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    save_figure(ablation_figure(result), args.out / "figures", "ablation")
    print(f"\nstep ablation ({args.measure}, {args.mode}, m={args.m}, KFHs {', '.join(sel.names)}) "
          f"on {result['n_traces']} correct traces:")
    print(pd.DataFrame(summary_rows(result)).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("paired gaps, mean over traces [95% CI]:\n  " + "\n  ".join(gap_lines(result)))
    for line in result["warnings"]:
        print(f"WARNING: {line}")
    return result


if __name__ == "__main__":
    raise SystemExit(run_command(main))
