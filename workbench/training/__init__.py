"""The AttnPO trainer, one concept per module: prompts (``data``), sampling and verification
(``rollout``), padded batches and log-probs (``batch``), the PPO update (``policy``), checkpoints
and resume (``state``), held-out evaluation (``evaluate``) and the loop itself (``loop``).

Run it as ``python -m workbench.train --config configs/organism/attnpo.yaml``.
"""
