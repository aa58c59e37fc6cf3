"""Reproduce the paper's claims on an organism, side by side with the baselines, and write the report.

    python experiments/reproduce.py                          # docs/results/organism/ and docs/REPORT.md
    python experiments/reproduce.py --model organism-hard    # docs/results/organism-hard/, same report
    python experiments/reproduce.py --quick                  # every stage, CI-sized, into runs/reproduce-quick/

Stages, each into the work folder (``runs/reproduce/<model>``: traces, scores, checkpoints): (1) KFH
discovery (SRA heatmap, top heads), (2) step ablation (pass@k and log p(F) after removing high / low
/ random KFH-score steps), (3) RL from the shipped organism with every method x seed on the same
budget, (4) KFH stability across each AttnPO run's checkpoints, (5) tables, figures and the report,
with the small files they come from copied to ``--out``.  ``docs/REPORT.md`` covers every organism
whose results folder holds a ``summary.json`` (``analyses.report``).  A stage whose output exists is not run
again, so a killed run picks up where it stopped (a training run resumes from its last
checkpoint); ``--fresh`` starts over.  Training runs go ``--jobs`` at a time, each in its own
process.  The start-of-run evaluation is the same for every run (same model, prompts and sampling
seed), so once one run has written it the others copy it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from analyses.figures import save_figure
from analyses.methods import RunFiles, check_claims, curves_figure, dynamics_table, markdown_table, method_table, \
    run_row, tokens_accuracy_figure
from analyses.report import render_report
from experiments import ablate_steps, discover_heads, stability
from workbench.cache import write_atomic
from workbench.cli import run_command
from workbench.config import Config, load_config
from workbench.models import load_model
from workbench.organism import ORGANISMS
from workbench.training.loop import train
from workbench.traces import jsonl_rows
from workbench.training.state import list_checkpoints, truncate_metrics

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "organism"  # the method configs; --model swaps the organism (model and task)
RESULTS = ROOT / "docs" / "results"
METHODS = ["rloo", "tlmre", "attnpo_pos", "attnpo_neg", "attnpo", "oracle"]


@dataclass
class Budget:
    """Everything that sets the run's size; ``--quick`` swaps in the small one."""

    seeds: int = 3
    steps: int = 60
    lr: float = 3e-4  # 60 steps at 3e-4 reach about where the shipped configs' 100 at 1.5e-4 do
    jobs: int = 1  # runs at once, each in its own process with cpu_count / jobs threads
    save_every: int = 20
    eval_prompts: int = 256
    prompts_per_step: int = 8  # RL prompts per step, each sampled group_size times
    discover_traces: int = 200
    ablation_traces: int = 60
    ablation_samples: int = 16
    stability_traces: int = 100


QUICK = Budget(seeds=1, steps=2, save_every=1, eval_prompts=16, discover_traces=24, ablation_traces=6,
               ablation_samples=4, stability_traces=12)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(ORGANISMS), default="organism", help="which built-in organism")
    p.add_argument("--out", type=Path, help="tables, figures, small files (default: docs/results/MODEL, or "
                   "runs/reproduce-quick with --quick)")
    p.add_argument("--work", type=Path, default=None,
                   help="traces, scores and checkpoints (default: runs/reproduce/MODEL, or OUT/work for another --out)")
    p.add_argument("--report", type=Path, default=None, help="report path (default: docs/REPORT.md, covering every "
                   "organism in docs/results, for the default --out; else OUT/REPORT.md for this run alone)")
    p.add_argument("--quick", action="store_true", help="every stage on a tiny budget (CI)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--seeds", type=int, help="seeds per method")
    p.add_argument("--steps", type=int, help="RL steps per run")
    p.add_argument("--prompts-per-step", type=positive_int, help="RL prompts per step (default 8)")
    p.add_argument("--jobs", type=positive_int, default=default_jobs(),
                   help="training runs at once (default: 1 on a GPU, else 2 or the core count if lower)")
    p.add_argument("--fresh", action="store_true", help="delete --out and the work folder first")
    return p.parse_args(argv)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def default_jobs() -> int:
    """Two small runs side by side use two CPU cores better than one run with two threads
    (generation here is per-token overhead, not arithmetic); a GPU takes one run at a time."""
    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def budget_from(args: argparse.Namespace) -> Budget:
    b = dataclasses.replace(QUICK if args.quick else Budget(), jobs=args.jobs)
    if args.prompts_per_step:
        b.prompts_per_step = args.prompts_per_step
    if args.seeds:
        b.seeds = args.seeds
    if args.steps:
        b.steps = args.steps
        b.save_every = max(1, min(b.save_every, args.steps))
    return b


def check_budget(work: Path, b: Budget) -> None:
    """Refuse to mix budgets: stages already in ``work`` are reused, so they must come from this
    budget (``jobs`` aside, which changes only the wall clock).  The first call records it."""
    record = work / "budget.json"
    wanted = {k: v for k, v in vars(b).items() if k != "jobs"}
    if not record.exists():
        record.write_text(json.dumps(wanted, indent=2) + "\n")
        return
    found = json.loads(record.read_text())
    differ = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
    if differ:
        raise SystemExit(f"{work} holds stages from another budget ("
                         + ", ".join(f"{k}: {old} there, {new} now" for k, (old, new) in differ.items())
                         + "); pass --fresh to start over, or --out/--work for a separate folder")


def run_config(method: str, seed: int, b: Budget, kfh: Path, model: str) -> Config:
    """A method's shipped config on ``model`` (its checkpoint and task) with this run's seed and budget
    (the KFHs from stage 1)."""
    overrides = [f"model.name={model}", f"data.task={model}", f"train.seed={seed}", f"train.steps={b.steps}",
                 f"train.save_every={b.save_every}", f"train.lr={b.lr}",
                 f"rollout.prompts_per_step={b.prompts_per_step}", f"eval.n_prompts={b.eval_prompts}",
                 "logging.progress=false"]
    cfg = load_config(CONFIGS / f"{method}.yaml", overrides)
    if cfg.kfh.path is not None:
        cfg.kfh.path = str(kfh)
    return cfg


def _write_atomic(path: Path, text: str) -> None:
    """Write so that ``path`` is either absent or whole, even if killed mid-write or raced by another worker."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _train_one(method: str, seed: int, b: Budget, kfh: Path, model: str, run_dir: Path, shared_start: Path,
               threads: int) -> None:
    """One method x seed into ``run_dir`` (resumed from its last checkpoint if it has one); a
    top-level function so a worker process can run it.  ``wall_clock.json``, written last, marks
    the run done; for a resumed run it adds the step seconds logged before the checkpoint."""
    checkpoints = list_checkpoints(run_dir) if run_dir.exists() else []
    if run_dir.exists() and not checkpoints:
        shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to keep
    run_dir.mkdir(parents=True, exist_ok=True)
    spent, done = 0.0, None
    if checkpoints:  # the steps up to the last checkpoint are kept (a torn last line is dropped)
        done = int(checkpoints[-1].name.removeprefix("step_"))
        truncate_metrics(run_dir / "metrics.jsonl", done)
        spent = sum(m["seconds_rollout"] + m["seconds_scoring"] + m["seconds_update"]
                    for _, m in jsonl_rows(run_dir / "metrics.jsonl"))
    if shared_start.exists() and not (run_dir / "eval_start.json").exists():
        _write_atomic(run_dir / "eval_start.json", shared_start.read_text())
    print(f"[reproduce] training {method} seed {seed} ({b.steps} steps)", flush=True)
    cfg = run_config(method, seed, b, kfh, model)
    cfg.train.threads = threads
    t0 = time.time()
    train(cfg, run_dir, resume=bool(checkpoints))
    if not shared_start.exists():
        _write_atomic(shared_start, (run_dir / "eval_start.json").read_text())
    _write_atomic(run_dir / "wall_clock.json", json.dumps({"seconds": spent + time.time() - t0,
                                                          "resumed_at_step": done}) + "\n")
    print(f"[reproduce] finished {method} seed {seed} in {(time.time() - t0) / 60:.1f} min", flush=True)


def train_runs(work: Path, b: Budget, methods: list[str], kfh: Path, model: str, on_done: Callable[[], None]
               ) -> list[RunFiles]:
    """Stage 3: every method x seed, ``b.jobs`` at a time (each in its own process with its share
    of the CPU threads); a finished run is read back, a killed one resumed.  ``on_done`` is called
    after each run, so the stage's time is kept even if a later run is killed."""
    shared_start = work / "runs" / "eval_start.json"
    shared_start.parent.mkdir(parents=True, exist_ok=True)
    run_dirs = {(m, s): work / "runs" / f"{m}-seed{s}" for s in range(b.seeds) for m in methods}
    todo = [key for key, d in run_dirs.items() if not (d / "wall_clock.json").exists()]
    threads = max(1, (os.cpu_count() or 1) // b.jobs)
    if b.jobs == 1:
        for m, s in todo:
            _train_one(m, s, b, kfh, model, run_dirs[m, s], shared_start, threads)
            on_done()
    elif todo:
        with ProcessPoolExecutor(b.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_train_one, m, s, b, kfh, model, run_dirs[m, s], shared_start, threads)
                       for m, s in todo]
            for future in as_completed(futures):
                if future.exception() is not None:  # stop at the first failed run, with its error
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise future.exception()
                on_done()
    return [RunFiles(m, s, json.loads((d / "eval_start.json").read_text()),
                     json.loads((d / "eval_final.json").read_text()),
                     [row for _, row in jsonl_rows(d / "metrics.jsonl")],
                     json.loads((d / "wall_clock.json").read_text())["seconds"])
            for (m, s), d in run_dirs.items()]


RUN_FILES = ("config.yaml", "metrics.jsonl", "eval_start.json", "eval_final.json", "wall_clock.json")
TRACE_FILES = ("traces.jsonl", "scores.safetensors")  # let the app's trace viewer open the published discovery
MAX_TRACE_FILE_BYTES = 4 << 20  # the organism's 200 traces take a few hundred kB; a real model's stay in work


def publish(work: Path, out: Path) -> None:
    """Copy what the report cites and the app shows from the work folder to ``out``: small files
    and the figures (checkpoints stay in ``work``, and so do discovery traces beyond
    ``MAX_TRACE_FILE_BYTES``)."""
    def copy(src: Path, dst: Path) -> None:
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)

    for name in ("sra.csv", "kfh.json", "baselines.json"):
        copy(work / "discover" / name, out / "discover" / name)
    traces = [work / "discover" / name for name in TRACE_FILES]
    if all(f.exists() and f.stat().st_size <= MAX_TRACE_FILE_BYTES for f in traces):
        for src in traces:
            copy(src, out / "discover" / src.name)
    else:
        print(f"[reproduce] not publishing {', '.join(TRACE_FILES)} (missing or over "
              f"{MAX_TRACE_FILE_BYTES >> 20} MB); the app opens them from {work / 'discover'}", flush=True)
    copy(work / "ablation" / "ablation.json", out / "ablation.json")
    for run in sorted(p for p in (work / "runs").glob("*") if p.is_dir()):
        for name in RUN_FILES:
            copy(run / name, out / "runs" / run.name / name)
    for run in sorted(p for p in (work / "stability").glob("*") if p.is_dir()):
        copy(run / "stability.json", out / "stability" / run.name / "stability.json")
    figure_dirs = {"": [work / "discover" / "figures", work / "ablation" / "figures"],
                   **{f"{d.name}_": [d / "figures"] for d in sorted((work / "stability").glob("*"))}}
    for prefix, dirs in figure_dirs.items():
        for src in (f for d in dirs for f in sorted(d.glob("*"))):
            if src.suffix in (".png", ".html"):
                copy(src, out / "figures" / f"{prefix}{src.name}")
            elif src.name == "plotly.min.js":
                copy(src, out / "figures" / src.name)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    b = budget_from(args)
    model = args.model
    out = (args.out or (ROOT / "runs" / "reproduce-quick" if args.quick else RESULTS / model)).resolve()
    default_out = out == RESULTS / model
    report = args.report or (ROOT / "docs" / "REPORT.md" if default_out else out / "REPORT.md")
    work = args.work or (ROOT / "runs" / "reproduce" / model if default_out else out / "work")
    if args.fresh:
        for folder in (work, out):
            shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    check_budget(work, b)
    timings_file = work / "timings.json"  # seconds each stage took, summed over resumed invocations
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    def timed(stage: str, t0: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.time() - t0
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")

    loaded = load_model(model)

    kfh = work / "discover" / "kfh.json"
    if not kfh.exists():
        print("[reproduce] 1/5 discovering KFHs", flush=True)
        t0 = time.time()
        discover_heads.main(["--model", model, "--n-traces", str(b.discover_traces), "--out", str(work / "discover"),
                             "--n-boot", "200" if args.quick else "1000"], loaded)
        timed("discovery", t0)
    ablation_file = work / "ablation" / "ablation.json"
    if not ablation_file.exists():
        print("[reproduce] 2/5 step ablation", flush=True)
        t0 = time.time()
        ablate_steps.main(["--model", model, "--kfh", str(kfh), "--out", str(work / "ablation"),
                           "--n-traces", str(b.ablation_traces), "--n-samples", str(b.ablation_samples),
                           "--k", "1", str(b.ablation_samples)], loaded)
        timed("ablation", t0)

    print("[reproduce] 3/5 training", flush=True)
    last = [time.time()]

    def run_done() -> None:
        timed("training", last[0])
        last[0] = time.time()

    runs = train_runs(work, b, args.methods, kfh, model, run_done)

    print("[reproduce] 4/5 KFH stability", flush=True)
    stabilities = []
    for seed in range(b.seeds):
        run_dir = work / "runs" / f"attnpo-seed{seed}"
        target = work / "stability" / f"attnpo-seed{seed}"
        if "attnpo" not in args.methods:
            break
        if not (target / "stability.json").exists():
            t0 = time.time()
            stability.main(["--checkpoints", model, *[str(c) for c in list_checkpoints(run_dir)],
                            "--kfh", str(kfh), "--n-traces", str(b.stability_traces), "--out", str(target)], loaded)
            timed("stability", t0)
        stabilities.append(json.loads((target / "stability.json").read_text()))

    print("[reproduce] 5/5 report", flush=True)
    timings.pop("report", None)  # the report is rebuilt whole every time: its time is this run's, not a sum
    t0 = time.time()
    publish(work, out)
    rows = [run_row(r) for r in runs]
    table = method_table(rows, args.methods)
    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
    pd.DataFrame(table).to_csv(out / "methods.csv", index=False)
    (out / "methods.md").write_text(markdown_table(table) + "\n")
    save_figure(tokens_accuracy_figure(table, rows, f"{model}: held-out accuracy against response length"),
                out / "figures", "tokens_accuracy")
    save_figure(curves_figure(runs), out / "figures", "tokens_during_training")
    save_figure(curves_figure(runs, "accuracy"), out / "figures", "accuracy_during_training")
    ablation = json.loads(ablation_file.read_text())
    claims = check_claims(table, ablation, stabilities, rows)
    timed("report", t0)
    discovery = json.loads((work / "discover" / "baselines.json").read_text())
    summary = {"model": model, "budget": vars(b), "minutes": round(sum(timings.values()) / 60, 1),
               "stage_minutes": {k: round(v / 60, 1) for k, v in timings.items()},
               "baselines": discovery["baselines"], "discovery": discovery["held_out"],
               "kfh": json.loads(kfh.read_text()), "ablation": ablation, "methods": table,
               "claims": [vars(c) for c in claims], "dynamics": dynamics_table(runs, args.methods)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(report_summaries(out, summary, default_out), report, ROOT / "docs" / "report_notes"))
    print(markdown_table(table))
    for c in claims:
        print(f"- {c.verdict:>13}: {c.claim} ({c.measured})")
    print(f"[reproduce] done in {summary['minutes']} min; report: {report}")
    return summary


def report_summaries(out: Path, summary: dict, combined: bool) -> list[dict]:
    """What the report covers: this run alone, or (``combined``) every organism with results in
    docs/results, in registry order, this run's summary in its place."""
    if not combined:
        return [{**summary, "out": out}]
    found = []
    for name in ORGANISMS:
        file = RESULTS / name / "summary.json"
        if name == summary["model"]:
            found.append({**summary, "out": out})
        elif file.exists():
            found.append({"model": name, **json.loads(file.read_text()), "out": file.parent})
    return found


if __name__ == "__main__":
    raise SystemExit(run_command(main))
