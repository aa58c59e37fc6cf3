"""Each of two processes scores its half of a fixed organism rollout through AttnPOTrainer (groups straddle
the processes); the main process saves every row's token advantages and KFH scores.

    accelerate launch --multi_gpu --num_processes 2 tests/trl_two_process.py OUT.pt   (gloo without a GPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object

sys.path.insert(0, str(Path(__file__).parent))

from fixed_rollouts import organism_rollout  # noqa: E402
from trl_helpers import WRONG, fixed_trainer, rollout_rows, trl_test_config  # noqa: E402

from workbench.models import load_model  # noqa: E402
from workbench.tasks import build_task  # noqa: E402


def main(out: Path) -> None:
    loaded = load_model("organism", device="cpu")
    cfg = trl_test_config()
    rollout = organism_rollout(loaded.tokenizer, cfg.rollout.prompts_per_step, cfg.rollout.group_size, wrong=WRONG)
    trainer = fixed_trainer(loaded.model, loaded.tokenizer, cfg, rollout, build_task(cfg, loaded.tokenizer), out.parent,
                            processes=2)
    rows = rollout_rows(rollout)
    n = len(rows) // trainer.accelerator.num_processes
    local = rows[trainer.accelerator.process_index * n :][:n]
    adv = trainer._generate_and_score_completions(local)["advantages"].cpu()
    tokens = gather_object([a[: len(row["completion_ids"])].tolist() for a, row in zip(adv, local)])
    if trainer.accelerator.is_main_process:
        torch.save({"advantages": tokens, "kfh_scores": trainer.last_step.kfh_scores,
                    "processes": trainer.accelerator.num_processes}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
