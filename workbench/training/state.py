"""Checkpoints and resume.

A checkpoint is one folder ``checkpoints/step_N/``: the HF model (safetensors) and tokenizer
plus ``trainer_state.pt`` (optimizer, LR schedule, RNG states, step), written together through
``replace_dir_atomic`` so a run killed mid-write leaves every older checkpoint whole and never a
half-written one under a final name.  The state file holds only tensors and plain Python values
and is read with ``weights_only=True``.

The TRL engine (``workbench.attnpo_trl``) writes the same folders in its own format: the HF model
and tokenizer plus the HF Trainer's ``trainer_state.json``, optimizer and RNG files, moved under
their final name once complete.  ``list_checkpoints`` finds both; ``checkpoint_engine`` tells them apart.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from workbench.checkpoints import save_hf_atomic

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
TRL_STATE_FILE = "trainer_state.json"  # the HF Trainer's state, in the TRL engine's checkpoints
_STEP_DIR = re.compile(r"^step_(\d+)$")


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, prompt_rng: random.Random,
                    keep: int = 0) -> Path:
    """Write ``checkpoints/step_{step}`` atomically; keep only the newest ``keep`` (0: all)."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "prompt_rng": prompt_rng.getstate(),
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    target = Path(run_dir) / CHECKPOINTS / f"step_{step}"
    save_hf_atomic(model, tokenizer, target, extra={STATE_FILE: buf.getvalue()})
    prune_checkpoints(run_dir, keep)
    return target


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (0: keep all)."""
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)


def checkpoint_engine(checkpoint: Path) -> str:
    """``"bundled"`` or ``"trl"``: which engine wrote a complete checkpoint (and can resume from it)."""
    return "bundled" if (Path(checkpoint) / STATE_FILE).is_file() else "trl"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of a killed write ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir()
             if (m := _STEP_DIR.match(d.name)) and ((d / STATE_FILE).is_file() or (d / TRL_STATE_FILE).is_file())]
    return [d for _, d in sorted(found)]


def run_checkpoints(run_dir: Path, resume: bool, engine: str) -> list[Path]:
    """Check ``run_dir`` for a new run, or for a resume by ``engine``; return the checkpoints to resume from."""
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir) if resume else []
    if resume and not checkpoints:
        raise FileNotFoundError(f"--resume: {run_dir} has no complete checkpoint under checkpoints/")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if checkpoints and (writer := checkpoint_engine(checkpoints[-1])) != engine:
        raise ValueError(f"--resume: {checkpoints[-1]} was written by the {writer} engine; resume with --engine {writer}")
    return checkpoints


def load_state(checkpoint: Path) -> dict:
    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)


def restore(state: dict, optimizer, scheduler, prompt_rng: random.Random) -> int:
    """Put optimizer, schedule and every RNG back where the checkpoint left them; return its step."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    prompt_rng.setstate(state["prompt_rng"])
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written after the last checkpoint), atomically.

    A torn final line (the run was killed while writing it) is dropped too.
    """
    path = Path(path)
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for n, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                break
            raise ValueError(f"{path}:{n + 1}: not a JSON metrics line") from None
        if row["step"] <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
