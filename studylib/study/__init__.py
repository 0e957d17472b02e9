"""Orchestration: grid files, running cells with papermill over Dask, collecting records, the book."""
