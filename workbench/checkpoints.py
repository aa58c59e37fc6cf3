"""Atomic checkpoint writing: a run killed at any moment leaves the last checkpoint whole."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir_atomic(build, target: Path) -> None:
    """Call ``build(tmp_dir)`` to fill a fresh folder, then swap it in place of ``target``.

    The new folder is complete before it takes the target's name; the old one is renamed
    aside first and deleted last, so at every instant one whole copy exists on disk.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        move_dir_atomic(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def move_dir_atomic(source: Path, target: Path) -> None:
    """Rename the complete folder ``source`` to ``target`` (same filesystem), replacing any old ``target``:
    the old one is renamed aside first and deleted last."""
    source, target = Path(source), Path(target)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


def save_hf_atomic(model, tokenizer, target: Path, extra: dict[str, bytes] | None = None) -> None:
    """Save an HF model (safetensors) and tokenizer, plus optional extra files, atomically."""

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)

    replace_dir_atomic(build, target)
