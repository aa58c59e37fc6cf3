"""Per-token log-probs of sampled responses at the sampling temperature, without full-vocabulary logits.

Temperature: responses sampled at temperature tau come from ``softmax(logits / tau)``, so the
log-probs of the PPO ratio (and of the KL reference) divide the logits by tau as well, as verl and
TRL do; otherwise the ratio compares against another policy than the one that sampled.  top-p
truncation is not modelled (nor is it there).

Memory: the decoder runs once over the padded rows; only the hidden states at the real response
positions go through the LM head, ``chunk_tokens`` rows at a time, and each chunk becomes log-probs
by a selective log-softmax (the target's logit minus the fp32 logsumexp), so no ``[T, V]`` tensor
-- let alone an fp32 one -- ever exists.  With gradients on, each chunk is checkpointed: its logits
are recomputed in the backward pass rather than kept, so the head's backward also holds one chunk at
a time (for one extra LM-head matmul).  The default chunk holds 128 MiB of fp32 logits, about 220
tokens at a 152k vocabulary.

The model's logits must be its LM head applied to the decoder's last hidden state (Qwen2, Llama,
Mistral, ...; not models that soft-cap or scale logits): ``check_head`` verifies that on a few
tokens and the trainer calls it once per model.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from workbench.training.batch import Packed, autocast

CHUNK_BYTES = 128 << 20


def chunk_tokens_for(vocab_size: int) -> int:
    """Tokens per LM-head chunk: ``CHUNK_BYTES`` of fp32 logits."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def _chunk_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)


def selective_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                       temperature: float = 1.0, chunk_tokens: int = 256) -> torch.Tensor:
    """``[M]`` fp32 ``log softmax(head(hidden) / temperature)[target]`` of ``[M, H]`` hidden states,
    ``chunk_tokens`` rows at a time (checkpointed when gradients are on)."""
    grad = torch.is_grad_enabled()
    parts = []
    for h, t in zip(hidden.split(chunk_tokens), targets.split(chunk_tokens)):
        if grad:
            parts.append(checkpoint(_chunk_logprobs, h, head, t, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, head, t, temperature))
    return torch.cat(parts) if parts else torch.zeros(0, device=hidden.device)


def response_logprobs(model, batch: Packed, temperature: float = 1.0, chunk_tokens: int | None = None
                      ) -> torch.Tensor:
    """``[n, T]`` fp32 log-prob of each sampled response token under ``model`` at ``temperature``
    (0 on padding)."""
    device = batch.input_ids.device
    head = model.get_output_embeddings()
    chunk = chunk_tokens or chunk_tokens_for(head.weight.shape[0])
    with autocast(device):
        hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     use_cache=False).last_hidden_state
        rows, cols = batch.mask.nonzero(as_tuple=True)
        picked = hidden[rows, batch.positions[rows, cols]]
        logp = selective_logprobs(picked, head, batch.targets[rows, cols], temperature, chunk)
    out = torch.zeros(batch.mask.shape, device=device)
    out[rows, cols] = logp
    return out


@torch.no_grad()
def check_head(model, tokens: int = 4) -> None:
    """Raise ValueError unless ``model``'s logits are its LM head applied to its last hidden state."""
    device = next(model.parameters()).device
    ids = torch.arange(tokens, device=device)[None] % model.get_output_embeddings().weight.shape[0]
    with autocast(device):
        full = model(input_ids=ids, use_cache=False).logits.float()
        lean = model.get_output_embeddings()(model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state)
    if not torch.allclose(full, lean.float(), rtol=1e-3, atol=1e-3):
        raise ValueError(f"{type(model).__name__}: its logits are not its LM head applied to the last hidden state "
                         "(logit soft-capping or scaling?); the trainer's log-prob pass does not support this model")
