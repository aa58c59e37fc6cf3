"""AttnPO on TRL: ``AttnPOTrainer`` / ``AttnPOConfig``, TRL's GRPO trainer with AttnPO's token-level advantages.

Use them as TRL's own trainer and config (model, config, verifier reward functions, dataset); they
scale as TRL does (``accelerate launch`` with DDP, DeepSpeed ZeRO or FSDP; vLLM generation).
``python -m workbench.train --engine trl --config ...`` runs the workbench's YAML configs through them
(``workbench.attnpo_trl.engine``).  Needs the ``trl`` extra: ``pip install -e ".[trl]"``.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = 'the TRL engine needs TRL: pip install -e ".[trl]"'

if importlib.util.find_spec("trl") is None:
    raise ImportError(INSTALL_HINT)

from workbench.attnpo_trl.config import AttnPOConfig  # noqa: E402
from workbench.attnpo_trl.trainer import AttnPOStep, AttnPOTrainer  # noqa: E402

__all__ = ["AttnPOConfig", "AttnPOStep", "AttnPOTrainer"]
