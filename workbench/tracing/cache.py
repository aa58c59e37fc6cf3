"""Disk cache of step scores, so re-running an analysis does not re-trace.

One safetensors file per (model fingerprint, token ids, spans, head set, what is stored: step
scores or the step x step attention); the backend is not part of the key because all backends
give the same numbers.  Writes are atomic (``workbench.cache.write_atomic``), so a killed run
never leaves a half-written entry.  Any other per-trace tensor (e.g. counterfactual log-prob
drops) can live beside them under its own key.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from workbench.cache import content_key, write_atomic
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
        named = () if what is None else (what,)
        return content_key(SCORE_VERSION, fingerprint, list(item.input_ids), [list(s) for s in item.steps],
                           list(item.answer), "all" if heads is None else [list(h) for h in heads], *named)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        return load_file(path)["scores"] if path.is_file() else None

    def put(self, key: str, scores: torch.Tensor) -> None:
        write_atomic(self._path(key), lambda tmp: save_file({"scores": scores.contiguous()}, tmp))
