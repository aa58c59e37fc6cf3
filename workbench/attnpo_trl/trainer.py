"""``AttnPOTrainer``: TRL's ``GRPOTrainer`` with AttnPO's token-level advantages.

    trainer = AttnPOTrainer(model="path/to/DeepSeek-R1-Distill-Qwen-1.5B", reward_funcs=accuracy_reward,
                            args=AttnPOConfig(output_dir="out", kfh_heads=["L16H2", "L20H9", "L23H2"]),
                            train_dataset=dataset)
    trainer.train()

The reward functions are verifiers (1 for a correct completion, 0 otherwise); the method computes its
own reward from their verdict (the length-penalised one for attnpo and tlmre).  Each generation batch:

1. ``_generate``: after TRL samples, the verifiers run once (TRL's later ``_calculate_rewards`` call is
   served from that result) and the correct completions are segmented into steps from their sampled ids;
2. TRL's no-grad old-log-prob pass over the policy (``_get_per_token_logps_and_entropies``) records the
   KFH answer->step scores with ``workbench.tracing.StepScoreRecorder``: the rows with steps go through
   in micro-batches of their own, each forward inside a recorder, so no forward is added.  When TRL
   skips that pass (fully on-policy training takes the old log-probs from the loss's own forward), the
   trainer runs it -- AttnPO needs it, as verl and the bundled trainer do;
3. every process's rows are gathered (RLOO groups and pass rates span processes), rebuilt as a
   ``workbench.training.rollout.Rollout`` and turned into ``[N, T]`` token advantages by
   ``workbench.training.scoring.rollout_advantages``, the bundled trainer's own call; each process
   keeps its rows;
4. GRPOTrainer's loss takes ``[B, T]`` advantages as they are: PPO-clip per token.

A dataset row may carry ``prompt_ids``, the exact ids to generate from (chat template applied, BOS
written once); without them TRL tokenises ``prompt`` itself.  Text models only: no tools, environments,
custom rollouts or images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from workbench.attnpo_trl.config import AttnPOConfig
from workbench.heads import Head, check_heads, parse_head
from workbench.methods import Advantages, get_method
from workbench.steps import Segmentation
from workbench.tasks import Prompt
from workbench.tracing import StepScoreRecorder
from workbench.training.metrics import step_metrics
from workbench.training.rollout import Rollout, label_steps, rescalable, segment_correct
from workbench.training.scoring import rollout_advantages

StepLabeller = Callable[[dict, list[str]], "list[str] | None"]  # (dataset row, step texts) -> true step labels
PREFIX = "attnpo/"  # the trainer's own metrics in TRL's logs


@dataclass
class AttnPOStep:
    """One generation batch as the advantages saw it, every process's rows (kept as ``trainer.last_step``)."""

    step: int  # RL step t (1-indexed): generation batches before this one + 1
    rollout: Rollout
    kfh_scores: list[torch.Tensor | None] | None  # [K_i] mean over the KFHs, rescalable rows only
    advantages: Advantages


@dataclass
class _LocalBatch:
    """This process's rows between generation and the advantages."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    correct_all: torch.Tensor  # [N] bool, every process's rows
    segments: list[Segmentation | None]
    labels: list[list[str] | None]
    seconds_rollout: float
    kfh_scores: list[torch.Tensor | None] | None = None


class AttnPOTrainer(GRPOTrainer):
    """GRPOTrainer whose advantages come from a ``workbench.methods`` method (``args.method``).

    ``step_labeller(row, step_texts)``: the true label of each step (``workbench.tasks.STEP_LABELS``)
    of a completion of dataset row ``row``, for the ``oracle`` method and the precision metrics.
    """

    _tag_names = ["trl", "attnpo"]
    _name = "AttnPO"

    def __init__(self, model, reward_funcs, args: AttnPOConfig, train_dataset=None, *,
                 step_labeller: StepLabeller | None = None, **kwargs):
        if not isinstance(args, AttnPOConfig):
            raise TypeError(f"AttnPOTrainer needs an AttnPOConfig, got {type(args).__name__}")
        for name in ("tools", "rollout_func", "environment_factory"):
            if kwargs.get(name) is not None:
                raise ValueError(f"AttnPOTrainer does not support {name}: its step spans assume plain completions")
        if not reward_funcs:
            raise ValueError("AttnPOTrainer needs reward_funcs: verifiers returning 1 for a correct completion, else 0")
        method = get_method(args.method)
        if method.scores == "oracle" and step_labeller is None:
            raise ValueError("method 'oracle' reads true step labels: pass step_labeller=(row, step_texts) -> labels")
        super().__init__(model, reward_funcs, args, train_dataset, **kwargs)
        self.method, self.step_labeller = method, step_labeller
        self.heads: list[Head] | None = (check_heads([parse_head(h) for h in args.kfh_heads], self.model.config,
                                                      where="AttnPOConfig.kfh_heads")
                                         if method.scores == "kfh" else None)
        self.last_step: AttnPOStep | None = None
        self._inputs: list[dict] | None = None  # the dataset rows of the batch being generated
        self._batch: _LocalBatch | None = None
        self._rewards: torch.Tensor | None = None  # the verifiers' verdict, served to TRL's reward step
        self._record = False  # the next no-grad pass over the policy records KFH scores
        self._seconds_generation = 0.0
        self._seconds_update = 0.0

    # ------------------------------------------------------------------ generation and verification

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        t0 = time.perf_counter()
        self._inputs = inputs
        try:
            out = super()._generate_and_score_completions(inputs)
            if self._batch.kfh_scores is None and self.heads is not None:
                self._old_logprob_pass(out)  # TRL skipped it (on-policy): AttnPO needs the forward
            out["advantages"] = self._token_advantages(out, time.perf_counter() - t0)
        finally:
            self._inputs, self._batch, self._record = None, None, False
        self._seconds_generation = time.perf_counter() - t0
        return out

    def _tokenize_prompts(self, prompts: list):
        if self._inputs is not None and all("prompt_ids" in row for row in self._inputs):
            return [list(row["prompt_ids"]) for row in self._inputs], None, {}
        return super()._tokenize_prompts(prompts)

    def _generate(self, prompts: list):
        t0 = time.perf_counter()
        result = super()._generate(prompts)
        prompt_ids, completion_ids, _, completions = result[:4]
        self._rewards = super()._calculate_rewards(self._inputs, prompts, completions, completion_ids)
        weighted = (self._rewards * self.reward_weights.to(self._rewards.device)).nansum(dim=1)
        correct_all = (weighted >= self.args.correct_threshold) & ~torch.isnan(self._rewards).all(dim=1)
        n = len(completion_ids)
        start = self.accelerator.process_index * n
        truncated = [not ids or ids[-1] not in self.eos_token_ids for ids in completion_ids]
        correct = [bool(ok) and not (self.mask_truncated_completions and cut)  # masked tokens cannot be scored
                   for ok, cut in zip(correct_all[start : start + n].tolist(), truncated)]
        segments = segment_correct(self._tokenizer, correct, completion_ids, self.args.segmenter)
        rows = self._inputs
        labeller = (lambda i, texts: self.step_labeller(rows[i], texts)) if self.step_labeller else None
        self._batch = _LocalBatch([list(p) for p in prompt_ids], [list(c) for c in completion_ids],
                                  self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True), truncated,
                                  correct_all.cpu(), segments, label_steps(segments, labeller),
                                  time.perf_counter() - t0)
        self._record = self.heads is not None and self._trl_takes_old_logprobs
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._rewards is not None:
            rewards, self._rewards = self._rewards, None
            return rewards
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    @property
    def _trl_takes_old_logprobs(self) -> bool:
        """Whether GRPOTrainer's ``_generate_and_score_completions`` runs its old-log-prob pass (its own
        condition): when a generation batch outlives one optimizer step, or vLLM samples are importance-corrected."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return (self.args.gradient_accumulation_steps % generate_every != 0
                or (self.use_vllm and self.vllm_importance_sampling_correction))

    # ------------------------------------------------------------------ the old-log-prob pass, recording

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        if not self._record or torch.is_grad_enabled() or model is not self.model:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, compute_aux_loss, **kwargs)
        if any(v is not None for v in kwargs.values()):
            raise ValueError("AttnPOTrainer scores text-only batches (got multimodal inputs)")
        self._record = False
        logps, entropies, aux, self._batch.kfh_scores = self._recorded_pass(
            input_ids, attention_mask, logits_to_keep, batch_size or input_ids.size(0), self._batch.segments,
            compute_entropy, compute_aux_loss)
        return logps, entropies, aux

    def _recorded_pass(self, input_ids, attention_mask, logits_to_keep: int, batch_size: int,
                       segments: list[Segmentation | None], compute_entropy: bool = False,
                       compute_aux_loss: bool = False):
        """TRL's log-prob pass over the policy with the rows that have steps in micro-batches of their own,
        each forward inside a recorder; returns TRL's (log-probs, entropies, aux loss) and the step scores."""
        prompt_width = input_ids.size(1) - logits_to_keep  # left-padded prompts, then the completions
        spans = [seg.absolute(prompt_width) if rescalable(seg) else None for seg in segments]
        n = input_ids.size(0)
        logps = torch.zeros(n, logits_to_keep, device=input_ids.device)
        entropies = torch.zeros_like(logps) if compute_entropy else None
        aux, scores = [], [None] * n
        scored = [i for i in range(n) if spans[i] is not None]
        for group, record in ((scored, True), ([i for i in range(n) if spans[i] is None], False)):
            for start in range(0, len(group), batch_size):
                rows = group[start : start + batch_size]
                index = torch.tensor(rows, device=input_ids.device)
                recorder = (StepScoreRecorder(self.model, self.heads, [spans[i] for i in rows],
                                              names=[f"completion {i}" for i in rows]) if record else None)
                with recorder or nullcontext():
                    lp, ent, a = super()._get_per_token_logps_and_entropies(
                        self.model, input_ids[index], attention_mask[index], logits_to_keep, len(rows),
                        compute_entropy, compute_aux_loss)
                logps[index] = lp.to(logps.dtype)
                if compute_entropy:
                    entropies[index] = ent.to(entropies.dtype)
                if compute_aux_loss:
                    aux.append(a)
                if recorder is not None:
                    for i, s in zip(rows, recorder.scores):
                        scores[i] = s.mean(0)
        return logps, entropies, torch.stack(aux).mean() if compute_aux_loss else None, scores

    @torch.no_grad()
    def _old_logprob_pass(self, out: dict) -> None:
        """The no-grad pass that TRL skipped, over the rows with steps only, for their KFH scores (on-policy,
        TRL takes the old log-probs from the loss's own forward)."""
        segments = self._batch.segments
        scored = [i for i, seg in enumerate(segments) if rescalable(seg)]
        scores: list[torch.Tensor | None] = [None] * len(segments)
        if scored:
            mode = "train" if self.model.training else "eval"
            batch_size = (self.args.per_device_train_batch_size if mode == "train"
                          else self.args.per_device_eval_batch_size)
            index = torch.tensor(scored, device=out["completion_ids"].device)
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)[index]
            mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)[index]
            with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                part = self._recorded_pass(ids, mask, out["completion_ids"].size(1), batch_size,
                                           [segments[i] for i in scored])[3]
            for i, s in zip(scored, part):
                scores[i] = s
        self._batch.kfh_scores = scores

    # ------------------------------------------------------------------ advantages

    def rl_step(self) -> int:
        """The RL step (1-indexed) of the generation batch being made: generation batches so far + 1."""
        optimizer_steps_per_batch = self.args.steps_per_generation * self.num_iterations
        return self.state.global_step * self.args.gradient_accumulation_steps // optimizer_steps_per_batch + 1

    def _token_advantages(self, out: dict, seconds: float) -> torch.Tensor:
        """This process's ``[B, T]`` token advantages; the whole batch's rollout and metrics on the side."""
        b = self._batch
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        scores = b.kfh_scores or [None] * len(b.prompt_ids)
        rows = gather_object(list(zip(b.prompt_ids, b.completion_ids, b.texts, b.truncated, b.segments, b.labels,
                                      scores)))
        prompt_ids, completion_ids, texts, truncated, segments, labels, scores = map(list, zip(*rows))
        rollout = Rollout([Prompt("", p, None) for p in prompt_ids], prompt_ids, completion_ids, texts, truncated,
                          b.correct_all.view(-1, group), segments, labels, self.step_labeller is not None)
        step = self.rl_step()
        scores = scores if self.heads is not None else None
        adv = rollout_advantages(self.method, rollout, scores, step, self.args.method_params)
        self.last_step = AttnPOStep(step, rollout, scores, adv)

        metrics = {**step_metrics(rollout, adv), "step": step, "seconds_rollout": b.seconds_rollout,
                   "seconds_scoring": seconds - b.seconds_rollout}
        for key, value in metrics.items():
            self._metrics[mode][PREFIX + key].append(math.nan if value is None else float(value))

        n, width = out["completion_ids"].shape
        start = self.accelerator.process_index * n
        local = torch.zeros(n, width)
        cols = min(width, adv.tokens.shape[1])
        local[:, :cols] = adv.tokens[start : start + n, :cols]
        return local.to(out["completion_ids"].device)

    # ------------------------------------------------------------------ timing

    def training_step(self, model, inputs, num_items_in_batch):
        t0 = time.perf_counter()
        self._seconds_generation = 0.0
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._seconds_update += time.perf_counter() - t0 - self._seconds_generation
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._metrics["train"].get(PREFIX + "step"):
            self._metrics["train"][PREFIX + "seconds_update"] = [self._seconds_update]
            self._seconds_update = 0.0
        super().log(logs, start_time)
