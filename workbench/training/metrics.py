"""Per-step training metrics and where they go: ``metrics.jsonl`` always, TensorBoard / wandb on request.

Step accounting, over the steps of rescalable responses (correct, at least two steps):
``frac_steps_attenuated`` -- Pos-Adv shrank their positive advantage (judged unimportant);
``frac_steps_protected`` -- Neg-Adv removed their negative advantage (judged important).
On a task with step labels (the organisms), ``attenuation_precision`` is the share of attenuated
steps that are truly redundant, and ``protection_precision`` the share of protected steps that are
truly needed (critical or plan); both are null when no step was attenuated / protected.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from workbench.config import LoggingConfig
from workbench.methods import Advantages
from workbench.training.rollout import Rollout


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def step_metrics(rollout: Rollout, adv: Advantages) -> dict:
    n, step_mask = len(rollout.response_ids), adv.step_mask
    steps = [len(rollout.segments[i].steps) for i in range(n) if rollout.segments[i] is not None
             and rollout.segments[i].ok]
    n_steps = int(step_mask.sum())
    row = {
        "reward": adv.rewards.mean().item(),
        "accuracy": rollout.correct.float().mean().item(),
        "mean_response_tokens": rollout.lengths.float().mean().item(),
        "truncated_fraction": sum(rollout.truncated) / n,
        "steps_per_response": sum(steps) / len(steps) if steps else None,
        "rescaled_responses": sum(rollout.rescalable(i) for i in range(n)),
        "frac_steps_attenuated": _ratio(int(adv.attenuated.sum()), n_steps),
        "frac_steps_protected": _ratio(int(adv.protected.sum()), n_steps),
    }
    if rollout.labelled:  # every rescalable response has labels
        redundant = torch.zeros_like(step_mask)
        for i, labels in enumerate(rollout.step_labels):
            if labels is not None:
                redundant[i, : len(labels)] = torch.tensor([label == "redundant" for label in labels])
        att, prot = adv.attenuated, adv.protected
        row["redundant_step_fraction"] = _ratio(int(redundant.sum()), n_steps)
        row["attenuation_precision"] = _ratio(int((att & redundant).sum()), int(att.sum()))
        row["protection_precision"] = _ratio(int((prot & ~redundant).sum()), int(prot.sum()))
    return row


class MetricsLog:
    """Appends one JSON line per step (flushed, so a killed run loses at most the line in flight)."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config: dict):
        self.file = open(Path(run_dir) / "metrics.jsonl", "a")
        self.tb = self.wandb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("logging.tensorboard is true but tensorboard is not installed "
                                  "(pip install tensorboard)") from e
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("logging.wandb is true but wandb is not installed (pip install wandb)") from e
            mode = os.environ.get("WANDB_MODE", "offline")  # set WANDB_MODE=online to sync
            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=config, mode=mode)

    def log(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
