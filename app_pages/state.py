"""Session glue: the sidebar's settings, the cached model, the shared view (and the URL that
carries it), the workspace the pages show and the KFH selection.

Models are held by ``st.cache_resource`` (one copy per process).  Workspaces computed in-process
(organism traces, uploads) are background jobs (``app_pages.jobs``), so their progress shows while
the page stays usable; the tracer's disk cache (``KFH_APP_CACHE``, default
``~/.cache/kfh-workbench``) keeps head scores and sampled traces across restarts.  A run folder's
workspace is read from its files on the script thread: that takes a moment, not minutes.

The *view* is what several pages share and a link should reproduce: the run folder, the chosen
KFHs, the head in focus, the trace and the SRA split.  It lives in session state (widget state is
dropped when a page is left) and is mirrored in the URL's query parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from app_pages import jobs
from app_pages.data import Workspace, default_n_traces, organism_workspace, run_records, run_workspace, \
    upload_workspace
from app_pages.results import ResultsFolder, results_folder
from workbench.cli import USER_ERRORS
from workbench.heads import Head, head_name, parse_head
from workbench.models import LoadedModel, load_model
from workbench.traces import TraceRecord, is_organism

VIEW_KEYS = ("model", "run", "results", "kfh", "head", "trace", "split")  # query parameters of a shared link


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
    run_dir: str = ""  # the results folder the pages read (a model folder when a parent was given)
    runs_root: str = "runs"  # where the training page also looks for metrics.jsonl
    n_traces: int = 64
    seed: int = 0
    upload: Upload | None = None
    labels: str = "organism"  # label source of uploaded traces


def settings() -> Settings:
    if "settings" not in st.session_state:
        st.session_state["settings"] = Settings(n_traces=default_n_traces())
    return st.session_state["settings"]


# --- the shared view and the URL -----------------------------------------------------------------------


def _view() -> dict:
    if "view" not in st.session_state:  # a new session: start from the link it was opened with
        st.session_state["view"] = {k: st.query_params[k] for k in VIEW_KEYS if st.query_params.get(k)}
        st.session_state["linked_kfh"] = st.session_state["view"].get("kfh")
    return st.session_state["view"]


def view(name: str, default: str | None = None) -> str | None:
    return _view().get(name, default)


def set_view(name: str, value: str | None) -> None:
    if value in (None, ""):
        _view().pop(name, None)
    else:
        _view()[name] = str(value)


def save_url() -> None:
    """Mirror the view in the address bar, so the link reopens this view."""
    wanted = {k: v for k, v in _view().items() if k in VIEW_KEYS}
    if {k: st.query_params.get(k) for k in st.query_params} != wanted:
        st.query_params.from_dict(wanted)


# --- model ---------------------------------------------------------------------------------------------


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


def device_options() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- the results folder and the workspace --------------------------------------------------------------


def results(s: Settings | None = None) -> ResultsFolder | None:
    """The sidebar's results folder, or None without one."""
    s = s or settings()
    return results_folder(s.run_dir) if s.run_dir else None


@st.cache_resource(show_spinner=False, max_entries=8)
def _run_workspace(path: str, stamp: tuple) -> Workspace:
    return run_workspace(path)


def _file_stamp(folder: Path) -> tuple:
    """Changes when a run file is rewritten, so the cached workspace is read again."""
    return tuple((f.name, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file())


def _background(key: tuple, title: str, work, quiet: bool) -> Workspace | None:
    """The workspace a background job builds: its progress while it runs, then its result; a
    failed or cancelled job says so and offers to start again.  ``quiet``: a finished job's result
    or None, without starting one or showing anything."""
    name = "::".join(map(str, key))
    job = jobs.get(name)
    if quiet:
        return job.result if job is not None and not job.running else None
    if job is not None and not job.running and job.error is not None:
        if job.cancelled:
            st.info(f"{title}: cancelled.")
        elif isinstance(job.error, USER_ERRORS):
            st.error(str(job.error))
        else:
            st.error(f"{title} failed: {type(job.error).__name__}: {job.error}")
        if st.button("Start again", key=f"restart-{name}"):
            jobs.forget(name)
            st.rerun()
        return None
    job = jobs.start(name, title, work)
    if job.running:
        jobs.show_progress(job)
        return None
    return job.result


def workspace(s: Settings | None = None, quiet: bool = False) -> Workspace | None:
    """The trace set the pages show: an upload, else the results folder's discovery, else organism
    traces (sampled in the background, only when no results folder is given or on request).

    Shows the problem or the progress (never a traceback) and returns None while there is nothing
    to show; ``quiet``: only a workspace that is ready, with nothing shown and nothing started.
    """
    s = s or settings()
    try:
        if s.upload is not None:
            loaded = get_model(s.model, s.device) if quiet else model_or_error(s)
            if loaded is None:
                return None
            up, lock = s.upload, jobs.model_lock(loaded.model)
            return _background(("upload", up.digest, loaded.fingerprint, s.labels), f"Scoring {up.name}",
                               lambda job: jobs.locked(job, lock, lambda: upload_workspace(
                                   loaded, up.name, up.data, s.labels, job.report)), quiet)
        folder = results(s)
        if folder is not None and folder.discover is not None:
            return _run_workspace(str(folder.discover.resolve()), _file_stamp(folder.discover))
        if folder is not None and not st.session_state.get("sample_anyway"):
            if not quiet:
                st.info(f"{s.run_dir} holds no head ranking (sra.csv + kfh.json, e.g. from `python "
                        f"experiments/discover_heads.py --out {s.run_dir}`), so this page has nothing of it to show.")
                if st.button("Use freshly sampled organism traces instead", key="sample_anyway_button"):
                    st.session_state["sample_anyway"] = True
                    st.rerun()
            return None
        loaded = get_model(s.model, s.device) if quiet else model_or_error(s)
        if loaded is None:
            return None
        if not is_organism(loaded):
            if not quiet:
                st.info(f"Model {loaded.name!r} has no built-in traces: upload a trace file (JSONL or parquet with "
                        "'prompt' and 'response') in the sidebar, or give a run folder with a discovery in it.")
            return None
        n, seed, lock = s.n_traces, s.seed, jobs.model_lock(loaded.model)
        return _background(("organism", loaded.fingerprint, n, seed), f"Preparing {n} organism traces",
                           lambda job: jobs.locked(job, lock, lambda: organism_workspace(
                               loaded, n, seed, job.report)), quiet)
    except (*USER_ERRORS, OSError) as e:
        if not quiet:
            st.error(str(e))
        return None


@st.cache_resource(show_spinner="Reading the traces token by token ...", max_entries=4)
def _records(source: str, workspace_id: int, fingerprint: str, _ws: Workspace, _loaded: LoadedModel
             ) -> dict[str, TraceRecord]:
    return {r.trace_id: r for r in run_records(_ws, _loaded)}


def trace_records(ws: Workspace, loaded: LoadedModel) -> dict[str, TraceRecord]:
    """The workspace's traces token by token (read once per workspace and model), by trace id."""
    return _records(ws.source, id(ws), loaded.fingerprint, ws, loaded)


# --- the KFH selection and the head in focus -----------------------------------------------------------


def _selection_key(ws: Workspace) -> str:
    return f"kfh-selection::{ws.source}::{ws.fingerprint}"


def _valid(names: list[str], ws: Workspace) -> bool:
    try:
        return all(layer < ws.n_layers and head < ws.n_heads for layer, head in map(parse_head, names))
    except ValueError:
        return False


def selected_heads(ws: Workspace) -> list[Head]:
    """The KFHs chosen on the Heads page for this workspace (default: the link's, else discovery's)."""
    key = _selection_key(ws)
    if key not in st.session_state:  # the link's KFHs go to the first workspace shown, then its own defaults
        _view()
        linked = [n for n in (st.session_state.pop("linked_kfh", None) or "").split(",") if n]
        st.session_state[key] = linked if linked and _valid(linked, ws) else [head_name(h) for h in ws.kfh]
    set_view("kfh", ",".join(st.session_state[key]))
    return [parse_head(h) for h in st.session_state[key]]


def set_selected_heads(ws: Workspace, names: list[str]) -> None:
    st.session_state[_selection_key(ws)] = list(names)
    set_view("kfh", ",".join(names))


def toggle_head(ws: Workspace, head: Head) -> bool:
    """Add ``head`` to the KFHs or take it out; True when it is now a KFH."""
    names = [head_name(h) for h in selected_heads(ws)]
    name = head_name(head)
    set_selected_heads(ws, [n for n in names if n != name] if name in names else names + [name])
    return name not in names


def focused_head(ws: Workspace) -> Head | None:
    """The head last clicked (or linked), when it exists in this workspace."""
    name = view("head")
    return parse_head(name) if name and _valid([name], ws) else None
