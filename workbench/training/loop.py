"""The AttnPO training loop (CleanRL-style: one function per stage, one step per iteration).

Each step: sample G responses for each of ``prompts_per_step`` prompts, verify, segment the
correct ones, one no-grad forward for the old log-probs that also records the KFH step scores,
length-penalised reward -> RLOO advantage -> stepwise rescaling by the configured method ->
token advantages, then PPO-clip updates.  Run directory::

    config.yaml  metrics.jsonl  eval_start.json  eval_final.json  checkpoints/step_N/
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from workbench.advantages import AttnPOParams, Method, get_method, rloo_advantage, token_advantages
from workbench.config import Config, ConfigError, config_to_dict, load_config, save_config
from workbench.heads import Head, check_heads, parse_head
from workbench.kfh import load_kfh
from workbench.models import LoadedModel, best_device, load_model
from workbench.rewards import length_penalised_reward
from workbench.training.batch import autocast, pack
from workbench.training.data import JsonlPrompts, OrganismPrompts
from workbench.training.evaluate import evaluate_policy
from workbench.training.metrics import MetricsLog, step_metrics
from workbench.training.policy import lr_schedule, update
from workbench.training.rollout import Rollout, generate_rollout
from workbench.training.scoring import old_logprobs, oracle_step_scores, step_inputs
from workbench.training.state import list_checkpoints, load_state, restore, save_checkpoint, truncate_metrics
from workbench.verifiers import Verifier, get_verifier


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
    method: Method
    heads: list[Head] | None
    verifier: Verifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ref_model: torch.nn.Module | None = None

    @property
    def params(self) -> AttnPOParams:
        m = self.cfg.method
        return AttnPOParams(beta=m.beta, lam=m.lam, delta=m.delta, horizon=m.delay_horizon)

    def rollout(self, prompts) -> Rollout:
        with autocast(next(self.model.parameters()).device):
            return generate_rollout(self.model, self.tokenizer, prompts, self.cfg.rollout, self.verifier,
                                    self.cfg.data.segmenter)

    def learn(self, rollout: Rollout, step: int) -> dict:
        """Score, compute advantages and update the policy on one rollout; returns the step's metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        packed = pack(rollout.prompt_ids, rollout.response_ids, self.tokenizer.pad_token_id)
        kfh = self.method.scores == "kfh"
        old_logp, kfh_scores = old_logprobs(self.model, packed, cfg.train.micro_batch_size,
                                            self.heads if kfh else None, rollout.spans() if kfh else None)
        ref_logp = (old_logprobs(self.ref_model, packed, cfg.train.micro_batch_size)[0]
                    if self.ref_model is not None else None)
        alpha = cfg.method.alpha if self.method.length_penalty else 0.0
        rewards = length_penalised_reward(rollout.correct, rollout.lengths, alpha)
        adv = rloo_advantage(rewards).reshape(-1)
        scores = oracle_step_scores(rollout) if self.method.scores == "oracle" else kfh_scores if kfh else None
        batch, index = step_inputs(rollout, adv, scores, step)
        gammas = self.method.rescale(batch, self.params)
        token_adv = token_advantages(adv, gammas.gamma, index)
        t1 = time.perf_counter()
        stats = update(self.model, self.optimizer, self.scheduler, packed, old_logp, token_adv, cfg.train, ref_logp)
        t2 = time.perf_counter()
        return {"step": step, **step_metrics(rollout, rewards, gammas, batch.step_mask), **stats,
                "seconds_scoring": t1 - t0, "seconds_update": t2 - t1}

    def step(self, prompts, step: int) -> dict:
        """One RL step on ``prompts`` (sampling, then ``learn``)."""
        t0 = time.perf_counter()
        rollout = self.rollout(prompts)
        seconds = time.perf_counter() - t0
        return {**self.learn(rollout, step), "seconds_rollout": seconds}


def build(cfg: Config, loaded: LoadedModel, heads: list[Head] | None, ref: torch.nn.Module | None) -> Trainer:
    method = get_method(cfg.method.name)
    model = loaded.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg.train.warmup_steps))
    return Trainer(cfg, model, loaded.tokenizer, method, heads, get_verifier(cfg.data.verifier), optimizer,
                   scheduler, ref)


def prompt_source(cfg: Config, tokenizer):
    if cfg.data.source == "organism":
        return OrganismPrompts()
    return JsonlPrompts(tokenizer, cfg.data.train_file, cfg.data.eval_file, cfg.data.chat_template,
                        cfg.data.instruction, cfg.data.prompt_suffix)


def load_models(cfg: Config, device: torch.device, checkpoint: Path | None
                ) -> tuple[LoadedModel, list[Head] | None, torch.nn.Module | None]:
    """The policy (the starting model, or the checkpoint's weights), the KFHs (validated against
    the starting model) and the frozen reference for the KL term (only when ``kl_coef > 0``)."""
    base = load_model(cfg.model.name, device=device, dtype=torch.float32,
                      trust_remote_code=cfg.model.trust_remote_code)
    heads = resolve_heads(cfg, base) if get_method(cfg.method.name).scores == "kfh" else None
    ref = base.model.requires_grad_(False) if cfg.train.kl_coef > 0 else None
    if checkpoint is not None:
        weights = load_model(checkpoint, device=device, dtype=torch.float32)
        policy = LoadedModel(weights.model, base.tokenizer, base.name, weights.fingerprint)
    elif ref is not None:
        policy = LoadedModel(copy.deepcopy(base.model).requires_grad_(True), base.tokenizer, base.name,
                             base.fingerprint)
    else:
        policy = base
    return policy, heads, ref


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
    checkpoints = list_checkpoints(run_dir) if resume else []
    if resume and not checkpoints:
        raise FileNotFoundError(f"--resume: {run_dir} has no complete checkpoint under checkpoints/")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")

    policy, heads, ref = load_models(cfg, device, checkpoints[-1] if checkpoints else None)
    trainer = build(cfg, policy, heads, ref)
    source = prompt_source(cfg, policy.tokenizer)
    eval_prompts = source.held_out(cfg.eval.n_prompts, cfg.eval.seed)

    start = 0
    if checkpoints:
        start = restore(load_state(checkpoints[-1]), trainer.optimizer, trainer.scheduler, prompt_rng)
        truncate_metrics(run_dir / "metrics.jsonl", start)
    save_config(cfg, run_dir / "config.yaml")
    if cfg.eval.enabled and not (run_dir / "eval_start.json").exists():
        _write_json(run_dir / "eval_start.json", evaluate_policy(trainer.model, trainer.tokenizer, eval_prompts,
                                                                 cfg, trainer.verifier))

    log = MetricsLog(run_dir, cfg.logging, config_to_dict(cfg))
    bar = tqdm(range(start + 1, cfg.train.steps + 1), initial=start, total=cfg.train.steps,
               disable=not cfg.logging.progress, desc=cfg.method.name)
    try:
        for step in bar:
            row = trainer.step(source.draw(prompt_rng, cfg.rollout.prompts_per_step), step)
            log.log(row)
            bar.set_postfix(reward=f"{row['reward']:.3f}", acc=f"{row['accuracy']:.2f}",
                            tokens=f"{row['mean_response_tokens']:.0f}")
            if step == cfg.train.steps or (cfg.train.save_every and step % cfg.train.save_every == 0):
                save_checkpoint(run_dir, step, trainer.model, trainer.tokenizer, trainer.optimizer,
                                trainer.scheduler, prompt_rng, cfg.train.keep_checkpoints)
    finally:
        log.close()
    if cfg.eval.enabled:
        _write_json(run_dir / "eval_final.json", evaluate_policy(trainer.model, trainer.tokenizer, eval_prompts,
                                                                 cfg, trainer.verifier))
    return run_dir


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workbench.train",
        description="AttnPO fine-tuning (and its baselines) with Key-Focus Heads.",
        epilog="Overrides: section.key=value, e.g. train.lr=1e-4 method.name=tlmre kfh.heads=[L3H1,L2H4]")
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
            cfg = load_config(args.out / "config.yaml", args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.method.name}"
    train(cfg, out, resume=args.resume)
    print(f"run directory: {out}")
    return 0
