"""Train an organism: a small Qwen2 (GQA) language model on its task's reference traces.

Supervised next-token training on freshly sampled traces, loss on the response only (the
prompt's definitions are random and unpredictable), batches grouped by length so little
compute goes to padding.  From scratch, or warm-started from another organism's checkpoint (a
vocabulary that extends the checkpoint's keeps its ids; new words get new embedding rows).  The run
checkpoints atomically and keeps the best accuracy at temperature 1.0, or the last evaluation for an
organism whose reference traces are themselves fallible (``keep=last``).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from workbench.checkpoints import save_hf_atomic
from workbench.generation import encode_prompts, sample
from workbench.organism import get_organism, task


@dataclass
class OrganismTrainConfig:
    organism: str = "organism"  # which registered organism's task and tokenizer
    layers: int = 4
    hidden: int = 192
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    batch_size: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    steps: int = 4000
    max_minutes: float = 100.0
    eval_every: int = 250
    stop_at_accuracy: float = 0.97  # stop early once the sampled accuracy reaches this
    eval_problems: int = 128
    seed: int = 0
    threads: int = 2
    redundant_weight: float = 0.3
    init_from: str | None = None  # a checkpoint folder to continue from instead of random weights
    keep: str = "best"  # best: the checkpoint with the best sampled accuracy; last: the last evaluated


def model_config(cfg: OrganismTrainConfig, vocab_size: int, tok) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


@torch.no_grad()
def compose_reference_embeddings(model: Qwen2ForCausalLM, tok) -> None:
    """Start each definition token ``=c+3`` at the mean of the embeddings of ``c`` and ``+3``.

    There are 324 such tokens, each in about 2% of traces; from independent random embeddings the
    model has to learn the operator of each one separately (about 10% accuracy after 1500 steps).
    Composed, they begin with the operator and the operand readable by the circuits that the
    frequent tokens ``+3`` and ``c`` train.
    """
    emb = model.get_input_embeddings().weight
    for name in task.VARIABLES:
        for op, k in task.OPERATIONS:
            parts = tok.convert_tokens_to_ids([name, task.op_word(op, k)])
            emb[tok.convert_tokens_to_ids(task.ref_word(name, op, k))] = emb[parts].sum(0) / math.sqrt(2)


def token_weights(trace: task.Trace, redundant_weight: float) -> list[float]:
    """Loss weight of each response token (one token per word): a redundant step's body weighs
    less, so the gradient goes to the lookups and arithmetic of the chain; its first word (the
    model's choice of what to do next) and everything else weigh 1.  A slip is a behaviour to
    imitate at its rate, not filler, so it weighs 1 too."""
    weights: list[float] = []
    for s in trace.steps:
        body = redundant_weight if s.label == "redundant" and s.kind != "slip" else 1.0
        weights += [1.0] + [body] * (len(s.words) - 1)
    return weights + [1.0] * (len(trace.answer_words) + 2)  # </think>, the answer, EOS


def training_batches(rng: random.Random, tok, trace_task, batch_size: int, redundant_weight: float = 1.0,
                     pool_batches: int = 16):
    """Yield (input_ids, labels, weights) batches of ``trace_task``'s reference traces; each pool of
    traces is sorted by length, then split."""
    while True:
        rows = []
        for _ in range(batch_size * pool_batches):
            t = trace_task.sample_trace(rng)
            p = tok(t.prompt)["input_ids"]
            r = tok(t.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append((p, r, token_weights(t, redundant_weight)))
        rows.sort(key=lambda x: len(x[0]) + len(x[1]))
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            width = max(len(p) + len(r) for p, r, _ in b)
            ids = torch.full((len(b), width), tok.pad_token_id)
            labels = torch.full((len(b), width), -100)
            weights = torch.zeros((len(b), width))
            for i, (p, r, w) in enumerate(b):
                ids[i, : len(p) + len(r)] = torch.tensor(p + r)
                labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
                weights[i, len(p) : len(p) + len(r)] = torch.tensor(w)
            yield ids, labels, weights


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, weighted per target token and normalised by the total weight."""
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none")
    w = weights[:, 1:].flatten()
    return (ce * w).sum() / w.sum()


def sampled_accuracy(model, tok, trace_task, problems: list[task.Problem], temperature: float = 1.0) -> float:
    """Accuracy at the temperature the organism is judged at (greedy decoding of a half-trained
    model loops on its most likely step, so it says little)."""
    out = sample(model, tok, encode_prompts(tok, [p.prompt() for p in problems]), max_new_tokens=320,
                 temperature=temperature)
    return sum(trace_task.verify(p, t) for p, t in zip(problems, out.texts)) / len(problems)


def warm_start(path: str, tok) -> Qwen2ForCausalLM:
    """A checkpoint's weights, its embeddings grown to ``tok``'s vocabulary when that extends it."""
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
    if model.config.vocab_size > len(tok):
        raise ValueError(f"init_from {path}: its vocabulary ({model.config.vocab_size}) is larger than the "
                         f"organism's ({len(tok)})")
    if model.config.vocab_size < len(tok):
        model.resize_token_embeddings(len(tok))  # new rows start at the mean embedding
    return model


def train(cfg: OrganismTrainConfig, out_dir: Path | None = None) -> dict:
    """Train, keep the best (or last) evaluated checkpoint in ``out_dir`` (default: the organism's
    shipped folder), return a summary."""
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"keep must be best or last, not {cfg.keep!r}")
    org = get_organism(cfg.organism)
    out_dir = Path(out_dir or org.checkpoint)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    tok = org.build_tokenizer()
    if cfg.init_from:
        model = warm_start(cfg.init_from, tok)
    else:
        model = Qwen2ForCausalLM(model_config(cfg, len(tok), tok))
        compose_reference_embeddings(model, tok)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    schedule = lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * (0.55 + 0.45 * math.cos(math.pi * min(1.0, s / cfg.steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    eval_rng = random.Random(10_000 + cfg.seed)
    eval_problems = [org.task.sample_problem(eval_rng) for _ in range(cfg.eval_problems)]
    start, tokens, best, kept, history = time.time(), 0, -1.0, None, []
    batches = training_batches(rng, tok, org.task, cfg.batch_size, cfg.redundant_weight)
    for step in range(1, cfg.steps + 1):
        model.train()
        ids, labels, weights = next(batches)
        logits = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits
        loss = weighted_loss(logits, labels, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += int((ids != tok.pad_token_id).sum())
        minutes = (time.time() - start) / 60
        if step % cfg.eval_every == 0 or step == cfg.steps or minutes > cfg.max_minutes:
            model.eval()
            acc = sampled_accuracy(model, tok, org.task, eval_problems)
            row = {"step": step, "loss": round(loss.item(), 4), "accuracy": acc,
                   "minutes": round(minutes, 2), "tokens_per_s": round(tokens / (time.time() - start))}
            history.append(row)
            print(json.dumps(row), flush=True)
            if acc >= best or cfg.keep == "last":
                best, kept = max(best, acc), row
                model.generation_config.pad_token_id = tok.pad_token_id
                save_hf_atomic(model, tok, out_dir)
            if minutes > cfg.max_minutes or acc >= cfg.stop_at_accuracy:
                break
    summary = {"params": n_params, "config": asdict(cfg), "best_accuracy": best, "kept": kept,
               "minutes": round((time.time() - start) / 60, 2), "history": history}
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
