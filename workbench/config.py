"""Trainer configuration: dataclasses, loaded from YAML, overridden by ``section.key=value`` arguments.

    python -m workbench.train --config configs/organism/attnpo.yaml train.lr=1e-4 method.name=tlmre

Every key is type-checked against its dataclass field; an unknown key or a bad value raises
``ConfigError`` naming the dotted key.  The resolved config is written into the run directory
(``config.yaml``), which is also what ``--resume`` reads back.  ``load_dataclass`` is the same
mechanism for any dataclass: the organism trainer's ``key=value`` arguments use it too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from workbench.heads import parse_head


T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    name: str = "organism"  # load_model spec: organism | smollm2 | HF folder | .gguf | hub id
    device: str | None = None  # default: cuda when present, else cpu
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    source: str = "organism"  # organism (fresh problems) | jsonl ({prompt, answer} per line)
    verifier: str = "organism"  # organism | math
    train_file: str | None = None  # jsonl source: training prompts
    eval_file: str | None = None  # jsonl source: held-out prompts
    chat_template: bool = True  # jsonl source: wrap each prompt in the tokenizer's chat template
    instruction: str = ""  # jsonl source: appended to each prompt inside the user message
    prompt_suffix: str = ""  # appended after the (templated) prompt, e.g. "<think>\n"
    segmenter: str = "organism"  # steps preset: organism | r1


@dataclass
class RolloutConfig:
    group_size: int = 8  # G responses per prompt
    prompts_per_step: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 320
    batch_size: int = 64  # sampling batch


@dataclass
class MethodConfig:
    name: str = "attnpo"  # rloo | tlmre | attnpo | attnpo_pos | attnpo_neg | oracle
    alpha: float = 0.2  # length-penalty coefficient
    beta: float = 2.0  # baseline exponent
    lam: float = 2.0  # gamma exponent
    delta: float = 0.0  # gamma floor
    delay_horizon: int = 1000  # T: Pos-Adv for a prompt with pass rate p starts after step T*(1-p)


@dataclass
class KFHConfig:
    path: str | None = None  # kfh.json (validated against the model)
    heads: list[str] | None = None  # or the heads directly, e.g. [L3H1, L2H4]


@dataclass
class TrainConfig:
    steps: int = 100
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0
    clip_ratio: float = 0.2
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch
    micro_batch_size: int = 16  # rows per forward/backward
    kl_coef: float = 0.0  # k3 KL to the starting model (0: no reference model)
    seed: int = 0
    save_every: int = 25  # checkpoint period in steps (the last step is always saved)
    keep_checkpoints: int = 0  # keep only the newest N checkpoints (0: keep all)
    threads: int | None = None  # torch CPU threads


@dataclass
class EvalConfig:
    enabled: bool = True
    n_prompts: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 320
    seed: int = 12345  # held-out organism problems and the sampling seed (same at start and end)


@dataclass
class LoggingConfig:
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "kfh-workbench"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    kfh: KFHConfig = field(default_factory=KFHConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# --- loading, overriding, checking -------------------------------------------------------------------


def _check_value(key: str, value, tp):
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: no type of {tp} fits {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{key}: unsupported field type {tp}")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known keys in {where}: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", data[name], tp)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], object]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot read value {raw!r} ({e})") from e
    return parts, value


def merge_override(data: dict, parts: list[str], value) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def load_dataclass(cls: type[T], path: str | Path | None = None, overrides: list[str] = (),
                   check: Callable[[T], None] | None = None) -> T:
    """Defaults of the dataclass ``cls`` <- YAML file (if any) <- dotted overrides, type-checked,
    then ``check``-ed; every error is a ConfigError naming the key (and the file)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    for text in overrides:
        merge_override(data, *parse_override(text))
    try:
        cfg = _build(cls, data)
        if check is not None:
            check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The trainer config: ``load_dataclass`` on ``Config``, checked across fields by ``validate``."""
    return load_dataclass(Config, path, overrides, check=validate)


AT_LEAST_ONE = ("rollout.group_size", "rollout.prompts_per_step", "rollout.max_new_tokens", "rollout.batch_size",
                "train.steps", "train.ppo_epochs", "train.mini_batches", "train.micro_batch_size",
                "eval.n_prompts", "eval.max_new_tokens")
NOT_NEGATIVE = ("train.save_every", "train.keep_checkpoints", "train.warmup_steps", "train.kl_coef", "train.lr",
                "rollout.temperature", "eval.temperature", "method.alpha", "method.delay_horizon")


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config) -> None:
    """Checks across fields that types alone cannot express."""
    from workbench.advantages import METHODS
    from workbench.verifiers import VERIFIERS

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    d = cfg.data
    need(cfg.method.name in METHODS, "method.name", f"unknown method {cfg.method.name!r}; known: {', '.join(METHODS)}")
    need(d.source in ("organism", "jsonl"), "data.source", f"{d.source!r} is not organism or jsonl")
    need(d.verifier in VERIFIERS, "data.verifier", f"unknown verifier {d.verifier!r}; known: {', '.join(VERIFIERS)}")
    need(d.segmenter in ("organism", "r1"), "data.segmenter", f"{d.segmenter!r} is not organism or r1")
    if d.source == "jsonl":
        need(d.train_file is not None, "data.train_file", "the jsonl source needs a prompts file")
        need(d.verifier != "organism", "data.verifier",
             "the organism verifier reads organism prompts; use data.verifier=math with data.source=jsonl")
    for key in AT_LEAST_ONE:
        need(_get(cfg, key) >= 1, key, f"must be at least 1, got {_get(cfg, key)}")
    for key in NOT_NEGATIVE:
        need(_get(cfg, key) >= 0, key, f"must not be negative, got {_get(cfg, key)}")
    for key in ("rollout.top_p", "eval.top_p"):
        need(0 < _get(cfg, key) <= 1, key, f"must be in (0, 1], got {_get(cfg, key)}")
    need(0 <= cfg.method.delta <= 1, "method.delta", f"must be in [0, 1], got {cfg.method.delta}")
    rows = cfg.rollout.group_size * cfg.rollout.prompts_per_step
    need(cfg.train.mini_batches <= rows, "train.mini_batches",
         f"{cfg.train.mini_batches} exceeds the {rows} responses of a step")
    scores = METHODS[cfg.method.name].scores
    if scores == "kfh":
        need((cfg.kfh.path is None) != (cfg.kfh.heads is None), "kfh", f"method {cfg.method.name!r} needs exactly "
             "one of kfh.path (a kfh.json) or kfh.heads (e.g. [L3H1, L2H4])")
    for i, name in enumerate(cfg.kfh.heads or []):
        try:
            parse_head(name)
        except ValueError as e:
            raise ConfigError(f"kfh.heads[{i}]: {e}") from None
    if scores == "oracle":
        need(d.source == "organism", "method.name",
             "the oracle uses the organism's true step labels; set data.source=organism")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
