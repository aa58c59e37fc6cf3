"""The policy update: PPO-clip with dual clip, token-mean aggregation, optional k3 KL to a reference."""

from __future__ import annotations

import torch

from workbench.config import TrainConfig
from workbench.training.batch import Packed
from workbench.training.logprobs import response_logprobs


def ppo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float,
                   clip_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss with dual clip (negative advantages bounded by ``-A * clip_c``),
    and where the ratio was clipped."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip, 1 + clip)
    loss = torch.maximum(unclipped, clipped)
    loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)
    return loss, (clipped > unclipped)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference), per token, always >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def lr_schedule(warmup_steps: int):
    """Constant learning rate after a linear warm-up (the paper trains at a constant rate)."""
    return lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0


def update(model, optimizer, scheduler, packed: Packed, old_logp: torch.Tensor, adv: torch.Tensor,
           cfg: TrainConfig, ref_logp: torch.Tensor | None = None, temperature: float = 1.0) -> dict:
    """``cfg.ppo_epochs`` passes of ``cfg.mini_batches`` optimizer steps over the rollout's rows,
    with log-probs at the sampling ``temperature`` (as the old ones were taken).

    The model stays in eval mode (no dropout), as it was for the old log-probs, so the first
    ratio of an on-policy step is exactly 1.
    """
    device = next(model.parameters()).device
    n = packed.input_ids.shape[0]
    totals = {"pg_loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "grad_norm": 0.0}
    n_updates = 0
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n) if cfg.mini_batches > 1 else torch.arange(n)
        for mini in order.chunk(cfg.mini_batches):
            tokens = packed.mask[mini].sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            for micro in mini[packed.seq_lens[mini].argsort()].split(cfg.micro_batch_size):  # little padding
                batch = packed.rows(micro, device)
                logp = response_logprobs(model, batch, temperature)
                a, old = adv[micro].to(device), old_logp[micro].to(device)
                tok_loss, clipped = ppo_token_loss(logp, old, a, cfg.clip_ratio, cfg.clip_ratio_c)
                loss_sum = (tok_loss * batch.mask).sum()
                totals["pg_loss"] += loss_sum.item() / tokens.item()
                totals["clip_frac"] += (clipped.float() * batch.mask).sum().item() / tokens.item()
                if ref_logp is not None:
                    kl_sum = (kl_k3(logp, ref_logp[micro].to(device)) * batch.mask).sum()
                    totals["kl"] += kl_sum.item() / tokens.item()
                    loss_sum = loss_sum + cfg.kl_coef * kl_sum
                (loss_sum / tokens.to(device)).backward()
            totals["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            scheduler.step()
            n_updates += 1
    stats = {k: v / n_updates for k, v in totals.items()}
    stats["lr"] = scheduler.get_last_lr()[0]
    return stats
