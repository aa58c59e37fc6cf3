"""``AttnPOConfig``: TRL's ``GRPOConfig`` plus the advantage method, its hyper-parameters and the KFHs.

GRPOConfig already names ``beta`` (the KL coefficient) and ``delta`` (its upper clip of the ratio),
so the method's parameters carry descriptive names here; the workbench config's names are in brackets.
Two defaults differ from GRPOConfig's, to match the paper's PPO setting (attnpo-method.md §8):
``delta=3.0`` -- TRL's upper ratio clip, which with ``epsilon=0.2`` is exactly PPO's dual clip c=3 (a
negative advantage's loss is bounded by ``-c * A``) -- and ``disable_dropout=True``, so the first ratio
of an on-policy update is 1.  Keep ``loss_type="dapo"`` (GRPOConfig's default), the paper's token-mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from workbench.advantages import MethodParams
from workbench.heads import parse_head


@dataclass
class AttnPOConfig(GRPOConfig):
    method: str = field(default="attnpo", metadata={
        "help": "Advantage method of workbench.methods: rloo, tlmre, grpo, attnpo, attnpo_pos, attnpo_neg, oracle."})
    kfh_heads: list[str] | None = field(default=None, metadata={
        "help": "Key-Focus Heads as L{layer}H{head}, e.g. ['L16H2', 'L20H9', 'L23H2'] (DeepSeek-R1-Distill-Qwen-1.5B); "
                "needed by attnpo, attnpo_pos and attnpo_neg."})
    length_penalty: float = field(default=0.2, metadata={
        "help": "alpha [method.alpha]: r = correct * (1 - alpha * sigmoid(z)), z the length z-score among the "
                "group's correct completions (methods with the length penalty)."})
    baseline_exponent: float = field(default=2.0, metadata={
        "help": "beta [method.beta]: step baseline S_base = p^beta * |F| / (|q| + |o|)."})
    gamma_exponent: float = field(default=2.0, metadata={"help": "lambda [method.lam]: Pos-Adv factor exponent."})
    gamma_floor: float = field(default=0.0, metadata={"help": "delta [method.delta]: Pos-Adv factor floor."})
    delay_horizon: int = field(default=1000, metadata={
        "help": "T [method.delay_horizon]: Pos-Adv for a prompt with pass rate p starts after RL step T * (1 - p)."})
    segmenter: str = field(default="r1", metadata={"help": "Steps preset of workbench.steps: r1 | organism."})
    correct_threshold: float = field(default=0.5, metadata={
        "help": "A completion is correct when the weighted sum of the reward functions (verifiers: 1 correct, "
                "0 not) is at least this."})
    delta: float | None = field(default=3.0, metadata={
        "help": "Upper clip of the probability ratio (TRL's two-sided clipping); with epsilon it is PPO's dual clip."})
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the policy."})

    def __post_init__(self):
        super().__post_init__()
        from workbench.methods import METHODS
        from workbench.steps import PRESETS

        if self.method not in METHODS:
            raise ValueError(f"AttnPOConfig.method: unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.segmenter not in PRESETS:
            raise ValueError(f"AttnPOConfig.segmenter: {self.segmenter!r} is not one of {', '.join(PRESETS)}")
        for i, name in enumerate(self.kfh_heads or []):
            try:
                parse_head(name)
            except ValueError as e:
                raise ValueError(f"AttnPOConfig.kfh_heads[{i}]: {e}") from None
        if METHODS[self.method].scores == "kfh" and not self.kfh_heads:
            raise ValueError(f"AttnPOConfig.kfh_heads: method {self.method!r} scores steps with KFHs; give them, "
                             "e.g. kfh_heads=['L16H2', 'L20H9', 'L23H2']")

    @property
    def method_params(self) -> MethodParams:
        return MethodParams(alpha=self.length_penalty, beta=self.baseline_exponent, lam=self.gamma_exponent,
                            delta=self.gamma_floor, horizon=self.delay_horizon)
