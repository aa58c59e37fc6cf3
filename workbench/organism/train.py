"""Train the organism from scratch: a small Qwen2 (GQA) language model on reference traces.

Supervised next-token training on freshly sampled traces, loss on the response only (the
prompt's definitions are random and unpredictable), batches grouped by length so little
compute goes to padding.  The run checkpoints atomically and keeps the best greedy accuracy.
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
from workbench.organism import CHECKPOINT_DIR, task
from workbench.generation import encode_prompts, sample
from workbench.organism.tokenizer import build_tokenizer


@dataclass
class OrganismTrainConfig:
    layers: int = 4
    hidden: int = 192
    heads: int = 6
    kv_heads: int = 2
    intermediate: int = 512
    batch_size: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    steps: int = 6000
    max_minutes: float = 90.0
    eval_every: int = 500
    eval_problems: int = 128
    seed: int = 0
    threads: int = 2


def model_config(cfg: OrganismTrainConfig, vocab_size: int, tok) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


def training_batches(rng: random.Random, tok, batch_size: int, pool_batches: int = 16):
    """Yield (input_ids, labels) batches; each pool of traces is sorted by length, then split."""
    while True:
        rows = []
        for _ in range(batch_size * pool_batches):
            t = task.sample_trace(rng)
            p = tok(t.prompt, add_special_tokens=False)["input_ids"]
            r = tok(t.response, add_special_tokens=False)["input_ids"]
            rows.append(([tok.bos_token_id, *p], [*r, tok.eos_token_id]))
        rows.sort(key=lambda x: len(x[0]) + len(x[1]))
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            width = max(len(p) + len(r) for p, r in b)
            ids = torch.full((len(b), width), tok.pad_token_id)
            labels = torch.full((len(b), width), -100)
            for i, (p, r) in enumerate(b):
                ids[i, : len(p) + len(r)] = torch.tensor(p + r)
                labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
            yield ids, labels


def greedy_accuracy(model, tok, problems: list[task.Problem]) -> float:
    out = sample(model, tok, encode_prompts(tok, [p.prompt() for p in problems]), max_new_tokens=320,
                 temperature=0.0)
    return sum(task.verify(p, t) for p, t in zip(problems, out.texts)) / len(problems)


def train(cfg: OrganismTrainConfig, out_dir: Path = CHECKPOINT_DIR) -> dict:
    """Train, keep the checkpoint with the best greedy accuracy in ``out_dir``, return a summary."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    tok = build_tokenizer()
    model = Qwen2ForCausalLM(model_config(cfg, len(tok), tok))
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    schedule = lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * (0.55 + 0.45 * math.cos(math.pi * min(1.0, s / cfg.steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    eval_rng = random.Random(10_000 + cfg.seed)
    eval_problems = [task.sample_problem(eval_rng) for _ in range(cfg.eval_problems)]
    start, tokens, best, history = time.time(), 0, -1.0, []
    batches = training_batches(rng, tok, cfg.batch_size)
    for step in range(1, cfg.steps + 1):
        model.train()
        ids, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += int((ids != tok.pad_token_id).sum())
        minutes = (time.time() - start) / 60
        if step % cfg.eval_every == 0 or step == cfg.steps or minutes > cfg.max_minutes:
            model.eval()
            acc = greedy_accuracy(model, tok, eval_problems)
            row = {"step": step, "loss": round(loss.item(), 4), "greedy_accuracy": acc,
                   "minutes": round(minutes, 2), "tokens_per_s": round(tokens / (time.time() - start))}
            history.append(row)
            print(json.dumps(row), flush=True)
            if acc >= best:
                best = acc
                model.generation_config.pad_token_id = tok.pad_token_id
                save_hf_atomic(model, tok, out_dir)
            if minutes > cfg.max_minutes:
                break
    summary = {"params": n_params, "config": asdict(cfg), "best_greedy_accuracy": best,
               "minutes": round((time.time() - start) / 60, 2), "history": history}
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
