"""Batched sampling with a KV cache, returning the exact token ids sampled, and teacher-forced
log-probabilities of given continuations (`tail_logprobs`, `continuation_logprobs`).

Everything downstream (segmentation, scoring, training) works on the sampled ids, never on
re-tokenised text, so prompts are left-padded and each response is cut after its first EOS.
"""

from __future__ import annotations

import copy
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


PADDED_ATTENTION_ELEMENTS = 1 << 27  # rows x heads x T^2 a padded batch may cost (the masked SDPA path builds it)


def _batches(rows: list[list[int]], batch_size: int, n_heads: int) -> list[list[int]]:
    """Consecutive row indices, at most ``batch_size`` a batch and at most `PADDED_ATTENTION_ELEMENTS`
    of attention scores; a long row goes alone (unpadded, it runs the memory-lean causal kernel)."""
    out: list[list[int]] = []
    for i, row in enumerate(rows):
        if out and len(out[-1]) < batch_size:
            width = max(len(row), *(len(rows[j]) for j in out[-1]))
            if (len(out[-1]) + 1) * n_heads * width**2 <= PADDED_ATTENTION_ELEMENTS:
                out[-1].append(i)
                continue
        out.append([i])
    return out


@torch.no_grad()
def tail_logprobs(model, pad_id: int, rows: list[list[int]], tail_len: int, batch_size: int = 8) -> np.ndarray:
    """[len(rows), tail_len] log p of each of the last ``tail_len`` tokens of each row, teacher-forced.

    Rows are left-padded so every tail sits at the end and only its logits are computed; long rows
    are scored one at a time so no padded batch builds a large attention matrix.
    """
    device = next(model.parameters()).device
    out = []
    for batch in _batches(rows, batch_size, model.config.num_attention_heads):
        ids, mask = left_pad([rows[i] for i in batch], pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=tail_len + 1).logits[:, :-1].float()
        targets = ids[:, ids.shape[1] - tail_len :]
        out.append(logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu())
    return torch.cat(out).double().numpy()


@torch.no_grad()
def continuation_logprobs(model, prefix: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
    """log p of each token of each continuation, teacher-forced after ``prefix``.

    The prefix runs once (unpadded: the memory-lean causal kernel) and each continuation reads a
    copy of its KV cache, so scoring several short endings of one long trace costs one long forward.
    """
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)
    first = out.logits[0, -1].float().log_softmax(-1)
    scored = []
    for cont in continuations:
        lp = [first[cont[0]].item()]
        if len(cont) > 1:
            cache = copy.deepcopy(out.cache)
            logits = model(input_ids=torch.tensor([cont[:-1]], device=device), cache=cache, use_cache=True).logits
            lp += logits[0].float().log_softmax(-1).gather(-1, torch.tensor(cont[1:], device=device)[:, None])[:, 0].tolist()
        scored.append(np.asarray(lp, dtype=np.float64))
    return scored


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
