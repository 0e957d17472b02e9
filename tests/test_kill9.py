"""kill -9 at the worst moments (issue 14 item 11), the quick ones: collect killed between its files, a second
grid on a study another grid holds. The grid killed mid-run and rerun: tests/test_resume.py (slow)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from studylib.study import collect, durable, runner
from studylib.study.manifest import Cell, Manifest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def folders(tmp_path, monkeypatch):
    for name in ("RESULTS", "BOOK", "RUNS"):
        monkeypatch.setenv(f"STUDYLIB_{name}", str(tmp_path / name.lower()))
    return tmp_path


def failed_notebook(book: Path, cell: Cell) -> None:
    """A failed cell's notebook as the runner keeps it: the failed record in its metadata."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["studylib"] = {"cell": {}, "execution": {}, "record": {
        "run_id": cell.run_id, "stage": cell.stage, "status": "failed", "params": cell.params, "error": "planted"}}
    path = book / cell.notebook.replace(".ipynb", ".failed.ipynb")
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


# Collect in a process that kills itself with SIGKILL right after the new runs.parquet is in place.
KILLED_COLLECT = r"""
import os, signal, sys
real = os.replace
def replace(src, dst, *args, **kwargs):
    real(src, dst, *args, **kwargs)
    if str(dst).endswith("runs.parquet"):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from studylib.study import collect
collect.collect(sys.argv[1], quiet=True)
"""


def test_collect_killed_between_its_files_never_leaves_tables_of_two_generations(folders):
    cells = [Cell("train", "train-a", {"model": "a"}), Cell("train", "train-b", {"model": "b"})]
    Manifest("k9", "grid.yaml", cells).write()
    failed_notebook(folders / "book", cells[0])
    collect.collect("k9", quiet=True)                       # generation 1: one run
    assert list(collect.load_runs("k9").run_id) == ["train-a"]
    failed_notebook(folders / "book", cells[1])             # generation 2 would have two
    done = subprocess.run([sys.executable, "-c", KILLED_COLLECT, "k9"], env=os.environ, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    # whoever reads next sees one generation in every table
    runs, records = collect.load_runs("k9"), collect.load_records("k9")
    csv = pd.read_csv(folders / "results" / "k9" / "runs.csv")
    assert sorted(runs.run_id) == sorted(r["run_id"] for r in records) == sorted(csv.run_id), (runs.run_id, records)
    assert sorted(runs.run_id) == ["train-a", "train-b"]   # the killed collect's tables, put in place
    left = [p.name for p in (folders / "results" / "k9").iterdir()]
    assert not [n for n in left if n.endswith(".tmp")], left


def test_a_temporary_left_by_a_killed_write_is_swept(folders):
    study = folders / "results" / "k9"
    study.mkdir(parents=True)
    (study / ".runs.x1y2z3.parquet.tmp").write_text("half")
    (study / "runs.parquet").write_text("kept")
    assert [p.name for p in durable.sweep(study)] == [".runs.x1y2z3.parquet.tmp"]
    assert sorted(p.name for p in study.iterdir()) == ["runs.parquet"]


HOLD = r"""
import sys, time
from studylib.study.durable import study_lock
with study_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""

GRID = """
study: locked
stages: [train]
train: {models: [smallvgg1], image_size: 32, epochs: 1}
"""


def test_a_second_grid_on_a_running_study_is_refused_naming_the_lock(folders):
    grid = folders / "locked.yaml"
    grid.write_text(GRID)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "locked"], env=os.environ, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = folders / "results" / "locked" / ".grid.lock"
        with pytest.raises(durable.StudyLocked) as info:
            runner.run_grid(grid, report=False)
        message = str(info.value)
        assert message.startswith(f"study 'locked' is being run by another grid (pid {holder.pid} on ")
        assert str(lock) in message and message.count("\n") == 0
        assert not (folders / "results" / "locked" / "cells.json").exists(), "the refused grid wrote its manifest"
        assert not (folders / "book").exists()
        cli = subprocess.run([str(VENV_BIN / "studylib"), "grid", str(grid)], env=os.environ, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert cli.returncode == 2 and cli.stderr.strip() == f"error: {message}", cli.stderr
    finally:
        holder.send_signal(signal.SIGKILL)   # the holder dies the hard way: its lock goes with it
        holder.wait()
    t0 = time.time()
    with durable.study_lock("locked") as path:
        assert path.read_text().startswith(f"pid {os.getpid()} ")
    assert time.time() - t0 < 5


class FakeClient:
    """Records the cells run_stage submits, and runs none."""
    def __init__(self):
        self.submitted = []

    def submit(self, fn, cell, *args, **kwargs):
        self.submitted.append(cell["run_id"])
        raise StopIteration   # enough: what was submitted is what the test reads


class Bar:
    def update(self, n):
        pass


def test_a_done_cell_whose_model_pt_was_deleted_runs_again(folders, monkeypatch):
    cell = Cell("train", "train-x", {"model": "x"})
    monkeypatch.setattr(runner, "valid_record", lambda out, stage: {"run_id": "train-x", "status": "ok"})  # its notebook: done
    monkeypatch.setattr(runner, "as_completed", iter)   # no Dask client here: nothing was submitted to wait for
    run = folders / "runs" / "train-x"
    run.mkdir(parents=True)
    (run / "record.json").write_text("{}")
    (run / "model.pt").write_bytes(b"weights")
    client, lines, summary = FakeClient(), [], {"skipped": 0}
    runner.run_stage(client, "train", [cell], False, Bar(), lines.append, summary)
    assert client.submitted == [] and summary["skipped"] == 1          # notebook and files there: skipped
    (run / "model.pt").unlink()
    with pytest.raises(StopIteration):
        runner.run_stage(client, "train", [cell], False, Bar(), lines.append, summary)
    assert client.submitted == ["train-x"], lines                       # the notebook alone is not trusted
    assert lines[-1] == f"[train] rerun  train-x: its notebook is done but {run / 'model.pt'} is gone"
