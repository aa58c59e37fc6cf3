"""Batched sampling with a KV cache, returning the exact token ids sampled, and teacher-forced
log-probabilities of given continuations (`tail_logprobs`).

Everything downstream (segmentation, scoring, training) works on the sampled ids, never on
re-tokenised text, so prompts are left-padded and each response is cut after its first EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Samples:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # includes the EOS token when one was produced
    texts: list[str]  # decoded responses, special tokens removed
    truncated: list[bool]  # hit max_new_tokens before EOS


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's own special tokens (e.g. BOS)."""
    return [tokenizer(p)["input_ids"] for p in prompts]


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def tail_logprobs(model, pad_id: int, rows: list[list[int]], tail_len: int, batch_size: int = 8) -> np.ndarray:
    """[len(rows), tail_len] log p of each of the last ``tail_len`` tokens of each row, teacher-forced.

    Rows are left-padded so every tail sits at the end and only its logits are computed.
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        ids, mask = left_pad(rows[start : start + batch_size], pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=tail_len + 1).logits[:, :-1].float()
        targets = ids[:, ids.shape[1] - tail_len :]
        out.append(logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu())
    return torch.cat(out).double().numpy()


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
) -> Samples:
    """Sample one response per prompt (temperature 0 means greedy)."""
    eos = tokenizer.eos_token_id
    responses: list[list[int]] = []
    truncated: list[bool] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id, next(model.parameters()).device)
        kwargs = {"do_sample": False} if temperature == 0 else {
            "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, **kwargs)
        for row in out[:, ids.shape[1] :].tolist():
            if eos in row:
                responses.append(row[: row.index(eos) + 1])
                truncated.append(False)
            else:
                responses.append(row)
                truncated.append(True)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Samples([list(p) for p in prompt_ids], responses, texts, truncated)
