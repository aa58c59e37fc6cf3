"""The Streamlit app, driven headless by Streamlit's AppTest on the organism.

The first open samples ``KFH_APP_N_TRACES`` organism traces (kept small here) and scores every
head; the workspace is cached process-wide, so later tests reuse it.
"""

from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.heads import head_name, model_shape  # noqa: E402
from workbench.kfh import load_kfh  # noqa: E402
from workbench.organism import task  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = ["app_pages/heads.py", "app_pages/traces.py", "app_pages/ablation.py", "app_pages/stability.py",
         "app_pages/training.py"]
TIMEOUT = 900  # first open samples and traces on a busy 2-core CPU


@pytest.fixture(scope="module", autouse=True)
def app_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KFH_APP_N_TRACES", "8")
        mp.setenv("KFH_APP_CACHE", str(tmp_path_factory.mktemp("app-cache")))
        mp.setattr(sys, "argv", ["app.py"])
        yield


def start(run_dir: Path | None = None, runs_root: Path | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    if run_dir is not None:
        at.text_input(key="run_dir").set_value(str(run_dir))
    if runs_root is not None:
        at.text_input(key="runs_root").set_value(str(runs_root))
    if run_dir is not None or runs_root is not None:
        at.run()
    return at


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


def reference_jsonl(n: int, seed: int) -> str:
    """``n`` of the organism task's reference traces as prompt/response JSONL rows."""
    rng = random.Random(seed)
    rows = [task.sample_trace(rng) for _ in range(n)]
    return "\n".join(json.dumps({"trace_id": f"ref-{i}", "prompt": t.prompt, "response": t.response})
                     for i, t in enumerate(rows)) + "\n"


def test_every_page_renders_on_the_organism():
    at = start()
    clean(at)
    for page in PAGES:
        at.switch_page(page).run()
        clean(at)
        assert at.title, f"{page} shows no title"
    at.switch_page("app_pages/traces.py").run()
    assert at.get("plotly_chart"), "the trace viewer shows no step chart"
    assert at.get("html"), "the trace viewer shows no steps"


def test_the_first_open_trace_set_is_kept_on_disk(organism, monkeypatch):
    if str(APP.parent) not in sys.path:
        monkeypatch.syspath_prepend(str(APP.parent))
    from app_pages import data

    first = data.organism_workspace(organism, 6, seed=3, progress=lambda frac, text: None)
    assert list((data.cache_dir() / "traces").glob("organism-*-n6-s3.jsonl"))
    assert list((data.cache_dir() / "scores").glob("*.safetensors"))

    def no_sampling(*args, **kwargs):
        raise AssertionError("a restarted app samples again instead of reading its cached traces")

    monkeypatch.setattr(data, "sample_organism", no_sampling)
    again = data.organism_workspace(organism, 6, seed=3, progress=lambda frac, text: None)
    assert [t.trace_id for t in again.traces] == [t.trace_id for t in first.traces]
    for a, b in zip(again.scores, first.scores):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(again.table, first.table)


def test_heatmap_has_a_cell_per_head_matching_the_table(organism):
    at = start()
    clean(at)
    n_layers, n_heads, _ = model_shape(organism.model.config)
    z = array(chart(at)["data"][0]["z"])
    assert z.shape == (n_layers, n_heads)
    table = at.dataframe[0].value
    assert len(table) == n_layers * n_heads
    for row in table.itertuples():
        np.testing.assert_allclose(z[row.layer, row.head], row.sra, equal_nan=True)
    assert list(table["sra"].dropna()) == sorted(table["sra"].dropna(), reverse=True), "table not sorted by SRA"


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

    at.switch_page("app_pages/traces.py").run()  # the selection follows to the trace viewer
    assert at.selectbox(key="colour_by").value == f"KFH mean ({', '.join(chosen)})"


def test_trace_viewer_baseline_follows_the_pass_rate():
    at = start()
    at.switch_page("app_pages/traces.py").run()
    clean(at)

    def baseline() -> float:
        return chart(at)["layout"]["shapes"][0]["y0"]

    full = baseline()
    at.slider(key="pass_rate").set_value(0.5).run()
    assert baseline() == pytest.approx(full * 0.25)  # S_base = p^2 |F| / (|q| + |o|)
    bars = array(chart(at)["data"][0]["y"])
    assert at.get("html")[0].proto.body.count("<div") == len(bars)  # one coloured block per step


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
        assert not at.exception, [e.value for e in at.exception]
        messages = " ".join(e.value for e in at.error)
        assert all(x in messages for x in expected), (name, messages)
        assert "Traceback" not in messages


def test_a_parquet_upload_without_a_response_column_names_it(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"prompt": ["a = 1 . What is a ? <think>"], "answer": ["1"]}).to_parquet(path)
    at = start()
    at.sidebar.file_uploader[0].set_value(("t.parquet", path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception
    assert "missing column(s) 'response'" in " ".join(e.value for e in at.error)


def test_an_uploaded_trace_file_is_scored(organism):
    at = start()
    at.sidebar.file_uploader[0].set_value(("reference.jsonl", reference_jsonl(6, seed=5).encode(),
                                           "application/json")).run()
    clean(at)
    assert any("upload reference.jsonl" in c.value for c in at.main.caption)
    n_layers, n_heads, _ = model_shape(organism.model.config)
    assert array(chart(at)["data"][0]["z"]).shape == (n_layers, n_heads)
    at.switch_page("app_pages/traces.py").run()
    clean(at)
    options = at.selectbox(key="trace_index").options
    assert len(options) == 6 and options[0].startswith("ref-0")


def test_launch_small_ablation_and_stability_then_plot_them_from_a_run_dir(tmp_path):
    at = start()
    at.switch_page("app_pages/ablation.py").run()
    at.number_input(key="abl_traces").set_value(2)
    at.number_input(key="abl_samples").set_value(2)
    at.button(key="abl_run").click().run()
    clean(at)
    ablation = at.session_state["ablation_run"]
    assert set(ablation["conditions"]) == {"none", "high", "low", "random"}
    assert ablation["ks"] == [1, 2] and at.get("plotly_chart")
    assert ablation["measure"] == "both" and "F_per_token" in ablation["conditions"]["high"]["logprob"]
    assert "log p F_per_token" in at.dataframe[0].value.columns

    at.switch_page("app_pages/stability.py").run()
    at.number_input(key="stab_traces").set_value(4)
    at.number_input(key="stab_sft").set_value(2)
    at.multiselect(key="stab_specs").set_value(["organism"])
    at.button(key="stab_run").click().run()
    clean(at)
    stability = at.session_state["stability_run"]
    assert len(stability["checkpoints"]) == 2
    assert stability["pearson_sra"][0] == pytest.approx(1.0) and stability["topn_overlap"][0] == 1.0

    run = tmp_path / "run"
    run.mkdir()
    (run / "ablation.json").write_text(json.dumps(ablation))
    (run / "stability.json").write_text(json.dumps(stability))
    at = start(run_dir=run)
    for page, name in (("app_pages/ablation.py", "ablation.json"), ("app_pages/stability.py", "stability.json")):
        at.switch_page(page).run()
        clean(at)
        assert any(name in s.value for s in at.subheader), f"{page} does not plot {name}"
        assert at.get("plotly_chart")


def test_training_page_overlays_runs(tmp_path):
    from workbench.config import LoggingConfig
    from workbench.training.metrics import MetricsLog

    for name, slope in (("attnpo", -2.0), ("tlmre", -1.0)):
        (tmp_path / name).mkdir()
        log = MetricsLog(tmp_path / name, LoggingConfig(progress=False), {})
        for step in range(1, 4):
            log.log({"step": step, "reward": 0.5 + 0.1 * step, "accuracy": 0.9,
                     "mean_response_tokens": 100 + slope * step, "frac_steps_attenuated": 0.1 * step,
                     "frac_steps_protected": None})
        log.close()
    at = start(runs_root=tmp_path)
    at.switch_page("app_pages/training.py").run()
    clean(at)
    assert sorted(at.multiselect(key="train_runs").value) == sorted(str(tmp_path / n) for n in ("attnpo", "tlmre"))
    charts = {c["layout"]["title"]["text"]: c for c in map(lambda i: chart(at, i), range(len(at.get("plotly_chart"))))}
    assert sorted(charts) == sorted(["accuracy (training rollouts)", "response tokens", "reward",
                                     "share of steps attenuated"])  # the all-null column is left out
    tokens = {t["name"]: array(t["y"]) for t in charts["response tokens"]["data"]}
    assert sorted(tokens) == sorted(str(tmp_path / n) for n in ("attnpo", "tlmre"))
    np.testing.assert_allclose(tokens[str(tmp_path / "attnpo")], [98, 96, 94])


def test_run_directory_from_the_command_line(tmp_path, monkeypatch):
    from experiments.discover_heads import main as discover

    traces, out = tmp_path / "reference.jsonl", tmp_path / "discover"
    traces.write_text(reference_jsonl(8, seed=11))  # teacher-forced: no sampling, so the run is quick
    discover(["--model", "organism", "--traces", str(traces), "--n-traces", "8", "--n-boot", "20", "--out", str(out)])
    monkeypatch.setattr(sys, "argv", ["app.py", "--run", str(out)])
    at = start()
    clean(at)
    assert at.text_input(key="run_dir").value == str(out)
    assert any(f"run {out}" in c.value for c in at.main.caption)
    table = pd.read_csv(out / "sra.csv")
    z = array(chart(at)["data"][0]["z"])
    for row in table.itertuples():
        np.testing.assert_allclose(z[row.layer, row.head], row.sra, equal_nan=True)
    at.switch_page("app_pages/traces.py").run()
    clean(at)
    assert len(at.selectbox(key="trace_index").options) == 8


def test_unreadable_run_files_are_named_not_raised(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ablation.json").write_text("{not json")
    (run / "stability.json").write_text(json.dumps({"checkpoints": ["a"]}))  # no measures
    at = start(run_dir=run)
    for page, name in (("app_pages/ablation.py", "ablation.json"), ("app_pages/stability.py", "stability.json")):
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        assert [e.value for e in at.error] and all(str(run / name) in e.value for e in at.error)
