"""``python -m workbench.train --engine trl``: the workbench's YAML configs run through ``AttnPOTrainer``.

    python -m workbench.train --engine trl --config configs/organism/attnpo.yaml
    accelerate launch --num_processes 8 -m workbench.train --engine trl --config ... --out runs/x

It writes the bundled engine's run directory -- ``config.yaml``, ``metrics.jsonl`` (one row per RL step,
the same keys), ``eval_start.json`` / ``eval_final.json`` (the same held-out evaluation) and
``checkpoints/step_N/`` (HF format) -- so the app, ``experiments/stability.py`` and
``experiments/reproduce.py`` read it unchanged.  ``--resume`` continues from the last checkpoint as TRL
does (``trainer.train(resume_from_checkpoint=...)``: weights, optimizer, schedule, RNG, data position).

How the config maps onto TRL (one RL step = one generation batch):

- the prompts of step s are ``task.draw(rng, rollout.prompts_per_step)`` from ``train.seed``'s stream, as
  in the bundled loop, laid out in order in the dataset (``shuffle_dataset=False``);
- ``prompts_per_step * group_size`` rows per step, split over the processes; ``train.mini_batches``
  optimizer steps per epoch, ``train.ppo_epochs`` epochs (TRL's ``num_iterations``), each process
  running micro-batches of at most ``train.micro_batch_size`` rows (gradient accumulation);
- PPO clip ``train.clip_ratio`` (``epsilon``), dual clip ``train.clip_ratio_c`` (``delta``), k3 KL
  ``train.kl_coef`` (``beta``), token-mean loss (``dapo``), the bundled constant schedule with linear
  warm-up, weight decay on every parameter (as the bundled AdamW);
- ``trl.*``: vLLM generation and gradient checkpointing.  ``rollout.batch_size`` is not used: TRL
  samples a process's rows in one batch.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl.models import unwrap_model_for_generation

from workbench.attnpo_trl.config import AttnPOConfig
from workbench.attnpo_trl.trainer import PREFIX, AttnPOTrainer
from workbench.checkpoints import move_dir_atomic
from workbench.config import Config, ConfigError, config_to_dict, save_config
from workbench.heads import head_name
from workbench.methods import get_method
from workbench.models import load_model
from workbench.tasks import Prompt, Task, build_task, segmenter_for
from workbench.training.evaluate import held_out_evaluation
from workbench.training.loop import resolve_heads, write_json
from workbench.training.metrics import MetricsLog
from workbench.training.policy import lr_schedule
from workbench.training.state import CHECKPOINTS, prune_checkpoints, run_checkpoints, truncate_metrics

TIMES = ("seconds_scoring", "seconds_update", "seconds_rollout")


def batch_layout(cfg: Config, processes: int) -> tuple[int, int]:
    """(rows per micro-batch on each process, micro-batches per optimizer step): the fewest micro-batches
    of at most ``train.micro_batch_size`` rows that split a process's share of a mini-batch evenly."""
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    if rows % (processes * cfg.train.mini_batches):
        raise ConfigError(f"rollout.prompts_per_step x rollout.group_size = {rows} responses a step do not split "
                          f"evenly into train.mini_batches={cfg.train.mini_batches} over {processes} processes")
    share = rows // (processes * cfg.train.mini_batches)
    accumulation = next(a for a in range(-(-share // cfg.train.micro_batch_size), share + 1) if share % a == 0)
    return share // accumulation, accumulation


def trl_config(cfg: Config, run_dir: Path, processes: int, heads: list[str] | None, segmenter: str,
               cuda: bool) -> AttnPOConfig:
    """The ``AttnPOConfig`` of a workbench config, for ``processes`` training processes."""
    micro, accumulation = batch_layout(cfg, processes)
    t, m, r = cfg.train, cfg.method, cfg.rollout
    updates = t.ppo_epochs * t.mini_batches  # optimizer steps per RL step
    return AttnPOConfig(
        output_dir=str(run_dir / CHECKPOINTS), max_steps=t.steps * updates, logging_steps=updates,
        save_strategy="steps", save_steps=(t.save_every or t.steps) * updates, report_to="none",
        disable_tqdm=not cfg.logging.progress, seed=t.seed, use_cpu=not cuda, bf16=cuda,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * t.mini_batches, num_iterations=t.ppo_epochs, shuffle_dataset=False,
        num_generations=r.group_size, max_completion_length=r.max_new_tokens, temperature=r.temperature,
        top_p=r.top_p, top_k=0, learning_rate=t.lr, weight_decay=t.weight_decay, max_grad_norm=t.grad_clip,
        epsilon=t.clip_ratio, delta=t.clip_ratio_c, beta=t.kl_coef, loss_type="dapo",
        gradient_checkpointing=cfg.trl.gradient_checkpointing, use_vllm=cfg.trl.use_vllm,
        vllm_mode=cfg.trl.vllm_mode, vllm_gpu_memory_utilization=cfg.trl.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.trl.vllm_tensor_parallel_size,
        method=m.name, kfh_heads=heads, length_penalty=m.alpha, baseline_exponent=m.beta, gamma_exponent=m.lam,
        gamma_floor=m.delta, delay_horizon=m.delay_horizon, segmenter=segmenter)


def prompt_dataset(task: Task, cfg: Config) -> tuple[Dataset, list[Prompt]]:
    """Every step's prompts, drawn as the bundled loop draws them, in order; rows carry their exact ids."""
    rng = random.Random(cfg.train.seed)
    prompts = [p for _ in range(cfg.train.steps) for p in task.draw(rng, cfg.rollout.prompts_per_step)]
    rows = [{"prompt": p.text, "prompt_ids": p.ids, "row": i} for i, p in enumerate(prompts)]
    return Dataset.from_list(rows), prompts


def task_verifier(task: Task, items: list[Prompt]):
    """The task's verifier as a TRL reward function of the dataset's ``row`` column: 1.0 correct, else 0.0."""

    def verify(prompts, completions, row, **kwargs) -> list[float]:
        return [1.0 if task.verify(items[i], text) else 0.0 for i, text in zip(row, completions)]

    return verify


def metrics_row(logs: dict, kl_coef: float) -> dict:
    """A ``metrics.jsonl`` row (the bundled engine's keys) from the TRL logs of one RL step."""
    kl = logs.get("kl") or 0.0
    ours = {k.removeprefix(PREFIX): v for k, v in logs.items() if k.startswith(PREFIX)}
    row = {"step": int(ours.pop("step"))}
    row.update({k: v for k, v in ours.items() if k not in TIMES})
    row.update(pg_loss=logs["loss"] - kl_coef * kl, clip_frac=logs.get("clip_ratio/region_mean"), kl=kl,
               grad_norm=logs.get("grad_norm"), lr=logs.get("learning_rate"))
    row.update({k: ours.get(k) for k in TIMES})
    return row


class RunLog(TrainerCallback):
    """Writes one ``metrics.jsonl`` row per RL step from the main process (TensorBoard / wandb as configured)."""

    def __init__(self, run_dir: Path, cfg: Config):
        self.run_dir, self.cfg, self.log = run_dir, cfg, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.log = MetricsLog(self.run_dir, self.cfg.logging, config_to_dict(self.cfg))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.log is not None and logs and PREFIX + "step" in logs:
            self.log.log(metrics_row(logs, self.cfg.train.kl_coef))

    def on_train_end(self, args, state, control, **kwargs):
        if self.log is not None:
            self.log.close()
            self.log = None


class RunTrainer(AttnPOTrainer):
    """``AttnPOTrainer`` writing a workbench run directory, with the bundled engine's optimizer settings."""

    def __init__(self, *args, run_dir: Path, cfg: Config, **kwargs):
        self.run_dir, self.cfg = run_dir, cfg
        self.updates = cfg.train.ppo_epochs * cfg.train.mini_batches
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """TRL's checkpoint, written under its own name, then moved whole to ``checkpoints/step_N``."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            written = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            move_dir_atomic(written, self.run_dir / CHECKPOINTS / f"step_{self.state.global_step // self.updates}")
            prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def create_model_card(self, *args, **kwargs) -> None:
        """No README in the run directory's checkpoints folder."""

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, _ in model.named_parameters()]  # as the bundled AdamW: every parameter

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                  lr_schedule(self.cfg.train.warmup_steps))
        return self.lr_scheduler

    def evaluate_held_out(self, task: Task, prompts: list[Prompt]) -> dict:
        """The bundled engine's held-out evaluation on the full weights (every process runs it alike)."""
        with (unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model,
              self._dist.summon_full_params(self.model_wrapped, recurse=False)):
            return held_out_evaluation(model, self.processing_class, task, prompts, self.cfg, self.args.segmenter)


def train(cfg: Config, run_dir: Path, resume: bool = False) -> Path:
    """Run (or resume) ``cfg`` with TRL in ``run_dir`` (under ``accelerate launch``: on every process)."""
    run_dir = Path(run_dir)
    state = PartialState(cpu=cfg.model.device == "cpu")
    checkpoints = run_checkpoints(run_dir, resume, "trl")
    evaluate_start = cfg.eval.enabled and not (run_dir / "eval_start.json").exists()
    state.wait_for_everyone()  # every process has read the folder before the main one writes into it
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    cuda = torch.cuda.is_available() and cfg.model.device != "cpu"
    loaded = load_model(cfg.model.name, device="cpu", dtype=torch.float32,
                        trust_remote_code=cfg.model.trust_remote_code)
    method = get_method(cfg.method.name)
    heads = [head_name(h) for h in resolve_heads(cfg, loaded)] if method.scores == "kfh" else None
    task = build_task(cfg, loaded.tokenizer)
    dataset, prompts = prompt_dataset(task, cfg)
    labeller = ((lambda row, texts: task.step_labels(prompts[row["row"]], texts)) if task.has_step_labels else None)
    segmenter = segmenter_for(cfg, task)
    args = trl_config(cfg, run_dir, state.num_processes, heads, segmenter, cuda)
    trainer = RunTrainer(loaded.model, task_verifier(task, prompts), args, dataset, step_labeller=labeller,
                         processing_class=loaded.tokenizer, callbacks=[RunLog(run_dir, cfg)], run_dir=run_dir,
                         cfg=cfg)
    if not cfg.logging.progress:
        trainer.remove_callback(PrinterCallback)  # without a progress bar TRL prints every step's logs
    eval_prompts = task.held_out(cfg.eval.n_prompts, cfg.eval.seed) if cfg.eval.enabled else []
    main = state.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoints:
            truncate_metrics(run_dir / "metrics.jsonl", int(checkpoints[-1].name.removeprefix("step_")))
        save_config(cfg, run_dir / "config.yaml")
    if evaluate_start:
        start_eval = trainer.evaluate_held_out(task, eval_prompts)  # every process samples its share
        if main:
            write_json(run_dir / "eval_start.json", start_eval)
    state.wait_for_everyone()
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    if cfg.eval.enabled:
        final_eval = trainer.evaluate_held_out(task, eval_prompts)
        if main:
            write_json(run_dir / "eval_final.json", final_eval)
    state.wait_for_everyone()
    return run_dir
