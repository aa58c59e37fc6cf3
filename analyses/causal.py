"""Head-level causal check: does knocking out the KFHs break the answer more than random heads?

On correct traces, the model greedily writes the answer after the full think block and
``</think>`` (forced-answer accuracy) while a set of heads is ablated: their slice of the attention
output (the input of ``o_proj``) is set to zero, or to its mean over the traces' tokens.  The
KFHs are compared with several random draws of as many other heads.  Interventions run through
nnsight on every forward of the generation loop.
"""

from __future__ import annotations

import warnings

import numpy as np
import plotly.graph_objects as go
import torch
from nnsight import TransformersModel
from tqdm.auto import tqdm

from workbench.generation import left_pad
from workbench.heads import Head, all_heads, head_name, model_shape
from workbench.models import LoadedModel
from workbench.traces import TraceRecord
from workbench.verifiers import Verifier

ABLATIONS = ("zero", "mean")


def check_layout(model) -> None:
    """Head ablation edits the input of every layer's ``self_attn.o_proj``: refuse other layouts."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(getattr(layer, "self_attn", None), "o_proj") for layer in layers):
        raise TypeError(f"head ablation expects model.layers[i].self_attn.o_proj (Llama/Qwen2/Mistral layout); "
                        f"{type(model).__name__} is laid out otherwise")


def _o_proj(lm: TransformersModel, layer: int):
    """The attention output projection of a layer (layout checked by `check_layout`)."""
    return lm.model.layers[layer].self_attn.o_proj


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def forced_prefixes(records: list[TraceRecord]) -> list[list[int]]:
    """Prompt + the whole think block + ``</think>``: the model writes F from here."""
    return [r.prompt_ids + r.response_ids[: r.seg.answer[0]] for r in records]


@torch.no_grad()
def head_means(lm: TransformersModel, prefixes: list[list[int]], layers: list[int], pad_id: int,
               batch_size: int, device: torch.device) -> dict[int, torch.Tensor]:
    """Mean ``o_proj`` input (every head's output) of each layer over all non-pad tokens."""
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for start in range(0, len(prefixes), batch_size):
        ids, mask = left_pad(prefixes[start : start + batch_size], pad_id, device)
        saved: dict[int, torch.Tensor] = {}
        with lm.trace(input_ids=ids, attention_mask=mask):
            for layer in sorted(layers):
                saved[layer] = _o_proj(lm, layer).input.save()
        real = mask[..., None].bool()
        for layer, x in saved.items():  # where(), not a product: pad rows may hold NaN
            sums[layer] = sums.get(layer, 0) + torch.where(real, x.float(), 0.0).sum(dim=(0, 1))
        count += int(mask.sum())
    return {layer: s / count for layer, s in sums.items()}


@torch.no_grad()
def ablated_answers(lm: TransformersModel, loaded: LoadedModel, prefixes: list[list[int]], heads: list[Head],
                    max_new_tokens: int, batch_size: int,
                    means: dict[int, torch.Tensor] | None = None) -> list[list[int]]:
    """Greedy answers with ``heads`` zeroed (or set to ``means``) at every generated position."""
    cfg, tok = loaded.model.config, loaded.tokenizer
    d, hidden = head_dim(cfg), cfg.num_attention_heads * head_dim(cfg)
    keep: dict[int, torch.Tensor] = {}
    for layer, h in heads:
        keep.setdefault(layer, torch.ones(hidden, dtype=loaded.dtype, device=loaded.device))[h * d : (h + 1) * d] = 0
    fill = {layer: (1 - k) * means[layer].to(k.dtype) if means else None for layer, k in keep.items()}
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id,
           "eos_token_id": tok.eos_token_id}
    out_rows: list[list[int]] = []
    for start in range(0, len(prefixes), batch_size):
        ids, mask = left_pad(prefixes[start : start + batch_size], tok.pad_token_id, loaded.device)
        if not heads:
            result = loaded.model.generate(input_ids=ids, attention_mask=mask, **gen)
        else:
            with warnings.catch_warnings():  # an open tracer.all() loop ends by outrunning the generation
                warnings.filterwarnings("ignore", message=".*never reached.*")
                with lm.generate(**gen) as tracer:
                    with tracer.invoke(input_ids=ids, attention_mask=mask):
                        for _ in tracer.all():
                            for layer in sorted(keep):
                                proj = _o_proj(lm, layer)
                                x = proj.input * keep[layer]
                                proj.input = x if fill[layer] is None else x + fill[layer]
                    with tracer.invoke():
                        result = tracer.result.save()
        for row in result[:, ids.shape[1] :].tolist():
            out_rows.append(row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return out_rows


def random_head_sets(config, exclude: list[Head], size: int, draws: int, seed: int) -> list[list[Head]]:
    """``draws`` sets of ``size`` heads drawn uniformly from the heads not in ``exclude``."""
    pool = [h for h in all_heads(config) if h not in set(exclude)]
    if size > len(pool):
        raise ValueError(f"cannot draw {size} random heads from the {len(pool)} non-KFH heads")
    rng = np.random.default_rng(seed)
    return [sorted(pool[i] for i in rng.choice(len(pool), size, replace=False)) for _ in range(draws)]


def run_causal(loaded: LoadedModel, records: list[TraceRecord], kfh: list[Head], verifier: Verifier,
               ablation: str = "zero", n_random: int = 5, seed: int = 0, batch_size: int = 32,
               max_new_tokens: int | None = None, progress: bool = True) -> dict:
    """Forced-answer accuracy with no ablation, the KFHs ablated, and ``n_random`` random head sets."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose from {ABLATIONS}")
    if not records:
        raise ValueError("the causal check needs at least one trace")
    if n_random < 1:
        raise ValueError(f"the causal check needs at least one random head set, got n_random={n_random}")
    check_layout(loaded.model)
    tok = loaded.tokenizer
    lm = TransformersModel(loaded.model, tokenizer=tok)
    prefixes = forced_prefixes(records)
    budget = max_new_tokens or 2 * max(r.seg.answer[1] - r.seg.answer[0] for r in records) + 8
    sets = {"none": [], "kfh": list(kfh)}
    for i, hs in enumerate(random_head_sets(loaded.model.config, kfh, len(kfh), n_random, seed)):
        sets[f"random_{i}"] = hs
    means = None
    if ablation == "mean":
        layers = sorted({layer for hs in sets.values() for layer, _ in hs})
        means = head_means(lm, prefixes, layers, tok.pad_token_id, batch_size, loaded.device)
    accuracy = {}
    for name, hs in tqdm(sets.items(), desc=f"{ablation}-ablating heads", disable=not progress):
        answers = ablated_answers(lm, loaded, prefixes, hs, budget, batch_size, means)
        accuracy[name] = float(np.mean([verifier(r.prompt, tok.decode(r.close_ids + a, skip_special_tokens=True),
                                                 r.answer) for r, a in zip(records, answers)]))
    random_acc = [accuracy[k] for k in sets if k.startswith("random_")]
    base = accuracy["none"]
    return {"ablation": ablation, "n_traces": len(records), "kfh": [head_name(h) for h in kfh],
            "accuracy_none": base, "accuracy_kfh": accuracy["kfh"], "accuracy_random": random_acc,
            "delta_kfh": accuracy["kfh"] - base,
            "delta_random_mean": float(np.mean(random_acc)) - base if random_acc else None,
            "delta_random_std": float(np.std(random_acc)) if random_acc else None,
            "random_heads": {k: [head_name(h) for h in v] for k, v in sets.items() if k.startswith("random_")},
            "n_layers": model_shape(loaded.model.config)[0]}


def causal_figure(result: dict) -> go.Figure:
    """Forced-answer accuracy: intact, KFHs ablated, each random draw."""
    names = ["none", "KFHs"] + [f"random {i}" for i in range(len(result["accuracy_random"]))]
    values = [result["accuracy_none"], result["accuracy_kfh"], *result["accuracy_random"]]
    colors = ["gray", "crimson"] + ["steelblue"] * len(result["accuracy_random"])
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colors))
    fig.update_layout(title=f"Forced-answer accuracy, {result['ablation']}-ablating {len(result['kfh'])} heads "
                            f"({result['n_traces']} traces)", yaxis_range=[0, 1], yaxis_title="accuracy")
    return fig
