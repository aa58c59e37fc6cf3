"""Content-keyed disk caches, so a killed or repeated run redoes no finished trace.

A key is the hash of everything that determines a result (model fingerprint, token ids, spans,
settings); an entry is written to a temporary file and renamed into place, so a kill never leaves
half an entry.  Scripts keep their cache under their run directory by default (``OUT/cache``):
rerunning the same command after a kill picks up every trace that was finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def content_key(*parts) -> str:
    """A short hash of JSON-serialisable ``parts``."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` into a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class JsonCache:
    """One JSON object per key: per-trace results that are not tensors (e.g. ablation counts)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, row: dict) -> None:
        write_atomic(self._path(key), lambda tmp: Path(tmp).write_text(json.dumps(row)))


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache DIR`` / ``--no-cache``; by default the cache lives in ``OUT/cache``."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--cache", type=Path, default=None,
                   help="cache folder for per-trace results (default: OUT/cache, so rerunning a killed "
                        "command resumes; share one folder between runs to reuse traces across them)")
    g.add_argument("--no-cache", action="store_true", help="recompute everything, write no cache")


def cache_dir(args: argparse.Namespace) -> Path | None:
    """The cache folder the parsed ``args`` ask for (None with ``--no-cache``)."""
    return None if args.no_cache else (args.cache or args.out / "cache")
