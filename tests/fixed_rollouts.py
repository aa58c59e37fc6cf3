"""Fixed rollouts of the organism for the trainer tests (imported by test modules and by
``trl_two_process.py``, which runs under ``accelerate launch``)."""

from __future__ import annotations

import random

from workbench.generation import Samples
from workbench.organism import get_organism
from workbench.tasks import OrganismTask
from workbench.training.rollout import Rollout, assemble_rollout, reference_rollout


def organism_rollout(tok, n_prompts: int, group: int, seed: int = 0, wrong: tuple[int, ...] = ()) -> Rollout:
    """The organism's reference traces as a rollout (all correct, known step labels); responses
    listed in ``wrong`` get a wrong boxed digit."""
    rng = random.Random(seed)
    task = OrganismTask(get_organism("organism"), tok)
    ro = reference_rollout(tok, task, task.draw(rng, n_prompts), group, "organism", rng)
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    ids = [list(r) for r in ro.response_ids]
    for i in wrong:
        ids[i][-3] = digits[(digits.index(ids[i][-3]) + 1) % 10]  # "\boxed{ d }" <eos>
    samples = Samples(ro.prompt_ids, ids, tok.batch_decode(ids, skip_special_tokens=True), ro.truncated)
    ro = assemble_rollout(tok, task, ro.prompts, samples, n_prompts, group, "organism")
    assert ro.correct.view(-1).tolist() == [i not in wrong for i in range(n_prompts * group)]
    return ro
