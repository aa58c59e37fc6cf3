"""Step ablation: do the steps the KFHs score highest matter for the answer?

From correct traces, remove the m steps with the highest KFH score, the m lowest, or m random
ones (the first step -- the plan -- always stays), then either force the end of thinking
(append ``</think>``) and sample the answer, or let the model continue reasoning from the cut
trace.  Each condition samples n answers per trace; pass@k uses the unbiased estimator
1 - C(n-c, k) / C(n, k) in its stable product form, averaged over traces.

Each trace is seeded on its own (from the seed and its id), so a trace's result does not depend
on the others: with a ``JsonCache`` every finished trace is stored at once and a killed run
resumes where it stopped, with the numbers an uninterrupted run gives.  The first answers of each
condition are kept with their verdicts (``per_trace[].answers``), so a 0 can be looked at.
"""

from __future__ import annotations

import copy
import sys
import time
import zlib
from typing import Callable

import numpy as np
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from workbench.cache import JsonCache, content_key
from workbench.models import LoadedModel
from workbench.traces import TraceRecord
from workbench.verifiers import Verifier

ABLATION_VERSION = 1  # bump when a cached per-trace result would change meaning
CONDITIONS = ("none", "high", "low", "random")
CONDITION_COLOURS = {"none": "#7f7f7f", "high": "#d62728", "low": "#1f77b4", "random": "#ff7f0e"}
CONDITION_WORDS = {"none": "none (the whole trace)", "high": "the m highest-score steps",
                   "low": "the m lowest-score steps", "random": "m random steps"}
CACHE_TOKENS = 16384  # rows x prefix tokens held in one repeated KV cache: bounds memory on long traces
MODES = ("forced", "continue")


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


def ablate_trace(loaded: LoadedModel, r: TraceRecord, s: np.ndarray, m_r: int, verifier: Verifier, n_samples: int,
                 mode: str, temperature: float, budget: int, seed: int, batch_size: int, keep_answers: int) -> dict:
    """One trace's row: the steps removed, the correct count and the first ``keep_answers`` answers
    (text and verdict) of every condition, and the tokens sampled."""
    tok = loaded.tokenizer
    rng = np.random.default_rng(trace_seed(seed, r.trace_id))
    torch.manual_seed(trace_seed(seed, r.trace_id))
    row = {"trace_id": r.trace_id, "removed": {}, "correct": {}, "answers": {}, "sampled_tokens": 0}
    head = r.close_ids if mode == "forced" else []
    for cond in CONDITIONS:
        removed = choose_steps(s, m_r, cond, rng)
        outs = sample_continuations(loaded.model, ablated_prefix(r, removed, mode), n_samples, budget, temperature,
                                    tok.eos_token_id, batch_size)
        texts = [tok.decode(head + o, skip_special_tokens=True) for o in outs]
        verdicts = [bool(verifier(r.prompt, t, r.answer)) for t in texts]
        row["removed"][cond], row["correct"][cond] = removed, sum(verdicts)
        row["answers"][cond] = [{"text": t, "correct": v} for t, v in zip(texts[:keep_answers], verdicts)]
        row["sampled_tokens"] += sum(len(o) for o in outs)
    return row


def run_ablation(loaded: LoadedModel, records: list[TraceRecord], step_scores: list[np.ndarray], m: float,
                 verifier: Verifier, n_samples: int = 32, ks: tuple[int, ...] = (1, 4, 16, 32), mode: str = "forced",
                 temperature: float = 1.0, max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 32,
                 progress: bool = True, cache: JsonCache | None = None, keep_answers: int = 4,
                 on_progress: Callable[[int, int], None] | None = None) -> dict:
    """pass@k per condition over the traces with more than m removable steps (ablation.json content).

    ``step_scores[i]`` is trace i's per-step KFH score ``[K]``; ``max_new_tokens`` defaults to
    2|F| + 8 in forced mode and to the trace's own response length + 2|F| + 8 when continuing.
    ``warnings`` in the result flags an intact condition already at 0, or every trace skipped.
    ``on_progress(done, total)`` is called before each trace and at the end (it may raise to stop early).
    """
    m = int(m) if float(m).is_integer() else float(m)  # "m": 2 in the JSON, not 2.0
    if any(k > n_samples for k in ks):
        raise ValueError(f"pass@k needs k <= n samples ({n_samples}); got k = {list(ks)}")
    counts: dict[str, list[int]] = {c: [] for c in CONDITIONS}
    per_trace, skipped, reused = [], [], 0
    bar = tqdm(total=len(records), unit="trace", desc=f"ablating steps ({mode})", disable=not progress)
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
        f_len = r.seg.answer[1] - r.seg.answer[0]
        budget = max_new_tokens or (2 * f_len + 8 + (len(r.response_ids) if mode == "continue" else 0))
        key = content_key("ablation", ABLATION_VERSION, loaded.fingerprint, r.trace_id, r.input_ids, r.seg.steps,
                          s.tolist(), getattr(verifier, "__name__", type(verifier).__name__), m_r, n_samples, mode,
                          temperature, budget, seed, batch_size, keep_answers)
        row = cache.get(key) if cache is not None else None
        if row is None:
            row = ablate_trace(loaded, r, s, m_r, verifier, n_samples, mode, temperature, budget, seed, batch_size,
                               keep_answers)
            sampled += row["sampled_tokens"]
            if cache is not None:
                cache.put(key, row)
        else:
            reused += 1
        for cond in CONDITIONS:
            counts[cond].append(row["correct"][cond])
        per_trace.append(row)
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
                                          if counts[cond] else None) for k in ks}
        conditions[cond]["n_traces"] = len(counts[cond])
    return {"n_traces": len(per_trace), "m": m, "conditions": conditions, "mode": mode, "n_samples": n_samples,
            "temperature": temperature, "ks": list(ks), "skipped_too_few_steps": skipped,
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


def ablation_figure(result: dict) -> go.Figure:
    """pass@k of each condition, grouped by k, with 95% CIs over traces when per-trace counts are there."""
    ks = result["ks"]
    ci = per_trace_ci(result)
    fig = go.Figure()
    for cond in CONDITIONS:
        c = result["conditions"][cond]
        errors = [ci[cond][k] for k in ks]
        fig.add_trace(go.Bar(name=CONDITION_WORDS[cond], x=[f"pass@{k}" for k in ks], y=[c[f"pass@{k}"] for k in ks],
                             marker_color=CONDITION_COLOURS[cond],
                             error_y={"type": "data", "array": errors, "visible": any(e is not None for e in errors)},
                             hovertemplate="%{x}: %{y:.3f}<extra>" + cond + "</extra>"))
    fig.update_layout(barmode="group", yaxis_range=[0, 1.05], yaxis_title="pass@k (mean over traces, 95% CI)",
                      title=f"Step ablation ({result['mode']}, m={result['m']} steps removed, {result['n_traces']} "
                            f"traces, {result['n_samples']} answers each)",
                      legend={"title": "steps removed", "orientation": "h", "y": -0.2})
    return fig
