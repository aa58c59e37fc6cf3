"""The AttnPO training loop (CleanRL-style: one function per stage, one step per iteration).

Each step: draw prompts from the task, sample G responses for each, verify and segment the correct
ones, one no-grad forward for the old log-probs (at the sampling temperature) that also records the
KFH step scores, then the registered method's token advantages (``workbench.methods``) and
PPO-clip updates.  Run directory::

    config.yaml  metrics.jsonl  eval_start.json  eval_final.json  checkpoints/step_N/
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from workbench.advantages import MethodParams
from workbench.config import Config, ConfigError, config_to_dict, load_config, save_config
from workbench.heads import Head, check_heads, parse_head
from workbench.kfh import load_kfh
from workbench.methods import Advantages, Method, get_method
from workbench.models import LoadedModel, best_device, load_model
from workbench.tasks import Prompt, Task, build_task, segmenter_for
from workbench.training.batch import Packed, autocast, pack
from workbench.training.evaluate import held_out_evaluation
from workbench.training.logprobs import check_head
from workbench.training.metrics import MetricsLog, step_metrics
from workbench.training.policy import lr_schedule, update
from workbench.training.rollout import Rollout, generate_rollout
from workbench.training.scoring import method_params, old_logprobs, rollout_advantages
from workbench.training.state import load_state, restore, run_checkpoints, save_checkpoint, truncate_metrics


def resolve_heads(cfg: Config, loaded: LoadedModel) -> list[Head]:
    """KFHs from ``kfh.heads`` or ``kfh.path`` (a kfh.json checked against the model)."""
    if cfg.kfh.heads is not None:
        return check_heads([parse_head(h) for h in cfg.kfh.heads], loaded.model.config, where="kfh.heads")
    path = Path(cfg.kfh.path)
    if not path.is_file():
        raise FileNotFoundError(f"kfh.path {path} does not exist; run head discovery first or give the "
                                f"heads directly, e.g. kfh.heads=[L3H1,L2H4] kfh.path=null")
    return list(load_kfh(path, loaded).heads)


@dataclass
class Trainer:
    """Everything one RL step needs."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: object
    task: Task
    method: Method
    heads: list[Head] | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ref_model: torch.nn.Module | None = None

    @property
    def params(self) -> MethodParams:
        return method_params(self.cfg.method)

    @property
    def segmenter(self) -> str:
        return segmenter_for(self.cfg, self.task)

    def rollout(self, prompts: list[Prompt]) -> Rollout:
        with autocast(next(self.model.parameters()).device):
            return generate_rollout(self.model, self.tokenizer, self.task, prompts, self.cfg.rollout, self.segmenter)

    def score(self, rollout: Rollout, step: int) -> tuple[Packed, torch.Tensor, torch.Tensor | None, Advantages]:
        """The rollout packed, its old (and reference) log-probs -- the old-log-prob pass records the KFH
        step scores -- and its token advantages at RL step ``step``."""
        cfg, temperature = self.cfg, self.cfg.rollout.temperature
        packed = pack(rollout.prompt_ids, rollout.response_ids, self.tokenizer.pad_token_id)
        kfh = self.method.scores == "kfh"
        old_logp, kfh_scores = old_logprobs(self.model, packed, cfg.train.micro_batch_size,
                                            self.heads if kfh else None, rollout.spans() if kfh else None,
                                            temperature)
        ref_logp = (old_logprobs(self.ref_model, packed, cfg.train.micro_batch_size, temperature=temperature)[0]
                    if self.ref_model is not None else None)
        adv = rollout_advantages(self.method, rollout, kfh_scores, step, self.params, width=packed.targets.shape[1])
        return packed, old_logp, ref_logp, adv

    def learn(self, rollout: Rollout, step: int) -> dict:
        """Score, compute advantages and update the policy on one rollout; returns the step's metrics."""
        t0 = time.perf_counter()
        packed, old_logp, ref_logp, adv = self.score(rollout, step)
        t1 = time.perf_counter()
        stats = update(self.model, self.optimizer, self.scheduler, packed, old_logp, adv.tokens, self.cfg.train,
                       ref_logp, self.cfg.rollout.temperature)
        t2 = time.perf_counter()
        return {"step": step, **step_metrics(rollout, adv), **stats,
                "seconds_scoring": t1 - t0, "seconds_update": t2 - t1}

    def step(self, prompts: list[Prompt], step: int) -> dict:
        """One RL step on ``prompts`` (sampling, then ``learn``)."""
        t0 = time.perf_counter()
        rollout = self.rollout(prompts)
        seconds = time.perf_counter() - t0
        return {**self.learn(rollout, step), "seconds_rollout": seconds}


def build(cfg: Config, loaded: LoadedModel, heads: list[Head] | None, ref: torch.nn.Module | None) -> Trainer:
    """A Trainer for ``loaded``: its task (``data.task``), method, optimizer and schedule."""
    model = loaded.model
    check_head(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg.train.warmup_steps))
    return Trainer(cfg, model, loaded.tokenizer, build_task(cfg, loaded.tokenizer), get_method(cfg.method.name),
                   heads, optimizer, scheduler, ref)


def reference_dtype(device: torch.device) -> torch.dtype:
    """The frozen KL reference's weights: bf16 on CUDA (its matmuls run in bf16 under autocast anyway
    and it has no optimizer, as verl holds its reference), fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@torch.no_grad()
def frozen_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen, eval-mode copy of ``model`` with its weights in ``dtype``, built empty and filled
    tensor by tensor (never a second full copy in the source dtype)."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    device = next(model.parameters()).device
    with no_init_weights(), torch.device(device):  # a config of its own: from_config writes its dtype into it
        ref = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=dtype)
    ref.load_state_dict(model.state_dict())
    return ref.eval().requires_grad_(False)


def load_models(cfg: Config, device: torch.device, checkpoint: Path | None
                ) -> tuple[LoadedModel, list[Head] | None, torch.nn.Module | None]:
    """The policy (the starting model, or the checkpoint's weights) in fp32, the KFHs (validated
    against the starting model), and -- only when ``kl_coef > 0`` -- a frozen reference copy of the
    starting model (``frozen_copy`` in ``reference_dtype``).  Without the KL term the starting model
    itself is trained: no copy is made."""
    base = load_model(cfg.model.name, device=device, dtype=torch.float32,
                      trust_remote_code=cfg.model.trust_remote_code)
    heads = resolve_heads(cfg, base) if get_method(cfg.method.name).scores == "kfh" else None
    ref = frozen_copy(base.model, reference_dtype(device)) if cfg.train.kl_coef > 0 else None
    if checkpoint is None:
        return base, heads, ref
    weights = load_model(checkpoint, device=device, dtype=torch.float32)
    return LoadedModel(weights.model, base.tokenizer, base.name, weights.fingerprint), heads, ref


def train(cfg: Config, run_dir: Path, resume: bool = False) -> Path:
    """Run (or resume) a training run in ``run_dir``; returns the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    prompt_rng = random.Random(cfg.train.seed)
    device = torch.device(cfg.model.device) if cfg.model.device else best_device()[0]
    checkpoints = run_checkpoints(run_dir, resume, "bundled")

    policy, heads, ref = load_models(cfg, device, checkpoints[-1] if checkpoints else None)
    trainer = build(cfg, policy, heads, ref)
    task = trainer.task
    eval_prompts = task.held_out(cfg.eval.n_prompts, cfg.eval.seed) if cfg.eval.enabled else []

    start = 0
    if checkpoints:
        start = restore(load_state(checkpoints[-1]), trainer.optimizer, trainer.scheduler, prompt_rng)
        truncate_metrics(run_dir / "metrics.jsonl", start)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.eval.enabled and not (run_dir / "eval_start.json").exists():
        write_json(run_dir / "eval_start.json", evaluate(trainer, eval_prompts))

    log = MetricsLog(run_dir, cfg.logging, config_to_dict(cfg))
    bar = tqdm(range(start + 1, cfg.train.steps + 1), initial=start, total=cfg.train.steps,
               disable=not cfg.logging.progress, desc=cfg.method.name)
    try:
        for step in bar:
            row = trainer.step(task.draw(prompt_rng, cfg.rollout.prompts_per_step), step)
            log.log(row)
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.2f}",
                            tokens=f"{row['mean_response_tokens']:.0f}")
            if step == cfg.train.steps or (cfg.train.save_every and step % cfg.train.save_every == 0):
                save_checkpoint(run_dir, step, trainer.model, trainer.tokenizer, trainer.optimizer,
                                trainer.scheduler, prompt_rng, cfg.train.keep_checkpoints)
    finally:
        log.close()
    if cfg.eval.enabled:
        write_json(run_dir / "eval_final.json", evaluate(trainer, eval_prompts))
    return run_dir


def evaluate(trainer: Trainer, prompts: list[Prompt]) -> dict:
    """The held-out evaluation, with where its prompts came from."""
    return held_out_evaluation(trainer.model, trainer.tokenizer, trainer.task, prompts, trainer.cfg, trainer.segmenter)


def write_json(path: Path, data: dict) -> None:
    """A run file: indented JSON and a final newline (both engines write the same)."""
    path.write_text(json.dumps(data, indent=2) + "\n")


# --engine: the module whose ``train(cfg, run_dir, resume)`` runs a config; both write the same run directory.
ENGINES = {"bundled": "workbench.training.loop", "trl": "workbench.attnpo_trl.engine"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workbench.train",
        description="AttnPO fine-tuning (and its baselines) with Key-Focus Heads.",
        epilog="Overrides: section.key=value, e.g. train.lr=1e-4 method.name=tlmre kfh.heads=[L3H1,L2H4]")
    parser.add_argument("--engine", choices=list(ENGINES), default="bundled",
                        help="bundled: this package's one-process trainer; trl: TRL's GRPO trainer extended with "
                             "the same advantages (accelerate launch for several processes / GPUs)")
    parser.add_argument("--config", type=Path, help="YAML config (e.g. configs/organism/attnpo.yaml)")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<time>-<method>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            if args.out is None:
                parser.error("--resume needs --out DIR (the run to continue)")
            if args.config is not None:
                parser.error("--resume reads DIR/config.yaml; drop --config (overrides still apply)")
            cfg = load_config(args.out / "config.yaml", args.overrides, base=Path.cwd())
        else:
            cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        run = importlib.import_module(ENGINES[args.engine]).train
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.method.name}"
    run(cfg, out, resume=args.resume)
    print(f"run directory: {out}")
    return 0
