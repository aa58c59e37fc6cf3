"""PNG rendering of plotly figures through kaleido, bounded so that it never waits for ever.

Kaleido 1.x draws a figure in a headless Chrome/Chromium.  Where there is none, plotly's
``write_image`` can wait for ever (kaleido's sync server thread dies and the caller waits on its
queue), so :func:`png_unavailable` first runs the very search kaleido runs (choreographer's: its
own download from ``kaleido_get_chrome``, then ``BROWSER_PATH``, then ``PATH``, then the usual
install paths) and callers fall back to HTML.

Where a browser is found, :func:`render_png` starts it on the first render, on an event loop of its
own, and keeps it for the process: a cold start can take minutes.  Every render, that start
included, is bounded by ``KFH_PNG_TIMEOUT`` seconds (default 300); past it the browser is killed
and :class:`PngError` raised, so a browser that starts but never answers costs one timeout, not a
hung run.  The page kaleido renders in loads no MathJax, so nothing is fetched from the network.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT_S = 300.0
CLOSE_TIMEOUT_S = 15.0  # a browser that answers closes in a second or two


class PngError(RuntimeError):
    """No PNG: no browser, a browser that failed, or one that gave nothing within the timeout."""


def png_timeout() -> float:
    """Seconds one render may take, its browser's start included (``KFH_PNG_TIMEOUT``)."""
    raw = os.environ.get("KFH_PNG_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"KFH_PNG_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


def png_unavailable() -> str | None:
    """Why no PNG can be rendered here (no kaleido 1.x, or no browser where kaleido looks), or None."""
    try:
        import kaleido  # noqa: F401  (kaleido 0.x has no choreographer)
        from choreographer.browsers.chromium import Chromium
    except ImportError as e:
        return f"PNG export needs kaleido>=1.0 ({e})"
    path = Chromium.find_browser(skip_local=False)  # what kaleido finds (its sandbox is off)
    if path and Path(path).is_file():
        return None
    where = (f"BROWSER_PATH={os.environ['BROWSER_PATH']!r} is not a file" if os.environ.get("BROWSER_PATH")
             else "none was found")
    return (f"PNG export needs Chrome or Chromium for kaleido and {where}: install one (e.g. `apt-get install "
            "chromium`) or point BROWSER_PATH at it")


def render_png(fig: Any, width: int, height: int, scale: float = 1.0, timeout: float | None = None) -> bytes:
    """The PNG bytes of a plotly figure (or figure dict); :class:`PngError` when there is none to have.

    ``timeout`` (default :func:`png_timeout`) bounds the whole call, a first browser start included.
    """
    timeout = png_timeout() if timeout is None else timeout
    if (reason := png_unavailable()) is not None:
        raise PngError(reason)
    fig_dict = fig.to_dict() if hasattr(fig, "to_dict") else fig
    opts = {"format": "png", "width": width, "height": height, "scale": scale}
    return _renderer().render(fig_dict, opts, timeout)


class _Renderer:
    """One kaleido (one headless browser) driven from an event loop of its own in a daemon thread,
    so that a caller can stop waiting on it, and a browser stuck in a render never holds up exit."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="kfh-png", daemon=True).start()
        self._lock = threading.Lock()  # one render at a time; held by the calling thread
        self._kaleido: Any = None
        self._started: Any = None  # the kaleido whose browser has started (set on the loop)
        atexit.register(self.close)

    async def _calc(self, k: Any, fig: dict, opts: dict) -> bytes:
        if self._started is not k:
            await k.open()
            self._started = k
        return await k.calc_fig(fig, opts=opts)

    def render(self, fig: dict, opts: dict, timeout: float) -> bytes:
        import kaleido
        from choreographer.errors import BrowserClosedError, BrowserFailedError, ChannelClosedError, ChromeNotFoundError

        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise PngError(f"no PNG within {timeout:g} s (KFH_PNG_TIMEOUT): another render held the browser")
        try:
            if self._kaleido is None:
                self._kaleido = kaleido.Kaleido(mathjax=False, timeout=None)
            future = asyncio.run_coroutine_threadsafe(self._calc(self._kaleido, fig, opts), self._loop)
            try:
                return future.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:  # not cancelled: the killed browser ends the render, whose error is then read
                self._discard()
                raise PngError(f"kaleido's browser gave no PNG within {timeout:g} s (KFH_PNG_TIMEOUT); "
                               "it was stopped") from None
            except (BrowserClosedError, BrowserFailedError, ChannelClosedError) as e:
                self._discard()
                raise PngError(f"kaleido's browser failed: {_first_line(e)}") from e
        except ChromeNotFoundError as e:  # the browser went away since png_unavailable() looked
            raise PngError(_first_line(e)) from e
        finally:
            self._lock.release()

    def _discard(self) -> None:
        """Kill the browser (its whole process group: choreographer starts it in a session of its own)
        from this thread, which works however stuck the loop is; the next render starts a new one."""
        k, self._kaleido = self._kaleido, None
        proc = getattr(k, "subprocess", None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except AttributeError:  # no process groups (Windows)
            proc.kill()
        try:
            proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a SIGKILLed process that does not go: leave it, never hang on it
            pass

    def close(self) -> None:
        """Close the browser at exit; one that does not close within the bound is killed."""
        if self._kaleido is None or not self._lock.acquire(timeout=CLOSE_TIMEOUT_S):
            return
        try:
            if self._started is self._kaleido:
                future = asyncio.run_coroutine_threadsafe(self._kaleido.close(), self._loop)
                try:
                    future.result(CLOSE_TIMEOUT_S)
                    self._kaleido = None
                except TimeoutError:
                    future.cancel()
            if self._kaleido is not None:
                self._discard()
        finally:
            self._lock.release()


def _first_line(e: BaseException) -> str:
    text = " ".join(str(a) for a in e.args) if e.args else repr(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


_instance: _Renderer | None = None
_instance_lock = threading.Lock()


def _renderer() -> _Renderer:
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = _Renderer()
        return _instance
