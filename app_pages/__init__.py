"""Pages of the Streamlit app (one file per page) and the app-only helpers they share."""
