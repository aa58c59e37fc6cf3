"""``streamlit run app.py`` served on a free local port and loaded in headless Chromium.

The page must reach the SRA heatmap (a plotly chart) without showing an exception; a screenshot
is saved (to ``KFH_APP_SCREENSHOT`` when set, else the test's temporary folder).  Skipped only
when Chromium is not installed (``apt-get install chromium``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
APP = Path(__file__).resolve().parents[1] / "app.py"
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
