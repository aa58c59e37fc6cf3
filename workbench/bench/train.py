"""Trainer benchmark: ``python -m workbench.bench train [--json] [--quick]``.

Times the same RL step with and without KFH scoring: one rollout is sampled once, then the
learning half of the step (old-log-prob pass, advantages, PPO update) runs alternately as
``tlmre`` (no scoring) and ``attnpo`` (the same pass with the KFH recorder, plus the stepwise
rescaling) from the same weights and optimizer state, ``--repeats`` times each; medians are
reported.  Sampling is identical for both, so the full-step ratio is
``(rollout + learn_attnpo) / (rollout + learn_tlmre)``; the ratio of the old-log-prob pass
alone isolates the capture itself.  ``--rollout reference`` learns on the organism's reference
traces (all correct, all scored: the most scoring work) while still timing a sampled rollout.
The design target is a full-step ratio of at most 1.05.

``--engine trl`` compares the engines instead: whole RL steps of ``attnpo`` (sampling, old-log-prob
pass with the KFH recorder, advantages, update) on the same organism prompt batch, by the bundled
loop (``Trainer.step``) and by the TRL engine (``AttnPOTrainer`` under ``Trainer.train``, each step
timed from its start to its end), from the same starting weights, in alternating rounds; the first
step of each round is a warm-up.  Reported: median seconds per step of each, their ratio (target at
most 1.1) and each engine's split into rollout, scoring and update.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from workbench.config import load_config
from workbench.heads import head_name, model_shape, parse_head
from workbench.models import best_device, load_model
from workbench.training.batch import pack
from workbench.training.loop import build
from workbench.training.rollout import reference_rollout
from workbench.training.scoring import old_logprobs


def default_heads(config) -> list[tuple[int, int]]:
    """Three heads in the last layers (where KFHs sit); which ones does not change the cost."""
    layers, n_heads, _ = model_shape(config)
    return [(layers - 1, 0), (layers - 2, n_heads // 2), (max(0, layers * 3 // 4 - 1), n_heads - 1)]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides = [f"model.name={args.model}", f"rollout.prompts_per_step={args.prompts}",
                 f"rollout.group_size={args.group}", "kfh.path=null", "kfh.heads=null", *args.overrides]
    cfg = load_config(args.config, overrides)
    device = best_device()[0]
    loaded = load_model(cfg.model.name, device=device, dtype=torch.float32)
    heads = [parse_head(h) for h in args.heads.split(",")] if args.heads else default_heads(loaded.model.config)
    trainers = {name: build(dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, name=name)), loaded,
                            heads, None)
                for name in ("tlmre", "attnpo")}
    plain = trainers["tlmre"]

    rng = random.Random(args.seed)
    prompts = plain.task.draw(rng, cfg.rollout.prompts_per_step)
    t = time.perf_counter()
    rollout = plain.rollout(prompts)  # timed even when the reference traces replace it below
    seconds_rollout = time.perf_counter() - t
    if args.rollout == "reference":
        rollout = reference_rollout(loaded.tokenizer, plain.task, prompts, cfg.rollout.group_size, plain.segmenter,
                                    rng)
    weights = copy.deepcopy(loaded.model.state_dict())
    optim = {name: copy.deepcopy(tr.optimizer.state_dict()) for name, tr in trainers.items()}

    def learn(name: str) -> float:
        """Seconds of the learning half of the step, from the same starting weights and optimizer."""
        loaded.model.load_state_dict(weights)
        trainers[name].optimizer.load_state_dict(optim[name])
        t = time.perf_counter()
        trainers[name].learn(rollout, step=10**6)  # past every Pos-Adv delay: the full rescaling runs
        return time.perf_counter() - t

    learn("tlmre"), learn("attnpo")  # warm-up
    seconds = {"tlmre": [], "attnpo": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for name in seconds:
            seconds[name].append(learn(name))
    learn_plain, learn_kfh = statistics.median(seconds["tlmre"]), statistics.median(seconds["attnpo"])

    packed = pack(rollout.prompt_ids, rollout.response_ids, loaded.tokenizer.pad_token_id)
    spans = rollout.spans()
    micro = cfg.train.micro_batch_size
    temperature = cfg.rollout.temperature
    pass_plain = _median_seconds(lambda: old_logprobs(loaded.model, packed, micro, temperature=temperature),
                                 args.repeats)
    pass_kfh = _median_seconds(lambda: old_logprobs(loaded.model, packed, micro, heads, spans, temperature),
                               args.repeats)
    return {
        "model": cfg.model.name,
        "rollout": args.rollout,
        "device": str(device),
        "threads": args.threads,
        "heads": [head_name(h) for h in heads],
        "responses": len(rollout.response_ids),
        "scored_responses": sum(s is not None for s in spans),
        "mean_response_tokens": rollout.lengths.float().mean().item(),
        "repeats": args.repeats,
        "seconds_rollout": seconds_rollout,
        "seconds_learn_tlmre": learn_plain,
        "seconds_learn_attnpo": learn_kfh,
        "seconds_old_logprob_pass": pass_plain,
        "seconds_old_logprob_pass_with_kfh": pass_kfh,
        "ratio_step": (seconds_rollout + learn_kfh) / (seconds_rollout + learn_plain),
        "ratio_learn": learn_kfh / learn_plain,
        "ratio_old_logprob_pass": pass_kfh / pass_plain,
        "target_ratio_step": 1.05,
    }


def engine_round(loaded, weights: dict, bundled, prompts, steps: int, trl, clock, seconds: dict, rows: dict) -> None:
    """``steps`` steps of each engine from ``weights`` (the first of each a warm-up, not recorded)."""
    loaded.model.load_state_dict(weights)
    loaded.model.eval()
    for step in range(1, steps + 1):
        t = time.perf_counter()
        row = bundled.step(prompts, step)
        if step > 1:
            seconds["bundled"].append(time.perf_counter() - t)
            rows["bundled"].append(row)
    loaded.model.load_state_dict(weights)
    clock.seconds, clock.rows = [], []
    trl.optimizer, trl.lr_scheduler = None, None  # fresh, as the bundled trainer's
    trl.train()
    seconds["trl"] += clock.seconds[1:]
    rows["trl"] += clock.rows[1:]


def run_engines(args: argparse.Namespace) -> dict:
    """Seconds per RL step of the TRL engine against the bundled loop on the same organism batch."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    from workbench.attnpo_trl.engine import metrics_row, task_verifier, trl_config
    from workbench.attnpo_trl.trainer import AttnPOTrainer
    from workbench.tasks import build_task, segmenter_for

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    steps = args.repeats + 1  # per round, the first a warm-up
    device = best_device()[0]
    loaded = load_model(args.model, device=device, dtype=torch.float32)
    heads = [parse_head(h) for h in args.heads.split(",")] if args.heads else default_heads(loaded.model.config)
    cfg = load_config(args.config, [f"model.name={args.model}", f"rollout.prompts_per_step={args.prompts}",
                                    f"rollout.group_size={args.group}", "kfh.path=null",
                                    f"kfh.heads=[{','.join(head_name(h) for h in heads)}]", "method.name=attnpo",
                                    "method.delay_horizon=0", f"train.steps={steps}", "logging.progress=false",
                                    *args.overrides])
    task = build_task(cfg, loaded.tokenizer)
    prompts = task.draw(random.Random(args.seed), cfg.rollout.prompts_per_step)
    dataset = Dataset.from_list([{"prompt": p.text, "prompt_ids": p.ids, "row": i % len(prompts)}
                                 for i, p in enumerate(prompts * steps)])

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds, self.rows, self.t0 = [], [], 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "attnpo/step" in logs:
                self.rows.append(metrics_row(logs, cfg.train.kl_coef))

    clock = StepClock()
    weights = copy.deepcopy(loaded.model.state_dict())
    seconds: dict[str, list[float]] = {"bundled": [], "trl": []}
    rows: dict[str, list[dict]] = {"bundled": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="kfh-bench-trl-") as out:
        args_trl = trl_config(cfg, Path(out), 1, [head_name(h) for h in heads], segmenter_for(cfg, task),
                              device.type == "cuda")
        args_trl.save_strategy = "no"
        trl = AttnPOTrainer(loaded.model, task_verifier(task, prompts), args_trl, dataset,
                            processing_class=loaded.tokenizer, callbacks=[clock])
        trl.remove_callback(PrinterCallback)  # stdout holds the result only
        for _ in range(args.rounds):  # alternating, so drift hits both alike
            engine_round(loaded, weights, build(cfg, loaded, heads, None), prompts, steps, trl, clock, seconds, rows)
    med = {name: statistics.median(s) for name, s in seconds.items()}
    split = {name: {k: statistics.median(r[k] for r in rs) for k in ("seconds_rollout", "seconds_scoring",
                                                                      "seconds_update", "mean_response_tokens")}
             for name, rs in rows.items()}
    return {
        "engine": "trl", "model": cfg.model.name, "device": str(device), "threads": args.threads,
        "heads": [head_name(h) for h in heads], "responses": len(prompts) * cfg.rollout.group_size,
        "rounds": args.rounds, "steps_per_round": args.repeats,
        "seconds_step_bundled": med["bundled"], "seconds_step_trl": med["trl"], "ratio_step": med["trl"] / med["bundled"],
        "bundled": split["bundled"], "trl": split["trl"], "target_ratio_step": 1.1,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/organism/tlmre.yaml", help="trainer config (rollout, train)")
    parser.add_argument("--engine", choices=("bundled", "trl"), default="bundled",
                        help="bundled: KFH scoring's cost in the bundled step; trl: the TRL engine's step against "
                             "the bundled one")
    parser.add_argument("--rounds", type=int, default=2, help="--engine trl: alternating rounds of each engine")
    parser.add_argument("--model", default="organism")
    parser.add_argument("--heads", default=None, help="comma-separated KFHs, e.g. L3H1,L2H4 (default: 3 late heads)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rollout", choices=("sample", "reference"), default="sample",
                        help="learn on the sampled responses, or (organism) on reference traces: every response "
                             "correct and scored, the most scoring work")
    parser.add_argument("--quick", action="store_true", help="2 prompts x 4 responses, 2 repeats")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("overrides", nargs="*", help="trainer config overrides, section.key=value")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.repeats = 2, 4, 2
    result = run_engines(args) if args.engine == "trl" else run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:34s} {value:.4f}" if isinstance(value, float) else f"{key:34s} {value}")
