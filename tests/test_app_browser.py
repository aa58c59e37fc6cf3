"""``streamlit run app.py`` served on a free local port and loaded in headless Chromium.

The page must reach the SRA heatmap (a plotly chart) without showing an exception; a screenshot
is saved (to ``KFH_APP_SCREENSHOT`` when set, else the test's temporary folder).  Skipped only
when Chromium is not installed (``apt-get install chromium``).  The tests that click and visit
every page drive Chromium through Selenium and ``chromedriver`` (``apt-get install
chromium-driver``; skipped without them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
if str(ROOT) not in sys.path:  # app_pages (beside app.py) is not an installed package
    sys.path.insert(0, str(ROOT))
SERVER_START_S = 120
FIRST_OPEN_S = 900  # sampling + tracing 8 organism traces on a busy 2-core CPU, with a wide margin
EXCEPTION_MARKERS = ("stException", "Traceback")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(profile: Path, *args: str, budget_ms: int = 15000) -> str:
    """Run headless Chromium once; returns its stdout (the DOM with --dump-dom)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        return proc.communicate(timeout=budget_ms / 1000 + 90)[0]
    except subprocess.TimeoutExpired:  # kill its whole group: its renderers would keep the profile locked
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=30)[0] or ""  # what it printed before, kept by the first try


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"streamlit did not answer on {url} within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def test_app_serves_the_heatmap_in_a_real_browser(tmp_path):
    port, log = free_port(), tmp_path / "streamlit.log"
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KFH_APP_N_TRACES": "8", "KFH_APP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=APP.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    shot = Path(os.environ.get("KFH_APP_SCREENSHOT", tmp_path / "app.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    try:
        wait_healthy(url, server, log)
        deadline, dom, attempt = time.monotonic() + FIRST_OPEN_S, "", 0
        while time.monotonic() < deadline:  # each load: the DOM and a screenshot of the same moment
            attempt += 1  # a fresh profile each time: a reused one can stay locked by the last run's browser
            dom = chromium(tmp_path / f"profile-{attempt}", "--window-size=1400,1800", f"--screenshot={shot}",
                           "--dump-dom", url)
            if "heatmaplayer" in dom or any(m in dom for m in EXCEPTION_MARKERS):
                break
            time.sleep(3)
        assert not any(m in dom for m in EXCEPTION_MARKERS), f"the page shows an exception:\n{dom[-3000:]}"
        assert "js-plotly-plot" in dom and "heatmaplayer" in dom, (
            f"no heatmap after {FIRST_OPEN_S} s\nDOM tail: {dom[-2000:]}\nserver log: {log.read_text()[-2000:]}")
        assert "Key-Focus Heads" in dom
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 50_000, "the screenshot looks blank"  # an empty page is about 14 kB
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


# --- every page of the shipped results, and a click on the heatmap (Selenium) ---------------------------

PAGE_LOAD_S = 180  # a page's first run: the model loads, the run folder is read
SHIPPED = ROOT / "docs" / "results"
PAGES = ("", "traces", "tokens", "ablation", "stability", "training")  # url paths of the app's pages


@contextlib.contextmanager
def served(tmp_path: Path, *args: str):
    """``streamlit run app.py -- ARGS`` on a free port, with an empty cache folder; yields the URL."""
    port, log = free_port(), tmp_path / f"streamlit-{len(args)}-{time.monotonic_ns()}.log"
    env = {**os.environ, "KFH_APP_N_TRACES": "8", "KFH_APP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, log)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)


@contextlib.contextmanager
def browser(tmp_path: Path, width: int = 1500, height: int = 1800):
    """Headless Chromium under Selenium, with a fresh profile and bounded page loads and scripts."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if CHROMEDRIVER is None:
        pytest.skip("chromedriver is not installed (apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_S)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def settled(driver, timeout: float = PAGE_LOAD_S) -> str:
    """Wait until the page has a title and the app is idle (no running script, no job progress) for
    two seconds; returns the main area's text.  Fails after ``timeout`` seconds."""
    from selenium.webdriver.common.by import By

    deadline, quiet_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        busy = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"], [data-testid="stProgress"]')
        ready = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h1')
        if ready and not busy:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:
                return driver.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
        else:
            quiet_since = None
        time.sleep(0.5)
    pytest.fail(f"{driver.current_url} still busy after {timeout} s")


def problems(driver) -> list[str]:
    """Exceptions and error boxes on the page."""
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')]


def charts(driver) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] .js-plotly-plot'))


def shipped_folders() -> list[Path]:
    from app_pages.results import model_folders

    return model_folders(SHIPPED)


@pytest.mark.parametrize("run", [SHIPPED, *shipped_folders()], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_page_shows_the_shipped_results_from_their_files(tmp_path, run):
    """``streamlit run app.py -- --run docs/results[/<model>]``: no page shows an error, each draws
    its chart from the folder's own files or says which file it lacks, and nothing is sampled."""
    from app_pages.results import model_folders, results_folder

    folder = results_folder(model_folders(run)[0] if model_folders(run) else run)
    expect = {  # page: (whether the folder has what the page plots, the file it names, the note when it has not)
        "": (folder.discover is not None, f"run {folder.discover.resolve() if folder.discover else ''}",
             "holds no head ranking"),
        "traces": (not folder.missing_traces(), "Colour by", "lacks"),
        "tokens": (not folder.missing_traces(), "Heads side by side", "lacks"),
        "ablation": (folder.ablation is not None, f"From {folder.ablation and folder.ablation.relative_to(ROOT)}",
                     "has no ablation.json"),
        "stability": (bool(folder.stability), "From", "has no stability.json"),
        "training": (bool(folder.runs), "RL step", "has no training runs"),
    }
    shots = Path(os.environ.get("KFH_APP_SCREENSHOT_DIR", tmp_path))
    with served(tmp_path, "--run", str(run.relative_to(ROOT))) as url, browser(tmp_path) as driver:
        for page in PAGES:
            driver.get(f"{url}/{page}")
            text = settled(driver)
            driver.save_screenshot(str(shots / f"{run.name}-{page or 'heads'}.png"))
            assert not problems(driver), f"/{page} shows: {problems(driver)}"
            has_file, shown, missing = expect[page]
            if has_file:
                assert shown in text.replace("`", ""), f"/{page} does not show its file ({shown!r}):\n{text[:1500]}"
                assert charts(driver), f"/{page} draws no chart from {folder.root}"
            else:
                assert missing in text, f"/{page} does not say what {folder.root} lacks ({missing!r}):\n{text[:1500]}"
            if page == "training" and folder.methods is not None:
                assert "Methods (mean and std over seeds)" in text, f"/training does not show {folder.methods}"
    sampled = list((tmp_path / "cache" / "traces").glob("*")) if (tmp_path / "cache" / "traces").exists() else []
    assert not sampled, f"the app sampled organism traces instead of showing {run}: {sampled}"


def test_clicking_a_heatmap_cell_selects_the_head_in_the_trace_viewer(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from experiments.discover_heads import main as discover
    from workbench.kfh import load_kfh
    from workbench.traces import reference_organism, write_traces
    from workbench.models import load_model

    run = tmp_path / "discover"
    write_traces(tmp_path / "reference.jsonl", reference_organism(load_model("organism").tokenizer, 8, seed=11))
    discover(["--model", "organism", "--traces", str(tmp_path / "reference.jsonl"), "--n-traces", "8",
              "--n-boot", "20", "--out", str(run)])
    kfh = load_kfh(run / "kfh.json")
    head = next((layer, h) for layer in reversed(range(kfh.n_layers)) for h in range(kfh.n_heads)
                if (layer, h) not in kfh.heads)  # a head that is not a KFH yet
    name = f"L{head[0]}H{head[1]}"
    with served(tmp_path, "--run", str(run)) as url, browser(tmp_path) as driver:
        driver.get(url)
        settled(driver)
        heatmap = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] .js-plotly-plot')[0]
        x, y = driver.execute_script(  # the cell's centre, from plotly's own axes
            "const gd = arguments[0], L = gd._fullLayout, box = gd.getBoundingClientRect();"
            "return [box.left + L.xaxis._offset + L.xaxis.l2p(arguments[1]),"
            "        box.top + L.yaxis._offset + L.yaxis.l2p(arguments[2])];", heatmap, head[1], head[0])
        ActionChains(driver).move_by_offset(round(x), round(y)).click().perform()
        deadline = time.monotonic() + PAGE_LOAD_S
        while f"{name} (KFH)" not in settled(driver) and time.monotonic() < deadline:
            time.sleep(0.5)
        text = settled(driver)
        assert f"{name} (KFH)" in text, f"the click on {name} did not select it:\n{text[:1500]}"
        chosen = driver.find_element(By.CSS_SELECTOR, '[data-testid="stMultiSelect"]').text
        assert name in chosen and all(n in chosen for n in kfh.names), chosen

        # the table's KFH ticks select too: tick a visible row's box (rows sorted by held-out SRA, 35 px each)
        table = pd.read_csv(run / "sra.csv")
        unique = table[~table["sra"].duplicated(keep=False) & ~table["name"].isin([*kfh.names, name])]
        row = unique.assign(position=[(table["sra"] > v).sum() for v in unique["sra"]]).query("position < 8").iloc[0]
        grid = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')[-1]  # after the head's examples
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
        time.sleep(1)
        width, height = grid.size["width"], grid.size["height"]  # offsets count from the grid's centre
        ActionChains(driver).move_to_element_with_offset(grid, round(52 - width / 2),
                                                         round(35 * (row.position + 1) + 17 - height / 2)) \
            .click().perform()  # the KFH column's checkbox
        deadline = time.monotonic() + PAGE_LOAD_S
        while row["name"] not in driver.find_element(By.CSS_SELECTOR, '[data-testid="stMultiSelect"]').text:
            assert time.monotonic() < deadline, f"ticking {row['name']} in the table did not select it"
            time.sleep(0.5)
        settled(driver)
        button = next(b for b in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] button')
                      if f"Open {name} in the trace viewer" in b.text)
        button.click()
        text = settled(driver)
        driver.save_screenshot(str(Path(os.environ.get("KFH_APP_SCREENSHOT_DIR", tmp_path)) / "clicked-traces.png"))
        assert "Trace viewer" in text and not problems(driver)
        colour = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Colour by"]').get_attribute("value")
        assert colour == name, f"the trace viewer colours by {colour!r}, not by the clicked {name}"
        assert f"head={name}" in driver.current_url
