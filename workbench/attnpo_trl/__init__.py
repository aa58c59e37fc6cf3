"""AttnPO on TRL: ``AttnPOTrainer`` / ``AttnPOConfig``, TRL's GRPO trainer with AttnPO's token-level advantages.

Use them as TRL's own trainer and config (model, config, verifier reward functions, dataset); they
scale as TRL does (``accelerate launch`` with DDP, DeepSpeed ZeRO or FSDP; vLLM generation).
``python -m workbench.train --engine trl --config ...`` runs the workbench's YAML configs through them
(``workbench.attnpo_trl.engine``).  Needs the ``trl`` extra: ``pip install -e ".[trl]"``.
"""

from __future__ import annotations

INSTALL_HINT = 'the TRL engine needs TRL: pip install -e ".[trl]"'

try:
    import trl  # noqa: F401  # present?
except ImportError as e:
    raise ImportError(f"{INSTALL_HINT} ({e})") from e

from workbench.attnpo_trl.config import AttnPOConfig  # noqa: E402
from workbench.attnpo_trl.trainer import AttnPOStep, AttnPOTrainer  # noqa: E402

__all__ = ["AttnPOConfig", "AttnPOStep", "AttnPOTrainer"]
