"""Write plotly figures as HTML and, when a browser is there for kaleido, as PNG.

Kaleido 1.x renders through Chrome/Chromium; where none is installed the PNG is skipped with one
warning per process and the HTML (which needs nothing) is still written.  On some machines the
first PNG of a process takes minutes (kaleido's browser start-up), so one browser is kept for the
whole process, and ``KFH_PNG=0`` turns PNG export off (the test suite does).
"""

from __future__ import annotations

import atexit
import os
import warnings
from pathlib import Path, PurePath

import plotly.graph_objects as go

_png_disabled = False
_server_started = False


def png_enabled() -> bool:
    return os.environ.get("KFH_PNG", "1") != "0" and not _png_disabled


def _start_png_server() -> None:
    """One headless browser for every PNG of this process, closed at exit."""
    global _server_started
    if _server_started:
        return
    _server_started = True
    try:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
    except (ImportError, AttributeError):  # an older kaleido: each PNG starts its own browser
        pass


def save_figure(fig: go.Figure, out_dir: str | Path, name: str) -> list[Path]:
    """``out_dir/name.html`` and ``out_dir/name.png``; returns the paths written."""
    global _png_disabled
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"{name}.html"
    fig.write_html(html, include_plotlyjs="directory")  # one plotly.min.js beside them, works offline
    written = [html]
    if png_enabled():
        try:
            _start_png_server()
            fig.write_image(out_dir / f"{name}.png", width=900, height=600)
            written.append(out_dir / f"{name}.png")
        except Exception as e:  # kaleido reports a missing browser with several exception types
            if "chrom" not in str(e).lower() and "browser" not in str(e).lower():
                raise
            _png_disabled = True
            warnings.warn(f"PNG export needs Chrome/Chromium for kaleido ({str(e).strip().splitlines()[0]}); "
                          "writing HTML figures only", stacklevel=2)
    return written


def short_labels(paths: list[str | Path]) -> list[str]:
    """Short, distinct labels for paths (checkpoints, run folders): the last part (``step_20``), with
    as many parent parts as it takes to tell two apart (``seed0/step_20``)."""
    parts = [PurePath(p).parts or (str(p),) for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=0) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]
