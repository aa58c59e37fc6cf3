"""Padded training batches (their log-probs: ``workbench.training.logprobs``).

Rows are prompt + response, right-padded, so every real token keeps the position it had when
it was sampled (and absolute token spans equal padded-tensor coordinates).  Token-level
tensors live in *response coordinates* ``[N, T]``: column j is response token j.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [N, W] right-padded prompt + response
    attention_mask: torch.Tensor  # [N, W]
    positions: torch.Tensor  # [N, T] column of the logits that predicts response token j
    targets: torch.Tensor  # [N, T] response token ids (pad 0)
    mask: torch.Tensor  # [N, T] float, 1 on real response tokens
    seq_lens: torch.Tensor  # [N] prompt + response tokens

    def rows(self, index: torch.Tensor | slice, device: torch.device) -> "Packed":
        """A micro-batch on ``device``, trimmed to its own longest row."""
        seq_lens = self.seq_lens[index]
        width = int(seq_lens.max())
        return Packed(self.input_ids[index, :width].to(device), self.attention_mask[index, :width].to(device),
                      self.positions[index].to(device), self.targets[index].to(device),
                      self.mask[index].to(device), seq_lens)


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Packed:
    n = len(prompt_ids)
    seq_lens = torch.tensor([len(p) + len(r) for p, r in zip(prompt_ids, response_ids)])
    width, t = int(seq_lens.max()), max(max(len(r) for r in response_ids), 1)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, t), dtype=torch.long)
    targets = torch.zeros((n, t), dtype=torch.long)
    mask = torch.zeros((n, t))
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        positions[i, : len(r)] = torch.arange(len(p) - 1, len(p) + len(r) - 1)
        targets[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return Packed(input_ids, attention_mask, positions, targets, mask, seq_lens)


def autocast(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 on the CPU.

    The policy's weights stay fp32 and only its compute runs in bf16.  AdamW needs fp32 master
    weights either way, so bf16 weights plus an fp32 master copy would cost the same 16 bytes per
    parameter (2 weights + 2 grads + 4 master + 8 moments, against 4 + 4 + 8) and add a copy step;
    autocast keeps the update exact and is what verl's FSDP mixed precision does (fp32 parameters,
    bf16 compute).  The frozen KL reference has no optimizer state and is held in bf16 instead
    (``loop.frozen_copy``).
    """
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
