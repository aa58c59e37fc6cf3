"""Figure export buttons: a standalone HTML file always, a PNG when kaleido has a browser to render with."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st

from workbench.png import png_unavailable, render_png

PNG_SIZE = {"width": 1100, "height": 650, "scale": 2}


@st.cache_resource(show_spinner=False)
def _png_unavailable() -> str | None:
    """Why no PNG can be made here, if so: a browser search, so once per app process, not per figure."""
    return png_unavailable()


def figure_downloads(fig: go.Figure, name: str) -> None:
    """HTML and PNG download buttons for ``fig``; files are rendered only when clicked."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "figure"
    reason = _png_unavailable()
    reason = reason and f"{reason}; the HTML export works as is."
    left, right = st.columns(2)
    left.download_button("Download HTML", lambda: fig.to_html(include_plotlyjs=True, full_html=True),
                         file_name=f"{stem}.html", mime="text/html", key=f"html-{stem}", on_click="ignore",
                         icon=":material/download:")
    right.download_button("Download PNG", lambda: render_png(fig, **PNG_SIZE), file_name=f"{stem}.png",
                          mime="image/png", key=f"png-{stem}", on_click="ignore", disabled=reason is not None,
                          help=reason or "rendered by kaleido when clicked (a few seconds)",
                          icon=":material/image:")
    if reason:
        st.caption(reason)
