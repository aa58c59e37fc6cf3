"""Disk cache of step scores, so re-running an analysis does not re-trace.

One safetensors file per (model fingerprint, token ids, spans, head set, what is stored: step
scores or the step x step attention); the backend is not part of the key because all backends
give the same numbers.  Writes go to a temporary file
that is renamed into place, so a killed run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench.heads import Head
from workbench.tracing.items import TraceItem

SCORE_VERSION = 1  # bump when the score definition changes


class ScoreCache:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(fingerprint: str, item: TraceItem, heads: list[Head] | None, what: str | None = None) -> str:
        """``what``: None for step scores (keys as before), else the name of another quantity."""
        content = [SCORE_VERSION, fingerprint, list(item.input_ids), [list(s) for s in item.steps],
                   list(item.answer), "all" if heads is None else [list(h) for h in heads]]
        if what is not None:
            content.append(what)
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        return load_file(path)["scores"] if path.is_file() else None

    def put(self, key: str, scores: torch.Tensor) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.dir)
        os.close(fd)
        try:
            save_file({"scores": scores.contiguous()}, tmp)
            os.replace(tmp, self._path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
