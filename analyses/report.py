"""docs/REPORT.md: the reproduction of every organism, side by side, rendered from the files it wrote.

Each organism's reproduction leaves a ``summary.json`` in its results folder (budget, timings, KFHs,
ablation, the method table, the claims and the training-dynamics table); the report is a pure
function of those summaries plus the notes we write by hand in ``docs/report_notes/``: one file per
organism (``<model>.md``, shown in that organism's section) and any other file (shown at the end, in
name order).  So rerunning one organism's reproduction re-renders the whole report.
"""

from __future__ import annotations

import os
from pathlib import Path

from analyses.methods import markdown_table

VERDICT_NOTE = (
    "A difference between two methods counts only when it exceeds the pooled standard deviation over seeds of the "
    "two rows; otherwise the verdict is *within noise*. The power check needs the oracle to be better beyond that "
    "noise on one axis (accuracy or tokens) and no worse in mean on the other. The *(ours)* claim compares runs "
    "paired by seed (a seed draws the same prompts in every method) and counts when the mean paired difference "
    "exceeds the std of the differences.")


def render_report(summaries: list[dict], report: Path, notes_dir: Path | None = None) -> str:
    """The report for ``summaries`` (each a summary.json with ``out``, its results folder, added)."""
    rel = lambda p: Path(os.path.relpath(p, report.parent)).as_posix()  # links that work from the report
    names = [s["model"] for s in summaries]
    lines = [f"# Reproducing AttnPO's claims on the model organism{'s' if len(summaries) > 1 else ''}", ""]
    for s in summaries:
        b = s["budget"]
        lines.append(
            f"- **{s['model']}**: `python experiments/reproduce.py --model {s['model']}` in {s['minutes']} minutes "
            f"({b['seeds']} seeds x {len(s['methods'])} methods x {b['steps']} RL steps of "
            f"{b.get('prompts_per_step', 8)} prompts at learning rate {b['lr']:g} "  # 8: the budget before it was a key
            f"from the shipped checkpoint, {b['jobs']} run(s) at a time; held-out evaluation on {b['eval_prompts']} "
            "fresh prompts at temperature 0.6, top-p 0.95). Stage minutes: "
            + ", ".join(f"{k} {v}" for k, v in s["stage_minutes"].items()) + f". Files: `{rel(s['out'])}/`.")
    lines += ["", "## Claims", "", _claims_table(summaries), "", VERDICT_NOTE, ""]
    if len(summaries) > 1:
        lines += ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
                  "| accuracy against tokens, every run a point | "
                  + " | ".join(f"![{n}]({rel(s['out'] / 'figures' / 'tokens_accuracy.png')})"
                               for n, s in zip(names, summaries)) + " |", ""]
    for s in summaries:
        lines += _organism_section(s, rel, notes_dir)
    if notes_dir is not None and notes_dir.is_dir():
        for note in sorted(notes_dir.glob("*.md")):
            if note.stem not in names:
                lines += ["", note.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def _claims_table(summaries: list[dict]) -> str:
    """One row per claim, one column per organism: what was measured there and the verdict."""
    claims: dict[str, dict[str, dict]] = {}
    for s in summaries:
        for c in s["claims"]:
            claims.setdefault(c["claim"], {})[s["model"]] = c
    head = "| claim | " + " | ".join(s["model"] for s in summaries) + " |"
    lines = [head, "|---|" + "---|" * len(summaries)]
    for claim, by_model in claims.items():
        cells = [f"{c['measured']}: **{c['verdict']}**" if (c := by_model.get(s["model"])) else "–" for s in summaries]
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _organism_section(s: dict, rel, notes_dir: Path | None) -> list[str]:
    out, d, kfh, ab = s["out"], s["discovery"], s["kfh"], s["ablation"]
    ks = ab["ks"]
    lines = [
        f"## {s['model']}", "",
        "### Methods", "",
        markdown_table(s["methods"]), "",
        f"![tokens against accuracy]({rel(out / 'figures' / 'tokens_accuracy.png')})", "",
        "### Training dynamics", "",
        "On the training rollouts (temperature 1), averaged over the first, middle and last third of the RL steps, "
        "then over seeds. *Steps attenuated* is the share of steps whose advantage the KFH scores (or, for the "
        "oracle, the true labels) scaled down (Pos-Adv), *attenuation precision* the share of those that were truly "
        "redundant; *steps protected* the share whose negative advantage Neg-Adv removed, *protection precision* "
        "the share of those that were truly needed.", "",
        s.get("dynamics", "(not recorded by this reproduction)"), "",
        f"![tokens during training]({rel(out / 'figures' / 'tokens_during_training.png')})", "",
        "### Key-Focus Heads", "",
        f"KFHs (top {len(kfh['names'])} by SRA on the discovery split): {', '.join(kfh['names'])}; best held-out head "
        f"{d['best_head']['name']} SRA {d['best_head']['sra']:.3f} (95% CI {d['best_head']['ci_low']:.3f}–"
        f"{d['best_head']['ci_high']:.3f}) over {d['n_traces']} traces. Trivial rankers on the same held-out traces "
        "(SRA): " + ", ".join(f"{name} {v['sra']:.3f}" for name, v in s["baselines"].items()) + ".", "",
        f"![SRA heatmap]({rel(out / 'figures' / 'sra_heatmap.png')})", "",
        "### Step ablation", "",
        "| steps removed | " + " | ".join(f"pass@{k}" for k in ks) + (" | log p(F) |" if _has_logprob(ab) else " |"),
        "|---|" + "---|" * (len(ks) + _has_logprob(ab)),
        *[f"| {name} | " + " | ".join(f"{cond[f'pass@{k}']:.3f}" for k in ks)
          + (f" | {cond['logprob']['F_total']['mean']:.2f} |" if _has_logprob(ab) else " |")
          for name, cond in ab["conditions"].items()], "",
        f"{ab['n_traces']} correct traces, m = {ab['m']} steps removed, {ab['n_samples']} answers sampled per trace "
        f"and condition ({ab['mode']})" + (
            "; log p(F): the trace's own answer teacher-forced after the cut trace, total nats." if _has_logprob(ab)
            else "."), "",
        f"![ablation]({rel(out / 'figures' / 'ablation.png')})",
    ]
    note = notes_dir / f"{s['model']}.md" if notes_dir is not None else None
    if note is not None and note.exists():
        lines += ["", note.read_text().rstrip()]
    return lines + [""]


def _has_logprob(ablation: dict) -> bool:
    return all("logprob" in cond for cond in ablation["conditions"].values())
