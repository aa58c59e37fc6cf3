"""``python -m workbench.organism {train,eval}``: rebuild the organism, or measure it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from workbench.organism import ORGANISMS, get_organism


def train_config(organism: str | None, config: Path | None, overrides: list[str]):
    """The OrganismTrainConfig to train: ``config`` (default: ``organism``'s recipe) with ``overrides``.
    ``organism`` given overrides the file's; otherwise the file's own ``organism`` stands.  A relative
    ``init_from`` in a file is relative to that file."""
    from workbench.config import load_dataclass
    from workbench.organism.train import OrganismTrainConfig

    recipe = config or get_organism(organism or "organism").recipe
    chosen = [f"organism={organism}"] if organism else []
    return load_dataclass(OrganismTrainConfig, recipe, [*chosen, *overrides], paths=("init_from",))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.organism", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train an organism by its recipe (the first: about 70 minutes on 2 CPU cores)",
                        epilog="Overrides of OrganismTrainConfig (workbench/organism/train.py), key=value, e.g. "
                               "steps=2000 lr=1e-3, or init_from=workbench/organism/checkpoint to continue "
                               "training the shipped checkpoint instead of starting from random weights.")
    tr.add_argument("--organism", choices=list(ORGANISMS), default=None,
                    help="which organism (default: the one --config names, else the first); its recipe "
                         "(configs/<organism>/organism_train.yaml, if any) is the base")
    tr.add_argument("--config", type=Path, default=None, help="a recipe YAML instead of the organism's own")
    tr.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    tr.add_argument("overrides", nargs="*", help="key=value")
    ev = sub.add_parser("eval", help="sample fresh prompts and report accuracy and overthinking")
    ev.add_argument("--model", default="organism", help="an organism's name or a checkpoint folder")
    ev.add_argument("--n", type=int, default=300)
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--seed", type=int, default=12345)
    ev.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    if args.command == "train":
        from workbench.config import ConfigError
        from workbench.organism.train import train

        try:
            cfg = train_config(args.organism, args.config, args.overrides)
        except ConfigError as e:
            tr.error(str(e))
        summary = train(cfg, args.out)
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
        return

    import torch

    from workbench.models import load_model
    from workbench.organism.evaluate import evaluate, held_out_problems

    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    start = time.time()
    result = evaluate(loaded.model, loaded.tokenizer, held_out_problems(args.n, args.seed),
                      temperature=args.temperature, top_p=args.top_p)
    result["seconds"] = round(time.time() - start, 1)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
