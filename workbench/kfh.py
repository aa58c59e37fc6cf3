"""``kfh.json``: the Key-Focus Heads chosen for one model, with the evidence they were chosen on.

The file is keyed on the model's fingerprint, so heads probed on one checkpoint are never
silently applied to another model (a different architecture, or different weights)::

    {"model": "organism", "fingerprint": "...", "n_layers": 4, "n_heads": 6,
     "heads": [[3, 1], [2, 4]], "names": ["L3H1", "L2H4"], "sra": [0.93, 0.91],
     "settings": {"n_traces": 200, "preset": "organism", "labels": "organism", "top_n": 2}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from workbench.heads import Head, head_name, model_shape, parse_head
from workbench.models import LoadedModel


@dataclass
class KFHSelection:
    model: str
    fingerprint: str
    n_layers: int
    n_heads: int
    heads: list[Head]
    sra: list[float]
    settings: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [head_name(h) for h in self.heads]

    def to_json(self) -> dict:
        return {"model": self.model, "fingerprint": self.fingerprint, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "heads": [list(h) for h in self.heads], "names": self.names,
                "sra": [None if math.isnan(s) else float(s) for s in self.sra], "settings": self.settings}


def _check_range(sel: KFHSelection, n_layers: int, n_heads: int, where: str) -> None:
    for layer, head in sel.heads:
        if layer >= n_layers or head >= n_heads:
            raise ValueError(f"{where}: head {head_name((layer, head))} is out of range for a model with "
                             f"{n_layers} layers and {n_heads} heads")


def save_kfh(path: str | Path, sel: KFHSelection) -> Path:
    """Write ``sel`` as JSON; heads must fit the shape recorded with them."""
    _check_range(sel, sel.n_layers, sel.n_heads, str(path))
    if len(sel.sra) != len(sel.heads):
        raise ValueError(f"{path}: {len(sel.heads)} heads but {len(sel.sra)} SRA values")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sel.to_json(), indent=2) + "\n")
    return path


def load_kfh(path: str | Path, loaded: LoadedModel | None = None, same_weights: bool = True) -> KFHSelection:
    """Read a ``kfh.json``; with ``loaded``, refuse a file made for another model or shape.

    ``same_weights=False`` checks the shape only: for later checkpoints of the model the heads
    were probed on (fine-tuning keeps the head set fixed, as AttnPO does).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KFH file {path} does not exist (write one with experiments/discover_heads.py)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    missing = [k for k in ("fingerprint", "n_layers", "n_heads", "heads") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    try:
        heads = [parse_head(h) for h in raw["heads"]]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: field 'heads': {e}") from e
    if not heads:
        raise ValueError(f"{path}: field 'heads' is empty")
    sra = raw.get("sra") or [None] * len(heads)
    sel = KFHSelection(raw.get("model", "?"), raw["fingerprint"], int(raw["n_layers"]), int(raw["n_heads"]),
                       heads, [float("nan") if s is None else float(s) for s in sra], raw.get("settings", {}))
    if len(sel.sra) != len(heads):
        raise ValueError(f"{path}: {len(heads)} heads but {len(sel.sra)} SRA values")
    _check_range(sel, sel.n_layers, sel.n_heads, str(path))
    if loaded is not None:
        n_layers, n_heads, _ = model_shape(loaded.model.config)
        if (n_layers, n_heads) != (sel.n_layers, sel.n_heads):
            raise ValueError(f"{path} was made for model {sel.model!r} with {sel.n_layers} layers x {sel.n_heads} "
                             f"heads, but {loaded.name!r} has {n_layers} x {n_heads}")
        if same_weights and sel.fingerprint != loaded.fingerprint:
            raise ValueError(f"{path} was made for model {sel.model!r} (fingerprint {sel.fingerprint}), not for "
                             f"{loaded.name!r} (fingerprint {loaded.fingerprint}); re-run discovery on this model "
                             "(the same model loaded in another --dtype has other weights, so another fingerprint)")
    return sel
