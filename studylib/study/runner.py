"""`studylib grid params/<study>.yaml`: run every cell of a grid on Dask workers, skip finished ones, then collect.

The grid file is read and every parameter validated first (studylib.study.expand); each cell is
one papermill execution of notebooks/<stage>.ipynb into book/<stage>/<run-id>.ipynb
(studylib.study.execute), fanned out over Dask workers, each notebook cell bounded by the grid file's
cell_timeout for its stage. The runner only orchestrates: a cell whose
notebook exists with a valid `record` scrap, and whose run files are still there (a train run's
model.pt and record.json), is skipped; a cell runs into <run-id>.running.ipynb
and is renamed when complete (so an interrupted grid resumes on rerun); a failing cell is kept as
<run-id>.failed.ipynb with its error, and the grid goes on. Then the study is collected and the
book's report pages and table of contents are written.

One grid at a time runs a study: it holds results/<study>/.grid.lock (studylib.study.durable) from the
first cell to the last page, and sweeps the temporaries a killed grid left (the study's tables, each
cell's notebook and run folder) before it runs anything.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import dask
import torch
from distributed import Client, LocalCluster, as_completed, get_worker
from tqdm import tqdm

from studylib.errors import ParameterError, StudyError
from studylib.paths import book_dir, project_root, results_dir, runs_dir
from studylib.study import book, collect
from studylib.study.durable import study_lock, sweep
from studylib.study.execute import execute_cell, valid_record
from studylib.study.expand import expand_cost, expand_deploy, load_grid, run_states
from studylib.study.manifest import STAGES, Manifest, failed_path, kept_cells, source_notebook


def source_failed(run_id: str) -> str:
    """The error of a cell that did not run because its source cell failed."""
    return (f"SourceFailed: its source run {run_id} failed, so this run did not start "
            "(it runs when the grid is run again and its source succeeds).")


def run_cell_on_worker(cell: dict, out: str, cwd: str, source: str, gpu: bool = False,
                       timeout: Optional[float] = None, source_result: Optional[dict] = None) -> dict:
    """The task a Dask worker runs: a cell that asks for a GPU gets one of the worker's, then it executes
    (each notebook cell within `timeout` seconds: the grid file's cell_timeout for its stage).
    source_result: what the cell's source cell returned, when it ran in this grid (Dask starts this task only
    after it); a failed source means this cell is recorded as failed without running."""
    worker = get_worker().name
    if gpu and "CUDA_VISIBLE_DEVICES" not in os.environ:
        count = max(1, torch.cuda.device_count())
        os.environ["CUDA_VISIBLE_DEVICES"] = str((worker if isinstance(worker, int) else abs(hash(worker))) % count)
    failed = source_result is not None and source_result["status"] != "ok"
    return execute_cell(cell, out, cwd, source, worker=worker, timeout=timeout,
                        not_run=source_failed(source_result["run_id"]) if failed else None)


def worker_thread_env(workers: int) -> dict:
    """The thread count every worker's notebooks compute with: the cores shared among the workers.

    Dask's nanny starts workers with OMP_NUM_THREADS=1 (and MKL's, OpenBLAS's) unless told otherwise,
    and the notebook kernels inherit it. A value the user exported wins."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {name: os.environ.get(name, threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def start_client(workers: int, scheduler: Optional[str], gpus: int):
    """A Dask client of the scheduler at `scheduler`, else of a new local cluster (returned too, to close)."""
    if scheduler:
        return Client(scheduler), None
    env = worker_thread_env(workers)
    # Dask's nanny also sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, for the worker's own memory;
    # the notebook kernels inherited it, and with it glibc hands every freed tensor back to the kernel:
    # shufflenet_v2_x1_0 trained at 196 images/s instead of 551 on 2 cores. None unsets it (a value the
    # user exported is still inherited).
    # The worker's statistical profiler samples its threads' stacks every 10 ms; a cell's thread is papermill
    # waiting on its kernel, so the samples profile nothing of use: off, the worker process took 2.2% of a core
    # instead of 4.7% while the headline trained in the kernel (top over 60 s, 2-core VM).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                          "distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR, env=env, resources={"GPU": 1} if gpus else None)
    return Client(cluster), cluster


def cluster_has_gpus(client) -> bool:
    """Whether any worker offers the GPU resource (only then do cells ask for it: else they would wait forever)."""
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed lists every worker without being asked
        info = client.scheduler_info()
    return any(w.get("resources", {}).get("GPU") for w in info["workers"].values())


class Interrupted(Exception):
    """SIGTERM, raised in the runner like Ctrl-C's KeyboardInterrupt."""


def _on_sigterm(_signum, _frame):
    raise Interrupted()


RUN_FILES = ("record.json", "model.pt")   # what a train run leaves in runs/<run-id>/ for deploy, serve, tune


def missing_run_file(stage: str, record: dict) -> Optional[Path]:
    """The first file of a finished cell's train runs that is gone (then the cell is not done): a train
    cell's own run, a tune cell's retrained best and default runs."""
    ids = {"train": ("run_id",), "tune": ("tuned_run_id", "default_run_id")}.get(stage, ())
    for key in ids:
        for name in RUN_FILES:
            path = runs_dir() / record[key] / name
            if not path.is_file():
                return path
    return None


def run_folders(cell) -> list[Path]:
    """The run folders a cell writes into: a train cell's own, a deploy cell's served and timed runs (exports)."""
    if cell.stage == "train":
        return [runs_dir() / cell.run_id]
    if cell.stage == "deploy":
        return [runs_dir() / r for r in [cell.params.get("run"), *cell.params.get("serving_runs", [])]
                if r and "/" not in r]
    return []


def sweep_cell(cell, stage: str) -> None:
    """What a killed run of this cell left: its notebook's temporaries and .running copy, its runs' temporaries."""
    sweep(book_dir() / stage, (cell.run_id,))
    for folder in run_folders(cell):
        sweep(folder)


def run_stage(client, stage: str, cells: list, use_gpu: bool, bar, log, summary: dict,
              timeout: Optional[float] = None) -> None:
    """Submit the stage's cells that are not done yet, and wait for all of them; counts go into `summary`.
    `timeout`: seconds any one notebook cell may run. A cell whose source cell runs too gets that cell's
    future as an argument: Dask starts it, on any worker, once its source has finished (no barrier)."""
    source = source_notebook(stage)
    futures, by_id = {}, {}
    for i, c in enumerate(cells):
        out = book_dir() / c.notebook
        sweep_cell(c, stage)
        record = valid_record(out, stage)
        gone = missing_run_file(stage, record) if record else None
        if record and not gone:
            log(f"[{stage}] skip   {c.run_id} (done: {c.notebook})")
            summary["skipped"] += 1
            bar.update(1)
            continue
        if gone:
            log(f"[{stage}] rerun  {c.run_id}: its notebook is done but {gone} is gone")
        gpu = c.gpu and use_gpu
        fut = client.submit(run_cell_on_worker, asdict(c), str(out), str(project_root()), str(source), gpu, timeout,
                            source_result=by_id.get(c.source), key=f"{c.run_id}-{time.time_ns()}", pure=False, priority=-i,
                            resources={"GPU": 1} if gpu else None)
        by_id[c.run_id] = fut
        futures[fut] = c
    for fut in as_completed(list(futures)):
        c = futures[fut]
        try:
            res = fut.result()
        except Exception as err:  # the worker itself died (running this cell, or its source: then it never started)
            res = {"status": "failed", "error": f"{type(err).__name__}: {err}", "wall_seconds": 0.0}
            if c.source in by_id and by_id[c.source].status == "error":
                res = execute_cell(asdict(c), str(book_dir() / c.notebook), str(project_root()), str(source),
                                   not_run=source_failed(c.source))
        if res["status"] == "ok":
            summary["ok"] += 1
            log(f"[{stage}] ok     {c.run_id} in {res['wall_seconds']:.1f} s on worker {res.get('worker')}")
        else:
            summary["failed"].append((c, res["error"]))
            log(f"[{stage}] FAILED {c.run_id} in {res['wall_seconds']:.1f} s: {res['error']}")
        bar.update(1)


def run_grid(path: str | Path, workers: int = 1, scheduler: Optional[str] = None, gpus: Optional[int] = None,
             report: bool = True, log=None, data: Optional[str] = None) -> int:
    """Run a grid file (on the image folder `data` instead of its datasets, when given: expand.apply_data).
    Returns 0 when every cell is ok, 1 when some failed, 130 when interrupted."""
    grid, cells = load_grid(path, data)    # every parameter checked before anything runs
    if workers < 1:
        raise ParameterError("--workers", workers, "a positive integer")
    with study_lock(grid.study):           # a second grid on this study stops here, with one sentence
        sweep(results_dir() / grid.study)  # the tables' temporaries a killed grid (or collect) left
        return _run_locked(path, grid, cells, workers, scheduler, gpus, report, log, data)


def _run_locked(path, grid, cells, workers, scheduler, gpus, report, log, data) -> int:
    """run_grid's work, under the study's lock."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    bar = tqdm(total=0, unit="run", desc=f"study {grid.study}", file=sys.stderr, dynamic_ncols=True)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    images = None if data is None else Path(data).expanduser().resolve()   # checked by load_grid
    manifest = Manifest(grid.study, str(path) if images is None else f"{path} --data {shlex.quote(str(images))}",
                        kept_cells(grid))
    summary = {"ok": 0, "skipped": 0, "failed": []}
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    client, cluster = start_client(workers, scheduler, gpus)
    use_gpu = cluster_has_gpus(client)
    where = scheduler or f"a local cluster of {workers} worker{'s' * (workers > 1)}"
    log(f"study {grid.study}: {sum(len(v) for v in cells.values())} cells known before the run, on {where}"
        + (" with GPUs" if use_gpu else "") + (f"; the images: {images}" if images is not None else ""))
    status = 0
    try:
        for stage in STAGES:
            if stage not in grid.stages:
                continue
            if not source_notebook(stage).exists():
                log(f"[{stage}] skipped: {source_notebook(stage).relative_to(project_root())} does not exist yet")
                continue
            if stage == "deploy":
                cells[stage] = expand_deploy(grid, grid.study)
            elif stage == "cost":
                cells[stage] = expand_cost(grid, grid.study, run_states(grid.study))
            stage_cells = cells.get(stage, [])
            if not stage_cells:
                log(f"[{stage}] no cells to run")
                continue
            manifest.add(stage_cells)
            manifest.write()
            bar.total += len(stage_cells)
            bar.refresh()
            run_stage(client, stage, stage_cells, use_gpu, bar, log, summary, timeout=grid.timeout(stage))
            collect.collect(grid.study, quiet=True)   # later stages (deploy, cost) read what this one made
    except (KeyboardInterrupt, Interrupted):
        status = 130
        log("interrupted: finished runs are kept; run the same command again to resume")
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
        signal.signal(signal.SIGTERM, old_handler)
    if status:
        return status
    report_failed = False
    if not manifest.cells:
        log("nothing ran: no stage of this grid has a notebook yet")
    else:
        manifest.write()
        collect.collect(grid.study)
        if report:
            report_failed = book.write_report(grid.study, log=log) != 0
    failed = summary["failed"]
    print(f"study {grid.study}: {summary['ok']} ran ok, {summary['skipped']} skipped (already done), "
          f"{len(failed)} failed")
    for c, error in failed:
        print(f"  FAILED {c.run_id}: {error}\n         notebook: {book_dir() / failed_path(Path(c.notebook))}")
    if report_failed:
        print("  FAILED a report page of the book: see the [report] lines above")
    return 1 if failed or report_failed else 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("grid", help="the grid file, e.g. params/quick.yaml")
    parser.add_argument("--workers", type=int, default=1,
                        help="local Dask workers, one cell each at a time (default 1: training uses every core)")
    parser.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs for the local workers (default: the CUDA devices visible); 0 runs all on CPU")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="skip the report pages (decision, methods, results) and the book's table of contents")
    parser.add_argument("--check", action="store_true", help="validate the grid file, list its cells and exit")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="run the grid on your own images: a folder of <class>/<image> or <split>/<class>/<image>; "
                             "every train block's datasets become imagefolder with this root and the study is "
                             "renamed <study>-<folder name> (results/, runs and book pages apart from the grid's own)")


def run(args) -> int:
    try:
        if args.check:
            grid, cells = load_grid(args.grid, args.data)
            print(f"study {grid.study}")
            for stage in STAGES:
                if stage in grid.stages:
                    for c in cells.get(stage, []):
                        print(f"{stage:9s} {c.run_id}  {c.title}" + (f"  after {c.source}" if c.source else ""))
                    if stage in ("deploy", "cost"):
                        print(f"{stage:9s} (expanded when the stage starts)")
            return 0
        return run_grid(args.grid, workers=args.workers, scheduler=args.scheduler, gpus=args.gpus, report=args.report,
                        data=args.data)
    except StudyError as err:   # a bad parameter, or another grid running this study
        print(f"error: {err}", file=sys.stderr)
        return 2
