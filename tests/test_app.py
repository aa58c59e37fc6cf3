"""The Streamlit app, driven headless by Streamlit's AppTest on the organism.

The first open samples ``KFH_APP_N_TRACES`` organism traces (kept small here) and scores every
head in a background job; ``settle`` re-runs the page until no job shows progress, as the
browser's polling fragment does.  Run folders are written by the experiment scripts themselves.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.heads import head_name, model_shape, parse_head  # noqa: E402
from workbench.kfh import load_kfh  # noqa: E402
from workbench.organism import task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PAGES = ["app_pages/heads.py", "app_pages/traces.py", "app_pages/tokens.py", "app_pages/ablation.py",
         "app_pages/stability.py", "app_pages/training.py"]
TIMEOUT = 900  # first open samples and traces on a busy 2-core CPU


@pytest.fixture(scope="module", autouse=True)
def app_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFH_APP_N_TRACES", "8")
        mp.setenv("KFH_APP_CACHE", str(tmp_path_factory.mktemp("app-cache")))
        mp.setattr(sys, "argv", ["app.py"])
        if str(ROOT) not in sys.path:
            mp.syspath_prepend(str(ROOT))
        yield


@pytest.fixture(scope="module")
def discover_run(tmp_path_factory) -> Path:
    """A full discover run folder (sra.csv, kfh.json, traces.jsonl, scores.safetensors, ...) written by
    experiments/discover_heads.py on teacher-forced reference traces (no sampling: quick)."""
    from experiments.discover_heads import main as discover

    folder = tmp_path_factory.mktemp("discover-run")
    traces, out = folder / "reference.jsonl", folder / "discover"
    traces.write_text(reference_jsonl(8, seed=11))
    discover(["--model", "organism", "--traces", str(traces), "--n-traces", "8", "--n-boot", "20", "--out", str(out)])
    return out


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail if the app samples organism traces (a results folder must be shown from its files)."""
    from app_pages import data

    def refuse(*args, **kwargs):
        raise AssertionError("the app sampled organism traces instead of reading the run folder")

    monkeypatch.setattr(data, "sample_organism", refuse)


def settle(at: AppTest, timeout: float = TIMEOUT) -> AppTest:
    """Re-run until no background job shows its progress bar."""
    deadline = time.monotonic() + timeout
    while at.get("progress"):
        assert time.monotonic() < deadline, f"a background job still runs after {timeout} s"
        time.sleep(0.5)
        at.run()
    return at


def start(run_dir: Path | None = None, runs_root: Path | None = None, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if run_dir is not None:
        at.text_input(key="run_dir").set_value(str(run_dir))
    if runs_root is not None:
        at.text_input(key="runs_root").set_value(str(runs_root))
    if run_dir is not None or runs_root is not None:
        at.run()
    return settle(at)


def switch(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    return settle(at)


def clean(at: AppTest) -> None:
    """No exception element and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def chart(at: AppTest, i: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[i].proto.spec)


def array(value) -> np.ndarray:
    """A plotly array from its JSON: a list, or plotly 6's typed-array {dtype, bdata, shape}."""
    if isinstance(value, dict):
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = [int(s) for s in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.array(value, dtype=float)


def texts(elements) -> str:
    return " ".join(e.value for e in elements)


def reference_jsonl(n: int, seed: int) -> str:
    """``n`` of the organism task's reference traces as prompt/response JSONL rows."""
    rng = random.Random(seed)
    rows = [task.sample_trace(rng) for _ in range(n)]
    return "\n".join(json.dumps({"trace_id": f"ref-{i}", "prompt": t.prompt, "response": t.response})
                     for i, t in enumerate(rows)) + "\n"


# --- the organism, sampled in the background -----------------------------------------------------------


def test_every_page_renders_on_the_organism():
    at = start()
    clean(at)
    for page in PAGES:
        switch(at, page)
        clean(at)
        assert at.title, f"{page} shows no title"
    switch(at, "app_pages/traces.py")
    assert at.get("plotly_chart"), "the trace viewer shows no step chart"
    assert at.get("html"), "the trace viewer shows no steps"
    switch(at, "app_pages/tokens.py")
    assert len(at.get("plotly_chart")) == 2, "the token view shows no strip or no side-by-side heads"


def test_the_organism_trace_pool_grows_and_is_kept_on_disk(organism, monkeypatch):
    from app_pages import data

    requested = []
    real = data.sample_organism

    def counting(loaded, n, **kwargs):
        requested.append(n)
        return real(loaded, n, **kwargs)

    monkeypatch.setattr(data, "sample_organism", counting)
    reports = []
    first = data.organism_workspace(organism, 6, seed=3, report=lambda *r: reports.append(r))
    assert requested == [6] and list((data.cache_dir() / "traces").glob("organism-*-s3.jsonl"))
    assert list((data.cache_dir() / "scores").glob("*.safetensors"))
    assert [r for r in reports if r[2] == "sampling organism traces"][-1][:2] == (6, 6)
    assert [r[:2] for r in reports if r[2].startswith("tracing")] == [(0, 6)]  # one chunk of 8 traces

    again = data.organism_workspace(organism, 6, seed=3, report=lambda *r: None)  # a restarted app: no sampling
    fewer = data.organism_records(organism, 4, seed=3, report=lambda *r: None)
    assert requested == [6]
    assert [t.trace_id for t in again.traces] == [t.trace_id for t in first.traces]
    assert [r.trace_id for r in fewer] == [t.trace_id for t in first.traces][:4]
    for a, b in zip(again.scores, first.scores):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(again.table, first.table)
    assert first.verdict["n_held_out"] == first.settings["n_held_out"] and first.verdict["lines"]

    more = data.organism_records(organism, 9, seed=3, report=lambda *r: None)  # only the 3 it lacks
    assert requested == [6, 3] and [r.trace_id for r in more][:6] == [t.trace_id for t in first.traces]
    assert len({r.trace_id for r in more}) == 9

    reports.clear()  # progress moves per sampled batch, with counts, not once at the end
    data.organism_records(organism, 40, seed=4, report=lambda *r: reports.append(r))
    sampled = [done for done, total, what in reports if what == "sampling organism traces"]
    assert len(sampled) > 2 and sampled == sorted(sampled) and sampled[-1] == 40 and 0 < sampled[0] < 40


def test_heatmap_has_a_cell_per_head_matching_the_table_and_marks_the_kfhs(organism):
    at = start()
    clean(at)
    n_layers, n_heads, _ = model_shape(organism.model.config)
    fig = chart(at)
    z = array(fig["data"][0]["z"])
    assert z.shape == (n_layers, n_heads)
    table = at.dataframe[0].value
    assert len(table) == n_layers * n_heads
    for row in table.itertuples():
        np.testing.assert_allclose(z[row.layer, row.head], row.sra, equal_nan=True)
    assert list(table["sra"].dropna()) == sorted(table["sra"].dropna(), reverse=True), "table not sorted by SRA"
    assert "held-out" in fig["layout"]["title"]["text"]
    # hover names the head as L<l>H<h>, with its CI and its rank (by discovery SRA)
    cells = fig["data"][1]
    hover = {c[0]: c for c in cells["customdata"]}
    best = table.sort_values("sra_discovery", ascending=False, kind="stable").iloc[0]
    assert float(hover[best["name"]][2]) == pytest.approx(best["ci_low"]) and int(hover[best["name"]][4]) == 1
    assert "%{customdata[0]}" in cells["hovertemplate"] and "rank" in cells["hovertemplate"]
    # the selected KFHs are starred, in the legend
    marks = fig["data"][2]
    kfh = [parse_head(n) for n in at.multiselect(key="kfh_widget").value]
    assert marks["name"] == "selected KFH" and marks.get("showlegend", True)
    assert sorted((round(y), round(x)) for y, x in zip(array(marks["y"]), array(marks["x"]))) == sorted(kfh)
    assert set(table.loc[table["KFH"], "name"]) == {head_name(h) for h in kfh}
    # discovery SRA on request
    at.radio(key="split_widget").set_value("sra_discovery").run()
    for row in table.itertuples():
        np.testing.assert_allclose(array(chart(at)["data"][0]["z"])[row.layer, row.head], row.sra_discovery)
    assert at.query_params["split"] == "sra_discovery"


def test_ticking_the_table_edits_the_selection():
    from app_pages.data import ticked_heads

    table = pd.DataFrame({"KFH": [True, False, True, False], "name": ["L1H1", "L0H0", "L1H2", "L2H0"]})
    assert ticked_heads(table, {}) == {"L1H1", "L1H2"}
    assert ticked_heads(table, {1: {"KFH": True}, 2: {"KFH": False}}) == {"L1H1", "L0H0"}
    assert ticked_heads(table, {3: {"sra": 0.1}}) == {"L1H1", "L1H2"}  # other columns do not select


def test_select_heads_and_export_writes_a_loadable_kfh(organism, tmp_path):
    at = start()
    at.number_input(key="top_n").set_value(4).run()
    clean(at)
    table = at.dataframe[0].value
    ranked = table.sort_values("sra_discovery", ascending=False, kind="stable")["name"].tolist()
    assert at.multiselect(key="kfh_widget").value == ranked[:4]

    chosen = [ranked[0], ranked[2], ranked[-1]]  # remove two of the top four, add the worst head
    at.multiselect(key="kfh_widget").set_value(chosen).run()
    out = tmp_path / "sel" / "kfh.json"
    at.text_input(key="kfh_out").set_value(str(out)).run()
    at.button(key="write_kfh").click().run()
    clean(at)

    sel = load_kfh(out, organism)  # checks fingerprint and shape against the model
    assert [head_name(h) for h in sel.heads] == chosen
    sra = dict(zip(table["name"], table["sra"]))
    np.testing.assert_allclose(sel.sra, [sra[n] for n in chosen])
    assert sel.settings["labels"] == "organism" and sel.settings["top_n"] == 3
    command = at.code[-1].value
    assert command.startswith("python -m workbench.train --config configs/organism/attnpo.yaml")
    assert f"kfh.path={out}" in command
    assert (APP.parent / "configs/organism/attnpo.yaml").is_file()
    assert at.query_params["kfh"] == ",".join(chosen)  # the link carries the selection

    switch(at, "app_pages/traces.py")  # the selection follows to the trace viewer
    assert at.selectbox(key="colour_by").value == "KFH mean"
    assert at.selectbox(key="colour_by").format_func("KFH mean") == f"KFH mean ({', '.join(chosen)})"


def test_a_link_reopens_the_view():
    at = start()
    ids = [o.split(" · ")[0] for o in switch(at, "app_pages/traces.py").selectbox(key="trace_index").options]
    link = {"kfh": "L0H1,L2H3", "head": "L3H0", "trace": ids[2]}
    at = start(query=link)
    assert at.multiselect(key="kfh_widget").value == ["L0H1", "L2H3"]
    assert at.main.subheader[0].value.startswith("L3H0")  # the head in focus
    switch(at, "app_pages/traces.py")
    assert at.selectbox(key="trace_index").value == 2
    assert at.selectbox(key="colour_by").value == "L3H0"
    assert {k: at.query_params[k] for k in link} == link
    at.selectbox(key="colour_by").set_value("KFH mean").run()
    assert "head" not in at.query_params


def test_trace_viewer_baseline_follows_the_pass_rate():
    at = switch(start(), "app_pages/traces.py")
    clean(at)

    def baseline() -> float:
        return chart(at)["layout"]["shapes"][0]["y0"]

    full = baseline()
    at.slider(key="pass_rate").set_value(0.5).run()
    assert baseline() == pytest.approx(full * 0.25)  # S_base = p^2 |F| / (|q| + |o|)
    bars = array(chart(at)["data"][0]["y"])
    (steps,) = [h for h in at.get("html") if "step 0 ·" in h.proto.body]
    assert steps.proto.body.count("<div") == len(bars)  # one coloured block per step
    assert "plan" in steps.proto.body and "#9467bd" in steps.proto.body  # plan: purple, apart from the blue shade


def test_token_view_shows_the_answer_attention_of_the_chosen_head(organism):
    from app_pages.data import organism_records, token_trace
    from workbench.tracing import answer_attention

    at = switch(start(), "app_pages/tokens.py")
    clean(at)
    at.selectbox(key="token_colour").set_value("L1H1").run()
    clean(at)
    ids = [o.split(" · ")[0] for o in at.selectbox(key="trace_index").options]
    index = at.selectbox(key="trace_index").value
    record = {r.trace_id: r for r in organism_records(organism, 8, 0, lambda *r: None)}[ids[index]]
    tok = token_trace(record, organism.tokenizer)
    p, a0 = tok.prompt_len, tok.answer[0]
    want = answer_attention(organism, record.item(), [(1, 1)])[0].mean(0).numpy()
    strip = chart(at, 0)
    np.testing.assert_allclose(array(strip["data"][0]["y"]), want[p:a0], atol=1e-6)
    (text,) = [h for h in at.get("html") if "step 0 ·" in h.proto.body]
    assert text.proto.body.count("<span title=\"token ") == a0 - p  # every reasoning token, shaded
    side = chart(at, 1)
    assert list(side["data"][0]["y"]) == at.multiselect(key="side_heads").value
    at.selectbox(key="answer_row").set_value(0).run()  # one answer token's row instead of F's mean
    np.testing.assert_allclose(array(chart(at, 0)["data"][0]["y"]),
                               answer_attention(organism, record.item(), [(1, 1)])[0, 0, p:a0].numpy(), atol=1e-6)


def test_a_job_reports_counts_and_time_left_and_stops_on_cancel():
    import threading

    from app_pages.jobs import Cancelled, Job

    go, stopped = threading.Event(), threading.Event()

    def work(job: Job) -> str:
        job.report(0, 10, "ablating traces")
        time.sleep(0.2)
        job.report(4, 10)
        go.wait(timeout=30)
        try:
            job.report(5, 10)
        except Cancelled:
            stopped.set()
            raise
        return "done"

    job = Job("t", "Test job", work)
    deadline = time.monotonic() + 30
    while job.done < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    status = job.status()
    assert job.running and status.startswith("ablating traces: 4 / 10 ·") and "s left" in status, status
    assert job.fraction == pytest.approx(0.4)
    job.cancel()
    go.set()
    job.thread.join(timeout=30)
    assert stopped.is_set() and job.cancelled and not job.running and job.result is None


def test_in_app_ablation_reports_progress_and_can_be_cancelled():
    at = switch(start(), "app_pages/ablation.py")
    at.number_input(key="abl_traces").set_value(8)
    at.number_input(key="abl_samples").set_value(64)
    at.button(key="abl_run").click().run()
    bars = at.get("progress")
    assert bars and "Ablating 8 traces" in bars[0].proto.text, "no progress bar while the ablation runs"
    (cancel,) = [b for b in at.button if b.key.startswith("cancel-ablation")]
    cancel.click().run()
    settle(at, timeout=300)
    assert "cancelled" in texts(at.info) and not at.error
    assert "ablation_run" not in at.session_state


def test_a_bad_upload_shows_an_error_not_a_traceback():
    good = json.dumps({"prompt": "a = 1 . What is a ? <think>", "response": "\nNeed a . </think> \\boxed{ 1 }"})
    cases = {
        ("bad.jsonl", good + "\n{not json\n"): ["bad.jsonl:2", "not valid JSON"],
        ("rows.jsonl", good + "\n" + json.dumps({"prompt": "x"}) + "\n"): ["rows.jsonl", "'response'", "row 1"],
        ("traces.csv", "prompt,response\n"): [".jsonl or .parquet"],
    }
    for (name, text), expected in cases.items():
        at = start()
        at.sidebar.file_uploader[0].set_value((name, text.encode(), "application/octet-stream")).run()
        settle(at)
        assert not at.exception, [e.value for e in at.exception]
        messages = texts(at.error)
        assert all(x in messages for x in expected), (name, messages)
        assert "Traceback" not in messages


def test_a_parquet_upload_without_a_response_column_names_it(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"prompt": ["a = 1 . What is a ? <think>"], "answer": ["1"]}).to_parquet(path)
    at = start()
    at.sidebar.file_uploader[0].set_value(("t.parquet", path.read_bytes(), "application/octet-stream")).run()
    settle(at)
    assert not at.exception
    assert "missing column(s) 'response'" in texts(at.error)


def test_an_uploaded_trace_file_is_scored(organism):
    at = start()
    at.sidebar.file_uploader[0].set_value(("reference.jsonl", reference_jsonl(6, seed=5).encode(),
                                           "application/json")).run()
    settle(at)
    clean(at)
    assert any("upload reference.jsonl" in c.value for c in at.main.caption)
    n_layers, n_heads, _ = model_shape(organism.model.config)
    assert array(chart(at)["data"][0]["z"]).shape == (n_layers, n_heads)
    switch(at, "app_pages/traces.py")
    clean(at)
    options = at.selectbox(key="trace_index").options
    assert len(options) == 6 and options[0].startswith("ref-0")


def test_launch_small_ablation_and_stability_then_plot_them_from_a_run_dir(organism, tmp_path):
    at = switch(start(), "app_pages/ablation.py")
    at.number_input(key="abl_traces").set_value(2)
    at.number_input(key="abl_samples").set_value(2)
    at.button(key="abl_run").click().run()
    settle(at)
    clean(at)
    ablation = at.session_state["ablation_run"]
    assert set(ablation["conditions"]) == {"none", "high", "low", "random"}
    assert ablation["ks"] == [1, 2] and at.get("plotly_chart")
    kfh = at.session_state["view"]["kfh"].split(",")
    assert ablation["kfh"] == kfh and ablation["fingerprint"] == organism.fingerprint and ablation["created"]
    assert ablation["measure"] == "both" and "F_per_token" in ablation["conditions"]["high"]["logprob"]
    assert "log p F_per_token" in at.dataframe[0].value.columns

    switch(at, "app_pages/stability.py")
    at.number_input(key="stab_traces").set_value(4)
    at.number_input(key="stab_sft").set_value(2)
    at.multiselect(key="stab_specs").set_value(["organism"])
    at.button(key="stab_run").click().run()
    settle(at)
    clean(at)
    stability = at.session_state["stability_run"]
    assert len(stability["checkpoints"]) == 2 and len(stability["sra"]) == 2
    assert stability["pearson_sra"][0] == pytest.approx(1.0) and stability["topn_overlap"][0] == 1.0
    assert len(at.get("plotly_chart")) == 2  # the measures, and each checkpoint's SRA grid

    run = tmp_path / "run"
    run.mkdir()
    (run / "ablation.json").write_text(json.dumps(ablation))
    (run / "stability.json").write_text(json.dumps(stability))
    at = start(run_dir=run)
    for page, name in (("app_pages/ablation.py", "ablation.json"), ("app_pages/stability.py", "stability.json")):
        switch(at, page)
        clean(at)
        caption = texts(at.main.caption)
        assert f"From `{run / name}`" in caption and "made on **organism" in caption, f"{page}: {caption}"
        assert at.get("plotly_chart")


def write_runs(folder: Path, names: tuple[str, ...]) -> None:
    """Training runs' metrics.jsonl as the trainer's own logger writes them."""
    from workbench.config import LoggingConfig
    from workbench.training.metrics import MetricsLog

    for name, slope in zip(names, (-2.0, -1.0, -0.5)):
        (folder / name).mkdir(parents=True)
        log = MetricsLog(folder / name, LoggingConfig(progress=False), {})
        for step in range(1, 4):
            log.log({"step": step, "reward": 0.5 + 0.1 * step, "accuracy": 0.9,
                     "mean_response_tokens": 100 + slope * step, "frac_steps_attenuated": 0.1 * step,
                     "frac_steps_protected": None})
        log.close()


def test_training_page_overlays_runs_with_short_names(tmp_path):
    write_runs(tmp_path, ("attnpo", "tlmre"))
    at = switch(start(runs_root=tmp_path), "app_pages/training.py")
    clean(at)
    assert sorted(at.multiselect(key="train_runs").value) == ["attnpo", "tlmre"]  # legends: names, not paths
    fig = chart(at)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles == ["accuracy (training rollouts)", "response tokens", "reward", "share of steps attenuated"]
    tokens = {t["name"]: array(t["y"]) for t in fig["data"] if t["xaxis"] == "x2"}  # the second panel
    assert sorted(tokens) == ["attnpo", "tlmre"]
    np.testing.assert_allclose(tokens["attnpo"], [98, 96, 94])
    assert sum(t.get("showlegend", True) for t in fig["data"]) == 2  # one legend entry per run


def test_training_page_shows_a_results_folders_own_runs(tmp_path):
    write_runs(tmp_path / "results" / "runs", ("attnpo-seed0", "tlmre-seed0", "tlmre-seed1"))
    write_runs(tmp_path / "elsewhere", ("mine",))
    at = switch(start(run_dir=tmp_path / "results", runs_root=tmp_path / "elsewhere"), "app_pages/training.py")
    clean(at)
    assert at.multiselect(key="train_runs").options == ["attnpo-seed0", "tlmre-seed0", "tlmre-seed1"]
    assert at.multiselect(key="train_runs").value == ["attnpo-seed0", "tlmre-seed0"]  # one seed of each method
    assert sorted({t["name"] for t in chart(at)["data"]}) == ["attnpo-seed0", "tlmre-seed0"]


# --- run folders and results folders ------------------------------------------------------------------


def test_run_directory_from_the_command_line(discover_run, monkeypatch, no_sampling):
    monkeypatch.setattr(sys, "argv", ["app.py", "--run", str(discover_run)])
    at = start()
    clean(at)
    assert at.text_input(key="run_dir").value == str(discover_run)
    assert any(f"run {discover_run}" in c.value for c in at.main.caption)
    lines = json.loads((discover_run / "baselines.json").read_text())["verdict"]["lines"]  # what the script printed
    shown = [w.value for w in at.warning] + [m.value for m in at.success]
    assert lines and all(line in shown for line in lines) and any("held-out" in line for line in lines)
    table = pd.read_csv(discover_run / "sra.csv")
    z = array(chart(at)["data"][0]["z"])
    for row in table.itertuples():
        np.testing.assert_allclose(z[row.layer, row.head], row.sra, equal_nan=True)
    switch(at, "app_pages/traces.py")
    clean(at)
    assert len(at.selectbox(key="trace_index").options) == 8


def test_partial_run_folder_shows_the_head_table_and_names_what_is_missing(discover_run, tmp_path, no_sampling):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("sra.csv", "kfh.json"):
        shutil.copy(discover_run / name, partial / name)
    at = start(run_dir=partial)
    clean(at)
    table = pd.read_csv(partial / "sra.csv")
    z = array(chart(at)["data"][0]["z"])
    for row in table.itertuples():
        np.testing.assert_allclose(z[row.layer, row.head], row.sra, equal_nan=True)
    assert len(at.dataframe[0].value) == len(table)
    assert sorted(at.multiselect(key="kfh_widget").value) == sorted(load_kfh(partial / "kfh.json").names)
    assert "traces.jsonl and scores.safetensors" in texts(at.info)
    for page in ("app_pages/traces.py", "app_pages/tokens.py"):
        switch(at, page)
        clean(at)
        assert "lacks traces.jsonl and scores.safetensors" in texts(at.info), page
        assert not at.get("plotly_chart")


def test_a_parent_results_folder_lists_its_model_folders(discover_run, tmp_path, no_sampling):
    parent = tmp_path / "results"
    for model in ("alpha", "beta"):
        shutil.copytree(discover_run, parent / model / "discover")
    at = start(run_dir=parent)
    clean(at)
    assert at.selectbox(key="results_model").options == ["alpha", "beta"]
    assert any(f"run {parent / 'alpha' / 'discover'}" in c.value for c in at.main.caption)
    at.selectbox(key="results_model").set_value("beta").run()
    assert any(f"run {parent / 'beta' / 'discover'}" in c.value for c in at.main.caption)
    assert at.query_params["results"] == "beta"


def test_a_folder_without_a_discovery_does_not_sample_silently(tmp_path, no_sampling):
    (tmp_path / "empty-run").mkdir()
    at = start(run_dir=tmp_path / "empty-run")
    clean(at)
    assert "holds no head ranking" in texts(at.info) and not at.get("plotly_chart")
    assert at.button(key="sample_anyway_button")


def test_result_files_say_what_made_them_and_warn_on_other_heads_or_model(organism, discover_run, tmp_path,
                                                                          no_sampling):
    from experiments import ablate_steps, stability
    from workbench.training.sft import supervised_finetune
    from workbench.models import load_model
    from workbench.traces import reference_organism

    run = tmp_path / "results"
    shutil.copytree(discover_run, run / "discover")
    ablate_steps.main(["--kfh", str(run / "discover" / "kfh.json"), "--n-traces", "2", "--n-samples", "2", "--k",
                       "1", "2", "--m", "1", "--out", str(run)], loaded=organism)
    stability.main(["--checkpoints", "organism", "--sft-steps", "1", "--n-traces", "4", "--kfh",
                    str(run / "discover" / "kfh.json"), "--traces", "organism:reference", "--out",
                    str(run / "stability" / "sft")], loaded=organism)
    kfh = load_kfh(run / "discover" / "kfh.json").names

    at = start(run_dir=run)
    for page, name in (("app_pages/ablation.py", "ablation.json"),
                       ("app_pages/stability.py", "stability/sft/stability.json")):
        switch(at, page)
        clean(at)
        caption = texts(at.main.caption)
        assert f"From `{run / name}`" in caption and f"KFHs **{', '.join(kfh)}**" in caption, caption
        assert f"weights {organism.fingerprint[:12]}" in caption and "date not recorded" not in caption
        assert not at.warning, [w.value for w in at.warning]  # made with what the app shows now
    assert len(at.get("plotly_chart")) == 2  # stability: the measures and the SRA grid of each checkpoint

    other = [h for h in pd.read_csv(run / "discover" / "sra.csv")["name"] if h not in kfh][:2]
    switch(at, "app_pages/heads.py").multiselect(key="kfh_widget").set_value(other).run()
    for page in ("app_pages/ablation.py", "app_pages/stability.py"):
        switch(at, page)
        warning = texts(at.warning)
        assert f"Made with KFHs {', '.join(kfh)}" in warning and ", ".join(other) in warning, (page, warning)

    tuned = supervised_finetune(load_model("organism"), reference_organism(organism.tokenizer, 4), 1, 3e-4,
                                tmp_path / "tuned")
    at.sidebar.selectbox(key="model_kind").set_value("folder").run()
    at.sidebar.text_input(key="model_folder").set_value(str(tuned)).run()
    switch(at, "app_pages/ablation.py")
    assert "not on the sidebar's model" in texts(at.warning)
    assert at.query_params["model"] == str(tuned)  # the link names the model too
    switch(at, "app_pages/tokens.py")  # token attention needs the traces' own model: said, not raised
    clean(at)
    assert "scored with model 'organism'" in texts(at.info)


def test_ablation_page_shows_the_files_warnings_and_sampled_answers(organism, discover_run, tmp_path, no_sampling):
    """Answers cut at one token all fail: the page says why the bars are at 0 and shows the answers."""
    from experiments import ablate_steps

    run = tmp_path / "results"
    result = ablate_steps.main(["--kfh", str(discover_run / "kfh.json"), "--n-traces", "2", "--n-samples", "2",
                                "--k", "1", "2", "--answer-max-new-tokens", "1", "--out", str(run)], loaded=organism)
    assert result["warnings"] and result["conditions"]["none"]["pass@2"] == 0
    at = switch(start(run_dir=run), "app_pages/ablation.py")
    clean(at)
    assert all(w in texts(at.warning) for w in result["warnings"])
    answers = at.dataframe[-1].value
    kept = [a for row in result["per_trace"] for c in row["answers"].values() for a in c]
    assert len(answers) == len(kept) == 2 * 4 * 2 and not answers["correct"].any()
    assert list(answers["answer"]) == [a["text"] for a in kept]



def test_a_logprob_ablation_runs_in_the_background_and_shows_its_log_p_table(organism):
    """The measure selector: a logprob-only run samples no answer; its table holds log p with CIs and no
    pass@k, and the per-trace table each condition's log p(F)."""
    at = switch(start(), "app_pages/ablation.py")
    assert at.selectbox(key="abl_measure").options == ["both", "passk", "logprob"]
    at.number_input(key="abl_traces").set_value(2)
    at.selectbox(key="abl_measure").set_value("logprob")
    at.button(key="abl_run").click().run()
    settle(at)
    clean(at)
    ablation = at.session_state["ablation_run"]
    assert ablation["measure"] == "logprob" and ablation["ks"] == [] and ablation["n_samples"] is None
    assert all("correct" not in r and "answers" not in r for r in ablation["per_trace"])
    tables = [d.value for d in at.dataframe]
    summary = next(t for t in tables if "steps removed" in t.columns and "log p F_total" in t.columns)
    assert not any(c.startswith("pass@") for c in summary.columns) and len(summary) == 4
    per_trace = next(t for t in tables if "trace" in t.columns)
    assert len(per_trace) == ablation["n_traces"] and "high log p(F)" in per_trace.columns
    row = ablation["per_trace"][0]
    assert per_trace["high log p(F)"].iloc[0] == pytest.approx(row["logprob"]["high"]["F_total"])

def test_unreadable_run_files_are_named_not_raised(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ablation.json").write_text("{not json")
    (run / "stability.json").write_text(json.dumps({"checkpoints": ["a"]}))  # no measures
    at = start(run_dir=run)
    for page, name in (("app_pages/ablation.py", "ablation.json"), ("app_pages/stability.py", "stability.json")):
        switch(at, page)
        assert not at.exception, [e.value for e in at.exception]
        assert [e.value for e in at.error] and all(str(run / name) in e.value for e in at.error)


def test_train_command_names_the_task_of_an_organism_other_than_the_first(tmp_path):
    from app_pages.data import train_command

    kfh = tmp_path / "kfh.json"
    first = train_command("organism", True, kfh)
    assert "model.name" not in first and "data.task" not in first
    hard = train_command("organism-hard", True, kfh)
    assert "model.name=organism-hard data.task=organism-hard" in hard  # its own model on its own problems
    own = train_command("/models/r1", False, kfh)
    assert own.startswith("python -m workbench.train --config configs/hf/smollm2.yaml model.name=/models/r1")
    assert "data.task" not in own
