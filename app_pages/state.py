"""Session glue: the sidebar's settings, the cached model and the cached workspace of the pages.

Models are held by ``st.cache_resource`` (one copy per process); workspaces by a process-wide
store of background jobs keyed on their inputs (the page shows the job's progress), while the
tracer's disk cache (``KFH_APP_CACHE``, default ``~/.cache/kfh-workbench``) keeps head scores
across restarts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st
import torch

from app_pages.data import Workspace, default_n_traces, is_discover_run, organism_workspace, run_workspace, \
    upload_workspace
from workbench.cli import USER_ERRORS
from workbench.heads import Head, head_name, parse_head
from workbench.models import LoadedModel, load_model
from workbench.traces import is_organism

MAX_WORKSPACES = 8


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    digest: str

    @classmethod
    def of(cls, name: str, data: bytes) -> "Upload":
        return cls(name, data, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class Settings:
    """What the sidebar chose; pages read it from ``st.session_state["settings"]``."""

    model: str = "organism"  # load_model spec
    device: str | None = None  # None: CUDA when present, else CPU
    run_dir: str = ""  # a run directory (discover / ablation / stability artefacts)
    runs_root: str = "runs"  # where the training page looks for metrics.jsonl
    n_traces: int = 64
    seed: int = 0
    upload: Upload | None = None
    labels: str = "organism"  # label source of uploaded traces


def settings() -> Settings:
    if "settings" not in st.session_state:
        st.session_state["settings"] = Settings(n_traces=default_n_traces())
    return st.session_state["settings"]


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def get_model(spec: str, device: str | None) -> LoadedModel:
    loaded = load_model(spec, device=device)
    loaded.model.eval()
    return loaded


def model_or_error(s: Settings) -> LoadedModel | None:
    """The sidebar's model, or None after showing why it cannot be loaded."""
    try:
        return get_model(s.model, s.device)
    except (*USER_ERRORS, OSError) as e:
        st.error(f"Cannot load model {s.model!r}: {e}")
        return None


class Job:
    """A workspace being built on a background thread, so that it finishes (and is kept) even when
    the browser session that started it reloads or goes away; later sessions wait on the same job."""

    def __init__(self, build):
        self.frac, self.text = 0.0, "starting"
        self.result: Workspace | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(build,), daemon=True)
        self.thread.start()

    def _progress(self, frac: float, text: str) -> None:
        self.frac, self.text = min(max(frac, 0.0), 1.0), text

    def _run(self, build) -> None:
        try:
            self.result = build(self._progress)
        except BaseException as e:  # handed to the page that waits on the job
            self.error = e


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def _cached(key: tuple, build) -> Workspace:
    jobs, lock = _jobs()
    with lock:
        if key not in jobs:
            jobs[key] = Job(build)
            while len(jobs) > MAX_WORKSPACES:
                jobs.popitem(last=False)
        job = jobs[key]
    if job.thread.is_alive():
        bar = st.progress(job.frac, job.text)
        while job.thread.is_alive():
            job.thread.join(0.25)
            bar.progress(job.frac, job.text)
        bar.empty()
    if job.error is not None:
        with lock:
            jobs.pop(key, None)  # a later run tries again
        raise job.error
    return job.result


def workspace(s: Settings | None = None) -> Workspace | None:
    """The trace set the pages show: an upload, else a discover run directory, else organism traces.

    Shows the problem (never a traceback) and returns None when there is nothing to show.
    """
    s = s or settings()
    try:
        if s.upload is not None:
            loaded = model_or_error(s)
            if loaded is None:
                return None
            return _cached(("upload", s.upload.digest, loaded.fingerprint, s.labels),
                           lambda p: upload_workspace(loaded, s.upload.name, s.upload.data, s.labels, p))
        if s.run_dir and is_discover_run(Path(s.run_dir)):
            run = Path(s.run_dir).resolve()
            stamp = (run / "scores.safetensors").stat().st_mtime_ns
            return _cached(("run", str(run), stamp), lambda p: run_workspace(run))
        loaded = model_or_error(s)
        if loaded is None:
            return None
        if not is_organism(loaded):
            st.info(f"Model {loaded.name!r} has no built-in traces: upload a trace file (JSONL or parquet with "
                    "'prompt' and 'response') in the sidebar, or give a discover run directory.")
            return None
        return _cached(("organism", loaded.fingerprint, s.n_traces, s.seed),
                       lambda p: organism_workspace(loaded, s.n_traces, s.seed, p))
    except USER_ERRORS as e:
        st.error(str(e))
        return None


def show_run_file(s: Settings, name: str, show: Callable[[dict, str], None], hint: str) -> None:
    """Plot ``name`` (e.g. ``ablation.json``) of the sidebar's run directory with ``show``, or say
    why it cannot be plotted; without one, an info line ending in ``hint``."""
    path = Path(s.run_dir) / name if s.run_dir else None
    if path is None or not path.is_file():
        st.info(f"No {name} in the run directory (sidebar). {hint}")
        return
    st.subheader(f"From {path}")
    try:
        show(json.loads(path.read_text()), path.stem)
    except (*USER_ERRORS, TypeError, json.JSONDecodeError) as e:
        st.error(f"Cannot plot {path}: {e}")


def device_options() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _selection_key(ws: Workspace) -> str:
    return f"kfh-selection::{ws.source}::{ws.fingerprint}"


def selected_heads(ws: Workspace) -> list[Head]:
    """The KFHs chosen on the Heads page for this workspace (default: the ones discovery chose)."""
    return [parse_head(h) for h in st.session_state.get(_selection_key(ws), [head_name(h) for h in ws.kfh])]


def set_selected_heads(ws: Workspace, names: list[str]) -> None:
    st.session_state[_selection_key(ws)] = list(names)
