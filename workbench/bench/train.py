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
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import statistics
import time

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
    plain, kfh = trainers["tlmre"], trainers["attnpo"]

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/organism/tlmre.yaml", help="trainer config (rollout, train)")
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
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:34s} {value:.4f}" if isinstance(value, float) else f"{key:34s} {value}")
