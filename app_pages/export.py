"""Figure export buttons: a standalone HTML file always, a PNG when kaleido has a browser to render with."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st

PNG_SIZE = {"width": 1100, "height": 650, "scale": 2}


@st.cache_resource(show_spinner=False)
def png_unavailable() -> str | None:
    """Why PNG export cannot work here (kaleido 1.x renders through Chrome/Chromium), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        if Chromium.find_browser(skip_local=False) is None:
            return ("PNG export needs Chrome or Chromium for kaleido and none was found: install one "
                    "(e.g. `apt-get install chromium`) or point BROWSER_PATH at it; the HTML export works as is.")
    except ImportError as e:
        return f"PNG export needs kaleido>=1.0 ({e}); the HTML export works as is."
    return None


def figure_downloads(fig: go.Figure, name: str) -> None:
    """HTML and PNG download buttons for ``fig``; files are rendered only when clicked."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "figure"
    reason = png_unavailable()
    left, right = st.columns(2)
    left.download_button("Download HTML", lambda: fig.to_html(include_plotlyjs=True, full_html=True),
                         file_name=f"{stem}.html", mime="text/html", key=f"html-{stem}", on_click="ignore",
                         icon=":material/download:")
    right.download_button("Download PNG", lambda: fig.to_image(format="png", **PNG_SIZE), file_name=f"{stem}.png",
                          mime="image/png", key=f"png-{stem}", on_click="ignore", disabled=reason is not None,
                          help=reason or "rendered by kaleido when clicked (a few seconds)",
                          icon=":material/image:")
    if reason:
        st.caption(reason)
