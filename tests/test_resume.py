"""An interrupted grid resumes: Ctrl-C after one cell finished and while another runs, then the same command
again skips the finished cell (its notebook untouched) and completes the interrupted one. kill -9 while a cell
trains: nothing outlives the grid, and the rerun completes every cell with nothing left behind."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from studylib.study import expand
from studylib.study.collect import load_runs

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Two cells on one worker, so they run one after the other whatever order Dask picks: a tiny one and one
# with more images and epochs. The test interrupts when one notebook is finished and the other is running.
GRID = """
study: resume
stages: [train]
train:
  - datasets: [clothing10]
    models: [smallvgg1]
    seeds: [0]
    image_size: 32
    epochs: 1
    batch_size: 32
    train_limit: 64
  - datasets: [clothing10]
    models: [smallvgg1]
    seeds: [1]
    image_size: 32
    epochs: 3
    batch_size: 32
    train_limit: 512
"""


def notebooks(book: Path) -> tuple[list[Path], list[Path]]:
    """(finished notebooks, running notebooks) of the train stage."""
    found = sorted((book / "train").glob("*.ipynb")) if (book / "train").is_dir() else []
    running = [p for p in found if p.name.endswith(".running.ipynb")]
    finished = [p for p in found if not p.name.endswith((".running.ipynb", ".failed.ipynb"))]
    return finished, running


def run_id(notebook: Path) -> str:
    return notebook.name.removesuffix(".ipynb").removesuffix(".running")


@pytest.mark.slow
def test_grid_interrupted_after_a_finished_cell_resumes(study_env, tmp_path, monkeypatch):
    grid = tmp_path / "resume.yaml"
    grid.write_text(GRID)
    ids = sorted(c.run_id for c in expand.load_grid(grid)[1]["train"])
    assert len(ids) == 2
    book = tmp_path / "book"
    env = {**os.environ, **study_env, "STUDYLIB_RESULTS": str(tmp_path / "results"), "STUDYLIB_BOOK": str(book),
           "STUDYLIB_RUNS": str(tmp_path / "runs")}
    command = [str(VENV_BIN / "studylib"), "grid", str(grid), "--workers", "1", "--no-report"]

    log = tmp_path / "first.log"
    with log.open("w") as out:
        # Ctrl-C's default action in the grid, even when the tests run in the background (nohup, `make test &`),
        # where SIGINT is ignored and Python would not turn it into KeyboardInterrupt
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 600
            while True:
                finished, running = notebooks(book)
                # one cell done and the other running (not the done one's leftover between rename and unlink)
                if len(finished) == 1 and len(running) == 1 and run_id(finished[0]) != run_id(running[0]):
                    break
                assert proc.poll() is None, f"the grid ended before the state was reached:\n{log.read_text()}"
                assert time.time() < deadline, f"no state with one finished and one running cell:\n{log.read_text()}"
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = log.read_text()
    assert proc.returncode == 130, f"exit code {proc.returncode} after Ctrl-C:\n{first}"
    assert "interrupted: finished runs are kept; run the same command again to resume" in first, first
    [done] = finished
    done_id = run_id(done)
    [cut_id] = [i for i in ids if i != done_id]
    assert run_id(running[0]) == cut_id
    assert not (book / "train" / f"{cut_id}.ipynb").exists(), "an interrupted cell must not look finished"
    mtime = done.stat().st_mtime_ns

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode == 0, f"exit code {second.returncode} on the rerun:\n{out}"
    assert re.search(rf"skip\s+{done_id}", out), out
    assert re.search(rf"ok\s+{cut_id}", out), out
    assert "study resume: 1 ran ok, 1 skipped (already done), 0 failed" in second.stdout, out
    assert done.stat().st_mtime_ns == mtime, "the finished cell's notebook was rewritten"
    finished, running = notebooks(book)
    assert [p.name for p in finished] == sorted(f"{i}.ipynb" for i in ids) and running == []
    assert not list((book / "train").glob("*.failed.ipynb"))

    monkeypatch.setenv("STUDYLIB_RESULTS", env["STUDYLIB_RESULTS"])
    runs = load_runs("resume")
    assert sorted(runs.run_id) == ids and set(runs.status) == {"ok"}
    assert sorted(runs.epochs_run) == [1, 3]


def alive(pids: list[int]) -> list[str]:
    """The processes of `pids` still running (zombies are dead), as 'pid name' strings."""
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_grid_killed_with_kill_9_reruns_every_cell_and_leaves_nothing_behind(study_env, tmp_path):
    """kill -9 of the grid while a cell trains (issue 14 item 11): no kernel or worker outlives it, the rerun
    completes every cell (also the finished one whose model.pt was then deleted), leaves no temporary, and
    its tables agree."""
    grid = tmp_path / "resume.yaml"
    grid.write_text(GRID)
    ids = sorted(c.run_id for c in expand.load_grid(grid)[1]["train"])
    book, results, runs = tmp_path / "book", tmp_path / "results", tmp_path / "runs"
    env = {**os.environ, **study_env, "STUDYLIB_RESULTS": str(results), "STUDYLIB_BOOK": str(book),
           "STUDYLIB_RUNS": str(runs)}
    command = [str(VENV_BIN / "studylib"), "grid", str(grid), "--workers", "1", "--no-report"]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        tree = []
        try:
            deadline = time.time() + 600
            while True:
                finished, running = notebooks(book)
                if len(finished) == 1 and len(running) == 1 and run_id(finished[0]) != run_id(running[0]):
                    tree = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
                    if any("ipykernel" in " ".join(psutil.Process(p).cmdline()) for p in tree if psutil.pid_exists(p)):
                        break
                assert proc.poll() is None, f"the grid ended before the state was reached:\n{log.read_text()}"
                assert time.time() < deadline, f"no state with one finished and one running cell:\n{log.read_text()}"
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)   # the grid's own process only, as `kill -9 <pid>` does
            proc.wait(timeout=60)
            deadline = time.time() + 30
            while alive(tree) and time.time() < deadline:
                time.sleep(0.5)
            assert alive(tree) == [], "processes outlived the killed grid"
        finally:
            for pid in alive(tree):
                os.kill(int(pid.split()[0]), signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    [done] = finished
    done_id = run_id(done)
    (runs / done_id / "model.pt").unlink()    # a finished run whose weights were deleted: it must train again

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode == 0, f"exit code {second.returncode} on the rerun:\n{out}"
    assert re.search(rf"rerun\s+{done_id}: its notebook is done but \S+model.pt is gone", out), out
    assert "study resume: 2 ran ok, 0 skipped (already done), 0 failed" in second.stdout, out
    assert all((runs / i / "model.pt").is_file() for i in ids)
    finished, running = notebooks(book)
    assert [p.name for p in finished] == sorted(f"{i}.ipynb" for i in ids) and running == []
    left = [str(p) for folder in (book, results, runs) for p in folder.rglob("*")
            if p.name.endswith(".tmp") or p.name.endswith(".running.ipynb")]
    assert left == [], left
    study = results / "resume"
    parquet = pd.read_parquet(study / "runs.parquet")
    csv = pd.read_csv(study / "runs.csv")
    records = [json.loads(line) for line in (study / "records.jsonl").read_text().splitlines()]
    assert sorted(parquet.run_id) == sorted(csv.run_id) == sorted(r["run_id"] for r in records) == ids
    assert set(parquet.status) == {"ok"}
