"""Step ablation: do the steps the KFHs score highest matter for the answer?

From correct traces, remove the m steps with the highest KFH score, the m lowest, or m random
ones (the first step -- the plan -- always stays), and measure what is left of the answer, by
either or both of:

- ``passk``: force the end of thinking (append ``</think>``) and sample the answer, or let the
  model continue reasoning from the cut trace.  Each condition samples n answers per trace;
  pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k) in its stable product form,
  averaged over traces.  It carries no signal until the model solves the task.  The first
  answers of each condition are kept with their verdicts (``per_trace[].answers``), so a 0 can
  be looked at.
- ``logprob``: teacher-force the trace's own answer F right after the cut trace and ``</think>``
  and read log p(F), in total and per token; where the reference answer is known, also its
  log-probability right after the cut trace, ``</think>`` and F's box opening (``\\boxed{``),
  as Thought Anchors forces the answer -- not after F's own text, which may restate the
  solution and so give the answer away.  One forward of the cut trace per condition (both
  endings read its KV cache), no sampling: a continuous measure that moves on models far below
  competence too.

Each measure's mean over traces comes with a bootstrap CI, and so does each paired gap between
conditions (e.g. low - high: how much more removing the high-score steps costs).

Each trace is seeded on its own (from the seed and its id), so a trace's result does not depend
on the others: with a ``JsonCache`` every finished trace's measures are stored at once (each
measure under its own key, so a ``both`` run reuses what a ``passk`` or ``logprob`` run left) and a
killed run resumes where it stopped, with the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from analyses.sra import mean_ci
from workbench.cache import JsonCache, content_key
from workbench.generation import continuation_logprobs
from workbench.models import LoadedModel
from workbench.steps import token_char_offsets
from workbench.traces import TraceRecord
from workbench.verifiers import BOXED, Verifier, last_boxed_span

ABLATION_VERSION = 1  # bump when a cached per-trace result would change meaning
CONDITIONS = ("none", "high", "low", "random")
CONDITION_COLOURS = {"none": "#7f7f7f", "high": "#d62728", "low": "#1f77b4", "random": "#ff7f0e"}
CONDITION_WORDS = {"none": "none (the whole trace)", "high": "the m highest-score steps",
                   "low": "the m lowest-score steps", "random": "m random steps"}
CACHE_TOKENS = 16384  # rows x prefix tokens held in one repeated KV cache: bounds memory on long traces
MODES = ("forced", "continue")
MEASURES = ("both", "passk", "logprob")
LOGPROB_KEYS = ("F_total", "F_per_token", "reference_total", "reference_per_token")
GAPS = (("low", "high"), ("random", "high"), ("none", "high"))  # paired differences reported with CIs


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - prod_{i=n-c+1..n} (1 - k/i)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def resolve_m(m: float, n_candidates: int) -> int:
    """``m`` steps (an integer >= 1) or a fraction in (0, 1) of the removable steps (at least one)."""
    if m >= 1:
        if m != int(m):
            raise ValueError(f"m must be an integer number of steps or a fraction in (0, 1), got {m}")
        return int(m)
    if m <= 0:
        raise ValueError(f"m must be positive, got {m}")
    return max(1, round(m * n_candidates))


def choose_steps(scores: np.ndarray, m: int, condition: str, rng: np.random.Generator,
                 protected: tuple[int, ...] = (0,)) -> list[int]:
    """Indices of the ``m`` steps to remove under ``condition`` (never a protected one)."""
    candidates = np.array([k for k in range(len(scores)) if k not in protected])
    if condition == "none":
        return []
    if m > len(candidates):
        raise ValueError(f"cannot remove {m} of {len(candidates)} removable steps")
    if condition == "high":
        picked = candidates[np.argsort(-scores[candidates], kind="stable")[:m]]
    elif condition == "low":
        picked = candidates[np.argsort(scores[candidates], kind="stable")[:m]]
    elif condition == "random":
        picked = rng.choice(candidates, size=m, replace=False)
    else:
        raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")
    return sorted(int(k) for k in picked)


def ablated_prefix(record: TraceRecord, removed: list[int], mode: str) -> list[int]:
    """Prompt + the kept steps' tokens, then ``</think>`` in forced mode (the model writes the rest)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    drop = set(removed)
    kept = [t for k, (s, e) in enumerate(record.seg.steps) if k not in drop for t in record.response_ids[s:e]]
    return record.prompt_ids + kept + (record.close_ids if mode == "forced" else [])


@torch.no_grad()
def sample_continuations(model, prefix: list[int], n: int, max_new_tokens: int, temperature: float,
                         eos_id: int, batch_size: int = 32) -> list[list[int]]:
    """``n`` continuations of one prefix (EOS included when produced), prefilling it only once.

    Pure temperature sampling (no top-k/top-p); temperature 0 is greedy.  Rows are decoded in
    chunks of at most ``batch_size`` and ``CACHE_TOKENS // len(prefix)``.
    """
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    prefilled, first_logits = out.cache, out.logits[:, -1].float()
    rows: list[list[int]] = []
    chunk = max(1, min(batch_size, CACHE_TOKENS // len(prefix)))
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        cache = copy.deepcopy(prefilled)
        cache.batch_repeat_interleave(b)
        logits = first_logits.expand(b, -1)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        tokens = []
        for _ in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            tokens.append(nxt)
            done |= nxt == eos_id
            if done.all():
                break
            logits = model(input_ids=nxt[:, None], cache=cache, use_cache=True).logits[:, -1].float()
        for row in torch.stack(tokens, 1).tolist():
            rows.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return rows



def trace_seed(seed: int, trace_id: str) -> int:
    """A trace's own seed: its result is the same whichever traces run before it."""
    return int(np.random.SeedSequence([seed, zlib.crc32(trace_id.encode())]).generate_state(1)[0])


def removed_steps(s: np.ndarray, m_r: int, seed: int, trace_id: str) -> dict[str, list[int]]:
    """The steps each condition removes from one trace (the same for every measure)."""
    rng = np.random.default_rng(trace_seed(seed, trace_id))
    return {cond: choose_steps(s, m_r, cond, rng) for cond in CONDITIONS}


def sample_answers(loaded: LoadedModel, r: TraceRecord, removed: dict[str, list[int]], verifier: Verifier,
                   n_samples: int, mode: str, temperature: float, budget: int, seed: int, batch_size: int,
                   keep_answers: int) -> dict:
    """One trace's pass@k part: the correct count and the first ``keep_answers`` answers (text and
    verdict) of every condition, and the tokens sampled."""
    tok = loaded.tokenizer
    torch.manual_seed(trace_seed(seed, r.trace_id))
    row = {"correct": {}, "answers": {}, "sampled_tokens": 0}
    head = r.close_ids if mode == "forced" else []
    for cond, steps in removed.items():
        outs = sample_continuations(loaded.model, ablated_prefix(r, steps, mode), n_samples, budget, temperature,
                                    tok.eos_token_id, batch_size)
        texts = [tok.decode(head + o, skip_special_tokens=True) for o in outs]
        verdicts = [bool(verifier(r.prompt, t, r.answer)) for t in texts]
        row["correct"][cond] = sum(verdicts)
        row["answers"][cond] = [{"text": t, "correct": v} for t, v in zip(texts[:keep_answers], verdicts)]
        row["sampled_tokens"] += sum(len(o) for o in outs)
    return row


@dataclass
class AnswerTargets:
    """What the log-prob measure scores after a cut trace: F, and the reference answer right after
    the box opening (``\\boxed{``) as F spells it."""

    f_ids: list[int]  # the trace's own answer F (the tokens after </think>, EOS included)
    box_ids: list[int] | None = None  # F's tokens from its last \\boxed{ up to the answer (None: no reference)
    ref_ids: list[int] | None = None  # the reference answer's tokens, F's own when F boxes the reference


def answer_targets(record: TraceRecord, tokenizer) -> AnswerTargets:
    """F of ``record``, and the reference answer's tokens with the box opening before them.

    The reference is F's own boxed tokens when the trace is correct or boxes the reference string;
    otherwise the boxed text is re-spelled with the reference.  No reference when the record has
    none or F boxes nothing.
    """
    f = record.response_ids[record.seg.answer[0] : record.seg.answer[1]]
    if record.answer is None:
        return AnswerTargets(f)
    text, offsets = token_char_offsets(tokenizer, f)
    span = last_boxed_span(text)
    if span is None or span[0] == span[1]:
        return AnswerTargets(f)
    (c0, c1), opening = span, text.rfind(BOXED, 0, span[0])

    def covering(a: int, b: int) -> list[int]:  # the tokens holding characters [a, b)
        return [t for t, (s, e) in enumerate(offsets) if s < b and e > a]

    inside = covering(c0, c1)
    j0, j1 = inside[0], inside[-1] + 1
    b0 = covering(opening, opening + 1)[0]
    if record.correct or text[c0:c1] == record.answer.strip():
        return AnswerTargets(f, f[b0:j0], f[j0:j1])
    spelled = text[offsets[j0][0] : c0] + record.answer.strip() + text[c1 : offsets[j1 - 1][1]]
    return AnswerTargets(f, f[b0:j0], tokenizer(spelled, add_special_tokens=False)["input_ids"])


def condition_logprobs(loaded: LoadedModel, record: TraceRecord, removed: dict[str, list[int]],
                       targets: AnswerTargets) -> dict[str, dict[str, float]]:
    """Per condition: log p(F) (total, per token) right after the cut trace and ``</think>``, and,
    when ``targets`` has a reference, log p(reference) right after the cut trace, ``</think>`` and
    the box opening -- not after F's own text before the box, which may restate the answer.
    One forward of the cut trace per condition; both endings read its KV cache."""
    out = {}
    for cond, steps in removed.items():
        endings = [targets.f_ids] + ([targets.box_ids + targets.ref_ids] if targets.ref_ids is not None else [])
        lp = continuation_logprobs(loaded.model, ablated_prefix(record, steps, "forced"), endings)
        out[cond] = {"F_total": float(lp[0].sum()), "F_per_token": float(lp[0].mean())}
        if targets.ref_ids is not None:
            ref = lp[1][len(targets.box_ids) :]
            out[cond].update(reference_total=float(ref.sum()), reference_per_token=float(ref.mean()))
    return out



def score_answers(loaded: LoadedModel, r: TraceRecord, removed: dict[str, list[int]]) -> dict:
    """One trace's log-prob part: the lengths of F and of the reference, and `condition_logprobs`."""
    targets = answer_targets(r, loaded.tokenizer)
    return {"F_tokens": len(targets.f_ids),
            "reference_tokens": None if targets.ref_ids is None else len(targets.ref_ids),
            "logprob": condition_logprobs(loaded, r, removed, targets)}


def _cached(cache: JsonCache | None, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``cache[key]``, else ``compute()`` stored under ``key`` at once; and whether it was reused."""
    part = cache.get(key) if cache is not None else None
    if part is not None:
        return part, True
    part = compute()
    if cache is not None:
        cache.put(key, part)
    return part, False


def _per_trace_measures(row: dict, n_samples: int | None) -> dict[str, dict[str, float]]:
    """{condition: {measure: value}} of one per_trace row: pass@1 = c / n and the log-prob keys."""
    out = {c: dict(row.get("logprob", {}).get(c, {})) for c in CONDITIONS}
    for c, correct in row.get("correct", {}).items():
        out[c]["pass@1"] = correct / n_samples
    return out


def summarize(per_trace: list[dict], n_samples: int | None, n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """Log-prob means per condition and paired gaps (pass@1 and log-prob) with bootstrap CIs."""
    values = [_per_trace_measures(row, n_samples) for row in per_trace]
    measures = [k for k in ("pass@1", *LOGPROB_KEYS) if any(k in v[c] for v in values for c in CONDITIONS)]
    logprob = {c: {k: mean_ci([v[c][k] for v in values if k in v[c]], n_boot, seed)
                   for k in LOGPROB_KEYS if k in measures} for c in CONDITIONS}
    gaps = {f"{a} - {b}": {k: mean_ci([v[a][k] - v[b][k] for v in values if k in v[a]], n_boot, seed)
                           for k in measures} for a, b in GAPS}
    return logprob, gaps



def run_ablation(loaded: LoadedModel, records: list[TraceRecord], step_scores: list[np.ndarray], m: float,
                 verifier: Verifier, n_samples: int = 32, ks: tuple[int, ...] = (1, 4, 16, 32), mode: str = "forced",
                 temperature: float = 1.0, max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 32,
                 measure: str = "both", n_boot: int = 1000, progress: bool = True, cache: JsonCache | None = None,
                 keep_answers: int = 4, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """pass@k and/or answer log-probs per condition over the traces with more than m removable steps
    (ablation.json content).

    ``step_scores[i]`` is trace i's per-step KFH score ``[K]``; ``max_new_tokens`` defaults to
    2|F| + 8 in forced mode and to the trace's own response length + 2|F| + 8 when continuing.
    ``measure`` is one of `MEASURES`; the log-prob measure scores F after ``</think>`` whatever
    ``mode`` says (``mode`` is how pass@k samples).  The steps removed are the same for both measures.
    ``warnings`` in the result flags an intact condition already at 0, or every trace skipped.
    ``on_progress(done, total)`` is called before each trace and at the end (it may raise to stop early).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose from {MEASURES}")
    sampling, scoring = measure in ("both", "passk"), measure in ("both", "logprob")
    m = int(m) if float(m).is_integer() else float(m)  # "m": 2 in the JSON, not 2.0
    if sampling and any(k > n_samples for k in ks):
        raise ValueError(f"pass@k needs k <= n samples ({n_samples}); got k = {list(ks)}")
    counts: dict[str, list[int]] = {c: [] for c in CONDITIONS}
    per_trace, skipped, reused = [], [], 0
    bar = tqdm(total=len(records), unit="trace", desc=f"ablating steps ({measure}, {mode})", disable=not progress)
    t0, sampled = time.monotonic(), 0
    for i, (r, s) in enumerate(zip(records, step_scores)):
        if on_progress is not None:
            on_progress(i, len(records))
        s = np.asarray(s, dtype=np.float64)
        if len(s) != r.n_steps:
            raise ValueError(f"trace {r.trace_id!r}: {len(s)} step scores for {r.n_steps} steps")
        m_r = resolve_m(m, r.n_steps - 1)
        if r.n_steps - 1 <= m_r:
            skipped.append(r.trace_id)
            bar.update(1)
            continue
        row = {"trace_id": r.trace_id, "removed": removed_steps(s, m_r, seed, r.trace_id)}
        hits = []
        if sampling:
            f_len = r.seg.answer[1] - r.seg.answer[0]
            budget = max_new_tokens or (2 * f_len + 8 + (len(r.response_ids) if mode == "continue" else 0))
            key = content_key("ablation", ABLATION_VERSION, loaded.fingerprint, r.trace_id, r.input_ids, r.seg.steps,
                              s.tolist(), getattr(verifier, "__name__", type(verifier).__name__), m_r, n_samples,
                              mode, temperature, budget, seed, batch_size, keep_answers)
            part, hit = _cached(cache, key, lambda: sample_answers(loaded, r, row["removed"], verifier, n_samples,
                                                                   mode, temperature, budget, seed, batch_size,
                                                                   keep_answers))
            sampled += 0 if hit else part["sampled_tokens"]
            row.update(correct=part["correct"], answers=part["answers"], sampled_tokens=part["sampled_tokens"])
            hits.append(hit)
            for cond in CONDITIONS:
                counts[cond].append(row["correct"][cond])
        if scoring:
            key = content_key("ablation-logprob", ABLATION_VERSION, loaded.fingerprint, r.trace_id, r.input_ids,
                              r.seg.steps, r.seg.answer, r.answer, r.correct, row["removed"])
            part, hit = _cached(cache, key, lambda: score_answers(loaded, r, row["removed"]))
            row.update(part)
            hits.append(hit)
        reused += all(hits)
        per_trace.append(row)
        if sampling:
            bar.set_postfix_str(f"{sampled / max(time.monotonic() - t0, 1e-9):.1f} sampled tok/s", refresh=False)
        bar.update(1)
    bar.close()
    if on_progress is not None:
        on_progress(len(records), len(records))
    if progress and reused:
        tqdm.write(f"ablation: {reused} of {len(per_trace)} traces reused from the cache in {cache.dir}",
                   file=sys.stderr)
    conditions = {}
    for cond in CONDITIONS:
        conditions[cond] = {f"pass@{k}": (float(np.mean([pass_at_k(n_samples, c, k) for c in counts[cond]]))
                                          if counts[cond] else None) for k in ks} if sampling else {}
        conditions[cond]["n_traces"] = len(per_trace)
    logprob, gaps = summarize(per_trace, n_samples if sampling else None, n_boot, seed)
    if scoring:
        for cond in CONDITIONS:
            conditions[cond]["logprob"] = logprob[cond]
    return {"n_traces": len(per_trace), "m": m, "measure": measure, "conditions": conditions, "gaps": gaps,
            "mode": mode, "n_samples": n_samples if sampling else None, "temperature": temperature,
            "ks": list(ks) if sampling else [], "skipped_too_few_steps": skipped,
            "warnings": ablation_warnings(conditions, mode, m, len(skipped)), "per_trace": per_trace}


def ablation_warnings(conditions: dict, mode: str, m: float = 1, n_skipped: int = 0) -> list[str]:
    """Why the result may show nothing: every trace was too short for m, or the intact traces
    already fail every sampled answer."""
    if n_skipped and not conditions["none"]["n_traces"]:
        return [f"all {n_skipped} traces have at most m={m} removable steps and were skipped: lower --m"]
    intact = [v for k, v in conditions["none"].items() if k.startswith("pass@") and v is not None]
    if intact and max(intact) == 0:
        return [f"the intact condition (no step removed) is already at 0: every {mode} answer fails the "
                "verifier, so removing steps cannot show anything; look at per_trace[].answers in "
                "ablation.json (a truncated answer: raise --answer-max-new-tokens; a wrong format: --verifier)"]
    return []


def per_trace_ci(result: dict, z: float = 1.96) -> dict[str, dict[int, float | None]]:
    """Half-width of a normal-approximation 95% CI of each condition's pass@k, over traces
    (None when ``per_trace`` is absent or holds fewer than two traces)."""
    rows, n = result.get("per_trace") or [], result["n_samples"]
    out: dict[str, dict[int, float | None]] = {}
    for cond in CONDITIONS:
        counts = [row["correct"][cond] for row in rows if cond in row.get("correct", {})]
        out[cond] = {k: (float(z * np.std([pass_at_k(n, c, k) for c in counts], ddof=1) / np.sqrt(len(counts)))
                         if len(counts) > 1 else None) for k in result["ks"]}
    return out


def summary_rows(result: dict) -> list[dict]:
    """One flat row per condition (pass@k, log p(F) and of the reference with CIs): for tables."""
    rows = []
    for cond, c in result["conditions"].items():
        row = {"removed": cond, "n_traces": c["n_traces"], **{k: v for k, v in c.items() if k.startswith("pass@")}}
        for key, v in c.get("logprob", {}).items():
            row[f"log p {key}"], row[f"{key} CI"] = v["mean"], _ci_text(v)
        rows.append(row)
    return rows


def gap_lines(result: dict) -> list[str]:
    """One line per paired gap: each measure's mean difference with its 95% CI."""
    return [f"{name}: " + "; ".join(f"{k} {v['mean']:+.3f} [{_ci_text(v)}]" for k, v in g.items() if v["n"])
            for name, g in result.get("gaps", {}).items()]


def _ci_text(v: dict) -> str:
    return "-" if v["mean"] is None else f"{v['ci_low']:.3f}, {v['ci_high']:.3f}"



def ablation_figure(result: dict) -> go.Figure:
    """One panel per measure taken: pass@k of each condition grouped by k, with 95% CIs over traces
    when per-trace counts are there; and the change in log p of F and of the reference answer when
    steps are removed, paired per trace against the intact trace, with 95% CIs (each on its own scale)."""
    ks = result.get("ks") or []
    removed = [c for c in CONDITIONS if c != "none"]
    rows = [row["logprob"] for row in result.get("per_trace") or [] if "logprob" in row]
    changes = {k: [mean_ci([r[c][k] - r["none"][k] for r in rows if k in r[c]]) for c in removed]
               for k in ("F_total", "reference_total")}
    changes = {k: v for k, v in changes.items() if all(x["n"] for x in v)}
    titles = {"F_total": "Δ log p(F), the trace's own answer", "reference_total": "Δ log p(reference answer)"}
    panels = (["pass@k (sampled answers)"] if ks else []) + [titles[k] for k in changes]
    fig = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=panels, horizontal_spacing=0.1)
    if ks:
        ci = per_trace_ci(result)
        for cond in CONDITIONS:
            c, errors = result["conditions"][cond], [ci[cond][k] for k in ks]
            shown = any(e is not None for e in errors)
            fig.add_trace(go.Bar(name=CONDITION_WORDS[cond], x=[f"pass@{k}" for k in ks],
                                 y=[c[f"pass@{k}"] for k in ks], marker_color=CONDITION_COLOURS[cond],
                                 legendgroup=cond, error_y={"type": "data", "array": errors, "visible": shown},
                                 hovertemplate="%{x}: %{y:.3f}<extra>" + cond + "</extra>"), row=1, col=1)
        fig.update_yaxes(range=[0, 1.05], title_text="pass@k (mean over traces, 95% CI)", row=1, col=1)
    for col, (key, values) in enumerate(changes.items(), start=2 if ks else 1):
        fig.add_trace(go.Bar(name=titles[key], x=removed, y=[v["mean"] for v in values], showlegend=False,
                             marker_color=[CONDITION_COLOURS[c] for c in removed],
                             error_y={"type": "data", "symmetric": False,
                                      "array": [v["ci_high"] - v["mean"] for v in values],
                                      "arrayminus": [v["mean"] - v["ci_low"] for v in values]},
                             hovertemplate="%{x} removed: %{y:.3f} nats<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(title_text="vs nothing removed, mean over traces (nats)", row=1, col=col)
        fig.update_xaxes(title_text="steps removed", row=1, col=col)
    answers = f", {result['n_samples']} answers each" if ks else ""
    fig.update_layout(barmode="group", legend={"title": "steps removed", "orientation": "h", "y": -0.2},
                      title=f"Step ablation ({result.get('measure', 'passk')}, {result['mode']}, m={result['m']} steps "
                            f"removed, {result['n_traces']} traces{answers}; log p teacher-forced after </think>)")
    return fig
