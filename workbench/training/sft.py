"""Supervised fine-tuning of a copy of a model on a trace set's responses: a second checkpoint of
the same shape when no RL run exists (the stability study and the app compare against it)."""

from __future__ import annotations

from pathlib import Path

import torch

from workbench.checkpoints import save_hf_atomic
from workbench.models import LoadedModel
from workbench.traces import TraceRecord


def supervised_finetune(loaded: LoadedModel, records: list[TraceRecord], steps: int, lr: float, out: Path,
                        batch_size: int = 4) -> Path:
    """A copy of the model trained ``steps`` steps on the trace set's responses (loss on the response
    tokens only), saved to ``out`` as an HF checkpoint.

    The loaded model itself is restored afterwards: it stays the reference checkpoint.
    """
    if not records:
        raise ValueError("supervised fine-tuning needs at least one trace")
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    try:
        for step in range(steps):
            batch = [records[(step * batch_size + j) % len(records)] for j in range(batch_size)]
            width = max(len(r.input_ids) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            for b, r in enumerate(batch):
                ids[b, : len(r.input_ids)] = torch.tensor(r.input_ids)
                labels[b, len(r.prompt_ids) : len(r.input_ids)] = torch.tensor(r.response_ids)
            mask = torch.arange(width) < torch.tensor([len(r.input_ids) for r in batch])[:, None]
            loss = model(input_ids=ids.to(loaded.device), attention_mask=mask.long().to(loaded.device),
                         labels=labels.to(loaded.device)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        save_hf_atomic(model, loaded.tokenizer, out)
    finally:
        model.eval()
        model.load_state_dict(state)
    return out
