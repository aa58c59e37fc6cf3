"""AttnPOTrainer on a fixed rollout -- sampling replaced by known completions, everything after it TRL's
and ours -- for the TRL tests and ``trl_two_process.py``."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from workbench.attnpo_trl import AttnPOTrainer
from workbench.attnpo_trl.engine import task_verifier, trl_config
from workbench.config import Config, load_config
from workbench.methods import get_method
from workbench.tasks import Task, segmenter_for
from workbench.training.rollout import Rollout


ORGANISM_ATTNPO = Path(__file__).resolve().parents[1] / "configs" / "organism" / "attnpo.yaml"
WRONG = (1, 5, 6, 7)  # responses of the fixed rollout given a wrong answer: groups with pass rates 3/4, 1/4, 1


def trl_test_config(*overrides: str) -> Config:
    """The organism AttnPO config on a fixed rollout of 3 prompts x 4 completions, Pos-Adv active at step 1."""
    return load_config(ORGANISM_ATTNPO, ["kfh.path=null", "kfh.heads=[L1H0,L1H3]", "rollout.prompts_per_step=3",
                                         "rollout.group_size=4", "train.micro_batch_size=3", "method.delay_horizon=0",
                                         *overrides])


class FixedCompletions(AttnPOTrainer):
    """Each dataset row's ``completion_ids`` come back as its sampled completion."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        return [list(row["completion_ids"]) for row in self._inputs], None


def rollout_rows(rollout: Rollout) -> list[dict]:
    """The rollout as the rows TRL's sampler hands a generation batch (each prompt repeated per completion)."""
    return [{"prompt": p.text, "prompt_ids": ids, "row": i, "completion_ids": r}
            for i, (p, ids, r) in enumerate(zip(rollout.prompts, rollout.prompt_ids, rollout.response_ids))]


def fixed_trainer(model, tokenizer, cfg: Config, rollout: Rollout, task: Task, out: Path,
                  processes: int = 1) -> FixedCompletions:
    heads = cfg.kfh.heads if get_method(cfg.method.name).scores == "kfh" else None
    rows = rollout_rows(rollout)
    trainer = FixedCompletions(model, task_verifier(task, rollout.prompts), trl_config(cfg, out, processes, heads, segmenter_for(cfg, task), False),
                               Dataset.from_list(rows), processing_class=tokenizer,
                               step_labeller=lambda row, texts: task.step_labels(rollout.prompts[row["row"]], texts))
    trainer.model.train()
    return trainer
