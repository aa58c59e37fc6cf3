"""Where a results folder keeps each artefact, and what a result file says about how it was made.

A *results folder* is what ``experiments/reproduce.py`` publishes for one model
(``docs/results/<model>/``: ``discover/``, ``ablation.json``, ``stability/<run>/stability.json``,
``runs/<method>-seed<k>/metrics.jsonl``, ``methods.csv``) or the output folder of one experiment
script (``sra.csv`` + ``kfh.json`` + ..., or ``ablation.json``, or ``stability.json``, or a
trainer's run with ``metrics.jsonl``).  A folder that holds only results folders (``docs/results``)
is a *parent*: the app lists its model folders instead of guessing.  Nothing here touches Streamlit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DISCOVER_FILES = ("sra.csv", "kfh.json")  # enough for the heatmap and the table
TRACE_FILES = ("traces.jsonl", "scores.safetensors")  # what the trace viewer and token view also need


@dataclass
class ResultsFolder:
    root: Path
    discover: Path | None = None  # the folder with sra.csv
    ablation: Path | None = None
    stability: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)  # training runs: folders with metrics.jsonl
    methods: Path | None = None  # methods.csv: the reproduction's table, mean and std over seeds

    @property
    def empty(self) -> bool:
        return not (self.discover or self.ablation or self.stability or self.runs or self.methods)

    def missing_traces(self) -> list[str]:
        """The files the trace viewer needs that the discover folder lacks (all of them without one)."""
        if self.discover is None:
            return list(DISCOVER_FILES + TRACE_FILES)
        return [f for f in TRACE_FILES if not (self.discover / f).is_file()]

    def contents(self) -> str:
        """One line for the sidebar: what each page can show from this folder."""
        parts = [("head ranking", self.discover is not None),
                 ("traces", self.discover is not None and not self.missing_traces()),
                 ("ablation", self.ablation is not None), (f"{len(self.stability)} stability", bool(self.stability)),
                 (f"{len(self.runs)} training runs", bool(self.runs))]
        return " · ".join(("✓ " if ok else "✗ ") + name for name, ok in parts)


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def results_folder(root: str | Path) -> ResultsFolder:
    """The artefacts of ``root`` at the places the experiment scripts and reproduce.py put them."""
    root = Path(root)
    discover = next((d for d in (root, root / "discover") if (d / "sra.csv").is_file()), None)
    stability = [p for p in [root / "stability.json", root / "stability" / "stability.json",
                             *sorted((root / "stability").glob("*/stability.json"))] if p.is_file()]
    runs = sorted({p.parent for p in [root / "metrics.jsonl", *root.glob("*/metrics.jsonl"),
                                      *root.glob("runs/*/metrics.jsonl")] if p.is_file()})
    return ResultsFolder(root, discover, _first(root / "ablation.json", root / "ablation" / "ablation.json"),
                         stability, runs, _first(root / "methods.csv"))


def model_folders(root: str | Path) -> list[Path]:
    """The sub-folders of ``root`` that are results folders (``docs/results`` -> ``organism``, ...);
    empty when ``root`` holds results itself."""
    root = Path(root)
    if not root.is_dir() or not results_folder(root).empty:
        return []
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not results_folder(d).empty]


def read_result(path: Path) -> dict:
    """A result JSON file as a dict; errors name the file."""
    try:
        result = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}")
    return result


@dataclass
class Provenance:
    """How a result was made, as far as its file says."""

    model: str | None
    fingerprint: str | None
    heads: list[str]
    created: str | None
    settings: dict  # the other scalar settings recorded, e.g. m, mode, n_samples, n_traces

    @classmethod
    def of(cls, result: dict, settings: tuple[str, ...]) -> "Provenance":
        return cls(result.get("model"), result.get("fingerprint"), list(result.get("kfh") or []),
                   result.get("created"), {k: result[k] for k in settings if result.get(k) is not None})
