"""Trainer configuration: dataclasses, loaded from YAML, overridden by ``section.key=value`` arguments.

    python -m workbench.train --config configs/organism/attnpo.yaml train.lr=1e-4 method.name=tlmre

Every key is type-checked against its dataclass field; an unknown key or a bad value raises
``ConfigError`` naming the dotted key.  Relative file paths (``PATH_KEYS``) written in a config file
are relative to that file; on the command line, to the working directory; both are stored absolute.
The resolved config is written into the run directory (``config.yaml``), which is also what
``--resume`` reads back.  ``load_dataclass`` is the same
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
    task: str = "organism"  # a registered task: an organism's name (fresh problems) | jsonl (prompt files)
    verifier: str | None = None  # jsonl: answer checker (default math); organism tasks use their own
    train_file: str | None = None  # jsonl: training prompts ({prompt, answer} per line)
    eval_file: str | None = None  # jsonl: held-out prompts
    eval_split: float = 0.1  # jsonl without eval_file: share of train_file's prompts held out (seed: eval.seed)
    chat_template: bool = True  # jsonl: wrap each prompt in the tokenizer's chat template
    instruction: str = ""  # jsonl: appended to each prompt inside the user message
    prompt_suffix: str = ""  # jsonl: appended after the (templated) prompt, e.g. "<think>\n"
    segmenter: str | None = None  # steps preset: organism | r1 (default: the task's)


@dataclass
class RolloutConfig:
    group_size: int = 8  # G responses per prompt
    prompts_per_step: int = 8
    temperature: float = 1.0  # > 0; the log-probs of the PPO ratio are taken at this temperature too
    top_p: float = 1.0
    max_new_tokens: int = 320
    batch_size: int = 64  # sampling batch


@dataclass
class MethodConfig:
    name: str = "attnpo"  # a registered method: rloo | tlmre | grpo | attnpo | attnpo_pos | attnpo_neg | oracle
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
    seed: int = 12345  # held-out prompts (organism problems; jsonl split and choice) and the sampling seed


@dataclass
class LoggingConfig:
    progress: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "kfh-workbench"


@dataclass
class TRLConfig:
    """Options only the TRL engine (``--engine trl``) reads; the bundled engine ignores them."""

    use_vllm: bool = False  # generate with vLLM (TRL's use_vllm; a GPU and `pip install vllm`)
    vllm_mode: str = "colocate"  # colocate (vLLM inside the training processes) | server (`trl vllm-serve`)
    vllm_gpu_memory_utilization: float = 0.3  # colocate: the GPU memory share vLLM may take
    vllm_tensor_parallel_size: int = 1  # colocate
    gradient_checkpointing: bool = False


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
    trl: TRLConfig = field(default_factory=TRLConfig)


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


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML config file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def load_dataclass(cls: type[T], path: str | Path | None = None, overrides: list[str] = (),
                   check: Callable[[T], None] | None = None, paths: tuple[str, ...] = (),
                   renamed: dict[str, str] | None = None, base: Path | None = None) -> T:
    """Defaults of the dataclass ``cls`` <- YAML file (if any) <- dotted overrides, type-checked,
    then ``check``-ed; every error is a ConfigError naming the key (and the file).

    ``paths``: dotted keys holding file paths; a relative one is made absolute against the config
    file's folder (or ``base``) when the file gives it, against the working directory when an
    override does.
    ``renamed``: old dotted key -> new one, so files written before a rename still load.
    """
    data: dict = read_yaml(path) if path is not None else {}
    renamed = renamed or {}
    try:
        for old, new in renamed.items():
            _move_key(data, old.split("."), new.split("."))
        if path is not None:
            for key in paths:
                _absolute(data, key.split("."), base or Path(path).resolve().parent)
        for text in overrides:
            parts, value = parse_override(text)
            parts = renamed.get(".".join(parts), ".".join(parts)).split(".")
            merge_override(data, parts, value)
            if ".".join(parts) in paths:
                _absolute(data, parts, Path.cwd())
        cfg = _build(cls, data)
        if check is not None:
            check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg


def _parent(data: dict, parts: list[str]) -> dict | None:
    node = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _absolute(data: dict, parts: list[str], base: Path) -> None:
    """Make the relative path at ``parts`` absolute against ``base`` (anything else is left to the type checks)."""
    node = _parent(data, parts)
    if node is not None and isinstance(node.get(parts[-1]), str) and node[parts[-1]]:
        node[parts[-1]] = str((base / Path(node[parts[-1]]).expanduser()).resolve())


def _move_key(data: dict, old: list[str], new: list[str]) -> None:
    node = _parent(data, old)
    if node is not None and old[-1] in node:
        if new[-1] in node:
            raise ConfigError(f"{'.'.join(old)} is the old name of {'.'.join(new)}; give only {'.'.join(new)}")
        node[new[-1]] = node.pop(old[-1])


PATH_KEYS = ("kfh.path", "data.train_file", "data.eval_file")
RENAMED_KEYS = {"data.source": "data.task"}  # run directories written before the rename still resume


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Path | None = None) -> Config:
    """The trainer config: ``load_dataclass`` on ``Config``, checked across fields by ``validate``.

    Relative paths in the file resolve against its folder, or ``base`` (``--resume`` reads a run's
    config.yaml against the working directory: runs written before paths were stored absolute).
    """
    return load_dataclass(Config, path, overrides, check=validate, paths=PATH_KEYS, renamed=RENAMED_KEYS, base=base)


AT_LEAST_ONE = ("rollout.group_size", "rollout.prompts_per_step", "rollout.max_new_tokens", "rollout.batch_size",
                "train.steps", "train.ppo_epochs", "train.mini_batches", "train.micro_batch_size",
                "eval.n_prompts", "eval.max_new_tokens", "trl.vllm_tensor_parallel_size")
NOT_NEGATIVE = ("train.save_every", "train.keep_checkpoints", "train.warmup_steps", "train.kl_coef", "train.lr",
                "eval.temperature", "method.alpha", "method.delay_horizon")


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config) -> None:
    """Checks across fields that types alone cannot express; the task checks the data keys it reads."""
    from workbench.methods import METHODS
    from workbench.steps import PRESETS
    from workbench.tasks import get_task, task_names

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    d = cfg.data
    need(cfg.method.name in METHODS, "method.name", f"unknown method {cfg.method.name!r}; known: {', '.join(METHODS)}")
    need(d.task in task_names(), "data.task", f"unknown task {d.task!r}; known: {', '.join(task_names())}")
    need(d.segmenter is None or d.segmenter in PRESETS, "data.segmenter",
         f"{d.segmenter!r} is not one of {', '.join(PRESETS)}")
    task = get_task(d.task)
    task.check(cfg)
    for key in AT_LEAST_ONE:
        need(_get(cfg, key) >= 1, key, f"must be at least 1, got {_get(cfg, key)}")
    for key in NOT_NEGATIVE:
        need(_get(cfg, key) >= 0, key, f"must not be negative, got {_get(cfg, key)}")
    need(cfg.rollout.temperature > 0, "rollout.temperature",
         f"must be above 0 (RL needs sampled responses; the log-probs are taken at this temperature), "
         f"got {cfg.rollout.temperature}")
    for key in ("rollout.top_p", "eval.top_p"):
        need(0 < _get(cfg, key) <= 1, key, f"must be in (0, 1], got {_get(cfg, key)}")
    need(0 <= cfg.method.delta <= 1, "method.delta", f"must be in [0, 1], got {cfg.method.delta}")
    need(cfg.trl.vllm_mode in ("colocate", "server"), "trl.vllm_mode",
         f"must be colocate or server, got {cfg.trl.vllm_mode!r}")
    need(0 < cfg.trl.vllm_gpu_memory_utilization <= 1, "trl.vllm_gpu_memory_utilization",
         f"must be in (0, 1], got {cfg.trl.vllm_gpu_memory_utilization}")
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
        labelled = [n for n in task_names() if get_task(n).has_step_labels]
        need(task.has_step_labels, "method.name", f"the oracle uses the task's true step labels; task {d.task!r} "
             f"has none (tasks with step labels: {', '.join(labelled)})")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
