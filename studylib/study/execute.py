"""Running one cell: papermill executes a stage notebook, its `record` scrap is checked, its clocks are read.

`execute_cell` (on a Dask worker, or anywhere) runs notebooks/<stage>.ipynb into
<run-id>.running.ipynb; the notebook becomes <run-id>.ipynb when it glued a `record` that validates
as its stage's record type and says ok, else <run-id>.failed.ipynb with the error and a failed
record in its metadata. It never raises. The book's report pages run through `run_notebook` too.
No secret reaches a notebook: parameters that carry one are refused before papermill writes its injected
cell, and every notebook is scrubbed (studylib.errors.redact) before it is written under its own name.
"""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from studylib.errors import ParameterError, check_no_secret, redact
from studylib.record import failed_record, invalid_field
from studylib.study.manifest import failed_path, running_path
from studylib.util import atomic_write, now

KERNEL_ARGS = ["--log-level=ERROR"]     # quiet the kernel's start-up warnings in the grid's log
NO_RECORD = "the notebook finished without a valid `record` scrap with status ok"


def run_notebook(source: str | Path, out: str | Path, parameters: dict, cwd: str | Path,
                 timeout: Optional[float] = None) -> Optional[str]:
    """Execute `source` into `out` with papermill; None when every cell ran, else the error in one line.

    timeout: seconds any one cell may run (None: no limit); past it the kernel is stopped and the error says so."""
    import papermill as pm  # lazy: the book's notebooks import this module only to read records

    try:
        check_no_secret("", parameters)   # papermill would write them into the notebook's injected cell
    except ParameterError as err:
        return f"ParameterError: {err}"
    try:
        pm.execute_notebook(str(source), str(out), parameters=parameters, cwd=str(cwd), progress_bar=False,
                            extra_arguments=KERNEL_ARGS, execution_timeout=timeout)
    except TimeoutError as err:   # nbclient's CellTimeoutError (its kernel is shut down)
        if timeout is None:
            return redact(f"{type(err).__name__}: {err}")
        return f"{type(err).__name__}: a cell ran longer than the cell timeout of {timeout:g} s (cell_timeout in the grid file)."
    except pm.PapermillExecutionError as err:
        return redact(f"{err.ename}: {err.evalue}")
    except Exception as err:  # kernel died, notebook unreadable...
        return redact(f"{type(err).__name__}: {err}")
    return None


def glued_record(path: Path) -> Optional[dict]:
    """The `record` scrap a notebook glued; None when it glued none or cannot be read (half-written)."""
    import scrapbook as sb  # lazy: a second to import, and only readers of executed notebooks need it

    try:
        scraps = sb.read_notebook(str(path)).scraps
    except Exception:  # unreadable or half-written
        return None
    data = scraps["record"].data if "record" in scraps else None
    return data if isinstance(data, dict) else None


def check_record(path: Path, stage: str) -> tuple[Optional[dict], Optional[str]]:
    """(record, None) when the notebook glued a record of its stage's type with status ok; else (None, why not).

    Why not: the error of the failed record the notebook glued itself, the first record field that
    failed validation, or that there is no such record.
    """
    data = glued_record(path) if path.is_file() else None
    if data is None:
        return None, NO_RECORD
    if data.get("status") == "failed":
        return None, data.get("error") or NO_RECORD
    problem = invalid_field(stage, data)
    if problem:
        return None, problem
    return (data, None) if data.get("status") == "ok" else (None, NO_RECORD)


def valid_record(path: Path, stage: str) -> Optional[dict]:
    """The notebook's `record` scrap when it is there, validates and says ok; else None (the cell is not done)."""
    return check_record(path, stage)[0]


def cell_clocks(nb) -> list[dict]:
    """Papermill's clock of every code cell it started, in order: start_time, end_time, duration."""
    clocks = [c.metadata.get("papermill", {}) for c in nb.cells if c.cell_type == "code"]
    return [c for c in clocks if c.get("start_time")]


def timing(nb) -> dict:
    """Papermill's clock: the notebook's duration, the kernel start-up before the first cell, the cells."""
    meta = nb.metadata.get("papermill", {})
    out = {"notebook_seconds": meta.get("duration")}
    cells = cell_clocks(nb)
    if meta.get("start_time") and cells:
        start = datetime.fromisoformat(meta["start_time"])
        out["startup_seconds"] = (datetime.fromisoformat(cells[0]["start_time"]) - start).total_seconds()
    durations = [c.get("duration") for c in cells]
    out["cells_seconds"] = sum(d for d in durations if d) if any(durations) else None
    return out


def hide_injected_parameters(nb) -> None:
    """Tag papermill's injected-parameters cell `remove-cell`: the book shows each notebook's parameters
    through its own table, and the injected cell would repeat them as code."""
    for c in nb.cells:
        tags = c.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")


def scrub_notebook(nb) -> None:
    """Redact, in place, every secret in a notebook's sources, text outputs and metadata (papermill keeps the
    parameters there too); images are left as they are."""
    import nbformat  # lazy: only the runner's workers write notebooks

    for c in nb.cells:
        c.source = redact(c.source)
        for out in c.get("outputs", []):
            for key in ("text", "evalue", "traceback"):
                if key in out:
                    out[key] = redact(out[key])
            data = out.get("data", {})
            for mime in list(data):
                if not mime.startswith("image/"):
                    data[mime] = nbformat.from_dict(redact(data[mime]))
    nb.metadata = nbformat.from_dict(redact(dict(nb.metadata)))


def execute_cell(cell: dict, out: str, cwd: str, source: str, worker=None, timeout: Optional[float] = None,
                 not_run: Optional[str] = None) -> dict:
    """Run one cell (a manifest.Cell as a dict) into `out`, each notebook cell within `timeout` seconds.
    `not_run`: why the cell must not run (its source failed); it is then recorded as failed with that
    error, without starting the notebook. Never raises: returns what happened."""
    import nbformat  # lazy: only the runner's workers write notebooks

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    running, failed = running_path(out), failed_path(out)
    started, t0 = now("milliseconds"), time.perf_counter()
    error = not_run or run_notebook(source, running, cell["params"], cwd, timeout)
    execution = {"started_at": started, "finished_at": now("milliseconds"), "wall_seconds": time.perf_counter() - t0,
                 "worker": str(worker), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if not error:
        error = check_record(running, cell["stage"])[1]
    nb = nbformat.read(running, as_version=4) if running.exists() else nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(f"# {cell['run_id']}\n\nThe notebook did not start:\n\n    {error}")])
    execution.update(timing(nb))
    hide_injected_parameters(nb)
    nb.metadata["studylib"] = {"cell": cell, "execution": execution}
    if error:
        nb.metadata["studylib"]["record"] = failed_record(cell["stage"], cell["params"], error, cell["run_id"])
    scrub_notebook(nb)
    atomic_write(failed if error else out, lambda path: nbformat.write(nb, path))
    running.unlink(missing_ok=True)
    if not error:
        failed.unlink(missing_ok=True)
    return {"run_id": cell["run_id"], "stage": cell["stage"], "status": "failed" if error else "ok",
            "error": redact(error), **execution}
