"""What made a result file: the model it was measured on and when, written into every result JSON
(``ablation.json``, ``stability.json``, the ``settings`` of ``kfh.json``) so that a viewer can say
where a number comes from and warn when it is shown beside another model or head choice."""

from __future__ import annotations

from datetime import datetime, timezone

from workbench.models import LoadedModel


def stamp(loaded: LoadedModel) -> dict:
    """``{"model", "fingerprint", "created"}``: the model's name and weights fingerprint, and the UTC time."""
    return {"model": loaded.name, "fingerprint": loaded.fingerprint,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
