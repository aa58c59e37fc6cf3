"""A result shown from a file (or from this session's run) says what made it: model, heads,
settings and date, and warns when those differ from what the sidebar and the Heads page chose."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Callable

import streamlit as st

from app_pages.results import Provenance, read_result
from app_pages.state import USER_ERRORS, get_model, selected_heads, settings, workspace
from workbench.heads import head_name


def _when(created: str | None) -> str:
    if not created:
        return "date not recorded in the file"
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return created


def _setting(name: str, value) -> str:
    if isinstance(value, dict):  # e.g. the trace set: {"source": "organism", "n_traces": 60, "seed": ...}
        value = ", ".join(f"{k} {v}" for k, v in value.items())
    return f"{name.replace('_', ' ')} {value}"


def show_provenance(prov: Provenance, where: str) -> None:
    """Caption with ``where`` the result comes from and how it was made; warnings on mismatches."""
    model = prov.model or "model not recorded"
    if prov.fingerprint:
        model += f" (weights {prov.fingerprint[:12]})"
    heads = ", ".join(prov.heads) if prov.heads else "heads not recorded"
    details = " · ".join(_setting(k, v) for k, v in prov.settings.items())
    st.caption(f"{where} · made on **{model}** · KFHs **{heads}** · {details} · {_when(prov.created)}")
    s = settings()
    try:
        current = get_model(s.model, s.device)
    except (*USER_ERRORS, OSError):
        current = None
    if current is not None and prov.model is not None and (
            prov.fingerprint != current.fingerprint if prov.fingerprint else prov.model != current.name):
        st.warning(f"Made on model {prov.model!r}{f' (weights {prov.fingerprint[:12]})' if prov.fingerprint else ''}"
                   f", not on the sidebar's model {current.name!r} (weights {current.fingerprint[:12]}).")
    ws = workspace(quiet=True)
    if ws is not None and prov.heads:
        chosen = [head_name(h) for h in selected_heads(ws)]
        if sorted(chosen) != sorted(prov.heads):
            st.warning(f"Made with KFHs {', '.join(prov.heads)}; the Heads page now selects "
                       f"{', '.join(chosen) or 'none'}. The numbers below are for the file's heads.")


def show_result_file(path: Path, settings_keys: tuple[str, ...], show: Callable[[dict, str], None]) -> dict | None:
    """Read ``path``, caption it with its provenance and plot it with ``show``; errors name the file."""
    try:
        result = read_result(path)
    except (*USER_ERRORS, OSError) as e:
        st.error(f"Cannot read {path}: {e}")
        return None
    show_provenance(Provenance.of(result, settings_keys), f"From `{path}`")
    try:
        show(result, path.parent.name + "_" + path.stem)
    except (*USER_ERRORS, TypeError, IndexError, json.JSONDecodeError) as e:
        st.error(f"Cannot plot {path}: {type(e).__name__}: {e}")
    return result
