"""Write plotly figures as HTML and, when a browser is there for kaleido, as PNG.

The HTML needs nothing.  The PNG goes through :mod:`workbench.png`: where kaleido has no
Chrome/Chromium, or its browser gives no PNG within ``KFH_PNG_TIMEOUT`` seconds (default 300, a cold
first start can take minutes), PNG export is turned off for the rest of the process with one warning
and the HTML figures are still written.  ``KFH_PNG=0`` turns PNG export off (the test suite does).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

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
