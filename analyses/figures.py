"""Write plotly figures as HTML and, when a browser is there for kaleido, as PNG.

The HTML needs nothing.  The PNG goes through :mod:`workbench.png`: where kaleido has no
Chrome/Chromium, or its browser gives no PNG within ``KFH_PNG_TIMEOUT`` seconds (default 300, a cold
first start can take minutes), PNG export is turned off for the rest of the process with one warning
and the HTML figures are still written.  ``KFH_PNG=0`` turns PNG export off (the test suite does).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePath

import plotly.graph_objects as go

from workbench.png import PngError, render_png

_png_disabled = False


def png_enabled() -> bool:
    return os.environ.get("KFH_PNG", "1") != "0" and not _png_disabled


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
            png = out_dir / f"{name}.png"
            png.write_bytes(render_png(fig, width=900, height=600))
            written.append(png)
        except PngError as e:
            _png_disabled = True
            warnings.warn(f"{e}; writing HTML figures only", stacklevel=2)
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
