"""The AttnPO trainer, one concept per module: sampling and verification (``rollout``), padded
batches (``batch``), log-probs at the sampling temperature (``logprobs``), KFH and oracle step
scores (``scoring``), the PPO update (``policy``), checkpoints and resume (``state``), held-out
evaluation (``evaluate``), metrics (``metrics``), supervised fine-tuning (``sft``) and the loop itself
(``loop``).  Prompts, verifiers and step labels come from a task (``workbench.tasks``), advantages
from a registered method (``workbench.methods``).

Run it as ``python -m workbench.train --config configs/organism/attnpo.yaml``.
"""
