"""`studylib grid params/<study>.yaml`: run every cell of a grid, skip finished ones, then collect.

A grid file names a study, the stages to run and, for the train stage, blocks of datasets x
models x seeds x hyperparameters (a list is a cartesian product; per-model overrides allowed).
Every parameter is validated before any cell runs. Each cell is one papermill execution of
notebooks/<stage>.ipynb into book/<stage>/<run-id>.ipynb, fanned out over Dask workers.

The runner only orchestrates: a cell whose notebook exists with a valid `record` scrap is
skipped; a cell runs into <run-id>.running.ipynb and is renamed when complete (so an interrupted
grid resumes on rerun); a failing cell is kept as <run-id>.failed.ipynb with its error, and the
grid goes on.
"""
from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studylib.errors import ParameterError
from studylib.paths import book_dir, project_root, results_dir
from studylib.record import Record, params_hash, run_id

KERNEL_ARGS = ["--log-level=ERROR"]     # quiet the kernel's start-up warnings in the grid's log
STAGES = ("data_prep", "train", "tune", "deploy", "cost")
GPU_STAGES = ("train", "tune")          # stages whose cells ask for a GPU worker when there is one


# ---------------------------------------------------------------------------------------------
# The grid file
# ---------------------------------------------------------------------------------------------

class TrainBlock(BaseModel):
    """datasets x models x seeds x every list-valued train parameter; overrides per model (glob)."""
    model_config = ConfigDict(extra="allow")   # the extra keys are train parameters
    name: str = ""
    datasets: list[str] = ["clothing10"]
    models: list[str] = Field(min_length=1)
    seeds: list[int] = [0]
    overrides: dict[str, dict[str, Any]] = {}


class Section(BaseModel):
    """A stage section: its own keys, and any other key passed to the stage notebook as a parameter."""
    model_config = ConfigDict(extra="allow")


class DataPrepSection(Section):
    datasets: Optional[list[str]] = None        # default: the train datasets
    image_sizes: Optional[list[int]] = None     # default: the train image sizes of each dataset
    seed: int = 0


class TuneSection(Section):
    models: list[str] = Field(min_length=1)
    datasets: Optional[list[str]] = None        # default: the train datasets
    n_trials: int = Field(default=8, gt=0)


class DeploySection(Section):
    run: Union[str, list[str]] = "best"         # "best" per dataset (best val top-1), or train run ids


class Grid(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    title: str = ""
    description: str = ""
    stages: list[Literal[STAGES]] = Field(min_length=1)
    train: list[TrainBlock] = []
    data_prep: DataPrepSection = DataPrepSection()
    tune: Optional[TuneSection] = None
    deploy: DeploySection = DeploySection()
    cost: Section = Section()

    @field_validator("train", mode="before")
    @classmethod
    def _one_block_or_many(cls, v):
        return [v] if isinstance(v, dict) else v


@dataclass
class Cell:
    stage: str
    run_id: str
    params: dict
    title: str = ""
    gpu: bool = False
    notebook: str = ""          # book-relative path of the executed notebook, e.g. train/<run-id>.ipynb

    def __post_init__(self):
        self.notebook = self.notebook or f"{self.stage}/{self.run_id}.ipynb"


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def stage_notebook(stage: str) -> Path:
    return notebooks_dir() / f"{stage}.ipynb"


def _first_error(err: ValidationError, data: dict) -> ParameterError:
    first = err.errors()[0]
    path = ""
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    allowed = first.get("msg", "valid").replace("Input should be ", "").replace("String should match pattern", "a name matching")
    if first["type"] == "missing":
        return ParameterError(path, None, "given (it is required)")
    if first["type"] == "extra_forbidden":
        return ParameterError(path, first.get("input"), f"left out: the known keys are {', '.join(Grid.model_fields)}")
    return ParameterError(path or "grid", first.get("input"), allowed)


def load_grid(path: str | Path) -> tuple[Grid, dict[str, list[Cell]]]:
    """Read and validate a grid file; returns the grid and the cells known before any run.

    Train (and data_prep, tune) cells are expanded and validated here; deploy and cost cells
    depend on earlier stages' records and are expanded when their stage starts.
    """
    path = Path(path)
    if not path.is_file():
        raise ParameterError("grid file", str(path), "an existing YAML file such as params/quick.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParameterError("grid file", str(path), f"valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParameterError("grid file", str(path), "a YAML mapping with study, stages and train")
    try:
        grid = Grid.model_validate(data)
    except ValidationError as err:
        raise _first_error(err, data) from None
    if "train" in grid.stages and not grid.train:
        raise ParameterError("train", None, "at least one block of datasets and models when stages include train")
    with contextlib.chdir(project_root()):   # relative data roots are relative to the project
        train = expand_train(grid)
    cells = {"train": train if "train" in grid.stages else []}
    cells["data_prep"] = expand_data_prep(grid, train) if "data_prep" in grid.stages else []
    cells["tune"] = expand_tune(grid, train) if "tune" in grid.stages else []
    for stage in ("data_prep", "tune", "deploy", "cost"):
        section = getattr(grid, stage)
        if stage in grid.stages and section is not None:
            check_notebook_parameters(stage, section.model_extra or {})
    return grid, cells


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------

def _list_fields() -> set[str]:
    from studylib.params import TrainParams
    return {name for name, f in TrainParams.model_fields.items() if "list" in str(f.annotation)}


def _sweep(settings: dict, list_fields: set[str]) -> list[dict]:
    """Cartesian product of list values (a list-typed parameter sweeps only when given a list of lists)."""
    axes = {}
    for key, value in settings.items():
        if isinstance(value, list) and (key not in list_fields or (value and isinstance(value[0], list))):
            axes[key] = value
        else:
            axes[key] = [value]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def expand_train(grid: Grid) -> list[Cell]:
    from studylib.params import TrainParams
    fields = set(TrainParams.model_fields)
    list_fields = _list_fields()
    cells, seen = [], set()
    for b, block in enumerate(grid.train):
        where = f"train[{b}]" if len(grid.train) > 1 else "train"
        base = dict(block.model_extra or {})
        for key in base:
            if key in ("dataset", "model", "seed") or key not in fields - {"output_dir"}:
                raise ParameterError(f"{where}.{key}", base[key],
                                     "a train parameter (datasets, models and seeds are lists of their own)"
                                     if key in ("dataset", "model", "seed") else
                                     f"one of the train parameters ({', '.join(sorted(fields - {'dataset', 'model', 'seed', 'output_dir'}))})")
        for pattern, values in block.overrides.items():
            if not any(fnmatch.fnmatchcase(m, pattern) for m in block.models):
                raise ParameterError(f"{where}.overrides.{pattern}", pattern, f"a model of this block or a pattern matching one ({', '.join(block.models)})")
            for key in values:
                if key != "seeds" and (key in ("dataset", "model", "seed", "output_dir") or key not in fields):
                    raise ParameterError(f"{where}.overrides.{pattern}.{key}", values[key], "seeds or a train parameter")
        for dataset in block.datasets:
            for model in block.models:
                settings, origin = dict(base), {k: where for k in base}
                seeds = block.seeds
                for pattern, values in block.overrides.items():
                    if fnmatch.fnmatchcase(model, pattern):
                        for key, value in values.items():
                            if key == "seeds":
                                seeds = value if isinstance(value, list) else [value]
                            else:
                                settings[key] = value
                                origin[key] = f"{where}.overrides.{pattern}"
                for seed in seeds:
                    for combo in _sweep(settings, list_fields):
                        values = {"dataset": dataset, "model": model, "seed": seed, **combo}
                        try:
                            params = TrainParams.from_mapping(values).run_params()
                        except ParameterError as err:
                            src = origin.get(err.parameter, where)
                            if err.parameter in ("dataset", "model", "seed"):
                                src, name = where, err.parameter + "s"
                            else:
                                name = err.parameter
                            raise ParameterError(f"{src}.{name}", err.value, err.allowed) from None
                        rid = run_id("train", params)
                        if rid in seen:
                            continue
                        seen.add(rid)
                        title = f"{model} on {dataset}, seed {seed}"
                        extra = {k: params[k] for k, v in combo.items() if isinstance(base.get(k), list)}
                        if extra:
                            title += " (" + ", ".join(f"{k} {v}" for k, v in extra.items()) + ")"
                        cells.append(Cell("train", rid, params, title=title, gpu=params["device"] != "cpu"))
    return cells


def expand_data_prep(grid: Grid, train: list[Cell]) -> list[Cell]:
    """One cell per dataset: the image sizes the train cells use (decoded once into the tensor cache)."""
    sec = grid.data_prep
    roots, sizes = {}, {}
    for c in train:
        roots.setdefault(c.params["dataset"], c.params["root"])
        sizes.setdefault(c.params["dataset"], set()).add(c.params["image_size"])
    datasets = sec.datasets or list(roots)
    cells = []
    for ds in datasets:
        params = {"dataset": ds, "root": roots.get(ds, ""),
                  "image_sizes": sorted(sec.image_sizes or sizes.get(ds, {64})), "seed": sec.seed,
                  **(sec.model_extra or {})}
        # the id the notebook's record will carry: the stage's own canonical parameters, hashed
        from studylib.stages.data_prep import DataPrepParams
        rid = run_id("data_prep", DataPrepParams.from_mapping(params).run_params())
        cells.append(Cell("data_prep", rid, params, title=f"{ds}"))
    return cells


def expand_tune(grid: Grid, train: list[Cell]) -> list[Cell]:
    sec = grid.tune
    if sec is None:
        return []
    datasets = sec.datasets or list(dict.fromkeys(c.params["dataset"] for c in train)) or ["clothing10"]
    from studylib.params import TrainParams
    cells = []
    for ds in datasets:
        for model in sec.models:
            try:
                TrainParams.from_mapping({"dataset": ds, "model": model})
            except ParameterError as err:
                raise ParameterError(f"tune.{err.parameter}s", err.value, err.allowed) from None
            params = {"model": model, "dataset": ds, "n_trials": sec.n_trials, **(sec.model_extra or {})}
            from studylib.stages.tune import TuneParams
            rid = run_id("tune", TuneParams.from_mapping(params).model_dump())  # as the tune record names itself
            cells.append(Cell("tune", rid, params, title=f"{model} on {ds}",
                              gpu=params.get("device", "auto") != "cpu"))
    return cells


def expand_deploy(grid: Grid, study: str) -> list[Cell]:
    """deploy.run "best": per dataset, the ok train run of this study with the best val top-1
    (of the weights it saved), never chosen on test. Or explicit train run ids."""
    from studylib.study.collect import load_runs
    wanted = grid.deploy.run
    try:
        runs = load_runs(study)
        train = runs[(runs.stage == "train") & (runs.status == "ok")]
    except FileNotFoundError:
        train = None
    if wanted == "best":
        if train is None or train.empty:
            return []
        best = (train.sort_values(["val_top1", "train_seconds", "run_id"], ascending=[False, True, True])
                .groupby("dataset", sort=True).head(1))
        chosen = [(r.run_id, f"best of {r.dataset}: {r.model}, seed {r.seed}") for r in best.itertuples()]
    else:
        chosen = [(r, r) for r in ([wanted] if isinstance(wanted, str) else wanted)]
    cells = []
    for rid, title in chosen:
        params = {"run": rid, **(grid.deploy.model_extra or {})}
        trained = train[train.run_id == rid].head(1) if train is not None else []
        named = {"dataset": trained.dataset.iloc[0], "model": trained.model.iloc[0]} if len(trained) else {}
        deploy_id = run_id("deploy", {**named, **params})   # readable: deploy-<dataset>-<model>-<hash>
        # the notebook's record takes the cell's id (deploy.ipynb's deploy_run_id parameter)
        cells.append(Cell("deploy", deploy_id, {**params, "deploy_run_id": deploy_id}, title=title))
    return cells


def expand_cost(grid: Grid, study: str, owned: list[str]) -> list[Cell]:
    """One cost page for the study. It summarises every run before it, so its id hashes their ids
    and states: a new run (or a failed one that now succeeded) gives a new page; no change skips it."""
    params = {"study": study, **(grid.cost.model_extra or {})}
    rid = f"cost-{study}-{params_hash({'params': params, 'runs': sorted(owned)})}"
    # the notebook's record takes the cell's id (cost.ipynb's cost_run_id parameter)
    return [Cell("cost", rid, {**params, "cost_run_id": rid}, title=f"cost of study {study}")]


def run_states(study: str) -> list[str]:
    """`<run id>:<status>` of every run the study has so far (what the cost page summarises)."""
    from studylib.study.collect import load_runs
    try:
        runs = load_runs(study)
    except FileNotFoundError:
        return []
    if runs.empty:
        return []
    return sorted(f"{r.run_id}:{r.status}" for r in runs.itertuples() if r.stage != "cost")


def check_notebook_parameters(stage: str, extra: dict) -> None:
    """Pass-through keys of a stage section must be parameters the stage notebook declares."""
    nb = stage_notebook(stage)
    if not extra or not nb.exists():
        return
    import papermill as pm
    declared = set(pm.inspect_notebook(str(nb)))
    for key, value in extra.items():
        if key not in declared:
            raise ParameterError(f"{stage}.{key}", value, f"a parameter of notebooks/{stage}.ipynb ({', '.join(sorted(declared))})")


# ---------------------------------------------------------------------------------------------
# One cell, on a worker
# ---------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def record_model(stage: str):
    """The stage's record schema in studylib.record: data_prep -> DataPrepRecord, ...; else the base Record."""
    from studylib import record
    return getattr(record, "".join(w.capitalize() for w in stage.split("_")) + "Record", Record)


def valid_record(path: Path, stage: str) -> Optional[dict]:
    """The notebook's `record` scrap when it is there, validates and says ok; else None."""
    if not path.is_file():
        return None
    try:
        import scrapbook as sb
        scraps = sb.read_notebook(str(path)).scraps
        if "record" not in scraps:
            return None
        data = scraps["record"].data
        record_model(stage).model_validate(data)
        return data if data.get("status") == "ok" else None
    except Exception:  # unreadable, half-written or invalid: not done
        return None


def glued_error(path: Path) -> Optional[str]:
    """The error of a failed record the notebook glued itself, if it did."""
    try:
        import scrapbook as sb
        data = sb.read_notebook(str(path)).scraps["record"].data
        return data.get("error") if data.get("status") == "failed" else None
    except Exception:
        return None


def failed_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".ipynb", ".failed.ipynb"))


def running_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".ipynb", ".running.ipynb"))


def timing(nb) -> dict:
    """Papermill's clock: the notebook's duration, the kernel start-up before the first cell, the cells."""
    meta = nb.metadata.get("papermill", {})
    out = {"notebook_seconds": meta.get("duration")}
    starts = [c.metadata.get("papermill", {}).get("start_time") for c in nb.cells if c.cell_type == "code"]
    starts = [s for s in starts if s]
    if meta.get("start_time") and starts:
        t0 = datetime.fromisoformat(meta["start_time"])
        out["startup_seconds"] = (datetime.fromisoformat(starts[0]) - t0).total_seconds()
    durations = [c.metadata.get("papermill", {}).get("duration") for c in nb.cells if c.cell_type == "code"]
    out["cells_seconds"] = sum(d for d in durations if d) if any(durations) else None
    return out


def execute_cell(cell: dict, out: str, cwd: str, source: str, gpu: bool = False) -> dict:
    """Run one cell with papermill (on a Dask worker). Never raises: returns what happened."""
    import logging

    import nbformat
    import papermill as pm
    from studylib.record import failed_record

    # train cells pass every TrainParams field, most of which the notebook's parameters cell leaves out
    logging.getLogger("papermill").setLevel(logging.ERROR)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, failed = running_path(out), failed_path(out)
    worker = _worker_name()
    if gpu and worker is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(_gpu_for(worker))
    started, t0 = _now(), time.perf_counter()
    error = None
    try:
        pm.execute_notebook(source, str(tmp), parameters=cell["params"], cwd=cwd, progress_bar=False,
                            extra_arguments=KERNEL_ARGS)
    except pm.PapermillExecutionError as err:
        error = f"{err.ename}: {err.evalue}"
    except Exception as err:  # kernel died, notebook unreadable...
        error = f"{type(err).__name__}: {err}"
    execution = {"started_at": started, "finished_at": _now(), "wall_seconds": time.perf_counter() - t0,
                 "worker": str(worker), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if not error and valid_record(tmp, cell["stage"]) is None:
        error = glued_error(tmp) or "the notebook finished without a valid `record` scrap with status ok"
    nb = nbformat.read(tmp, as_version=4) if tmp.exists() else nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(f"# {cell['run_id']}\n\nThe notebook did not start:\n\n    {error}")])
    execution.update(timing(nb))
    nb.metadata["studylib"] = {"cell": cell, "execution": execution}
    if error:
        nb.metadata["studylib"]["record"] = failed_record(cell["stage"], cell["params"], error, cell["run_id"])
    nbformat.write(nb, str(tmp))
    os.replace(tmp, failed if error else out)
    if not error and failed.exists():
        failed.unlink()
    return {"run_id": cell["run_id"], "stage": cell["stage"], "status": "failed" if error else "ok",
            "error": error, **execution}


def _worker_name():
    try:
        from distributed import get_worker
        return get_worker().name
    except (ImportError, ValueError):
        return None


def _gpu_for(worker) -> int:
    import torch
    count = max(1, torch.cuda.device_count())
    return (worker if isinstance(worker, int) else abs(hash(worker))) % count


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------

@dataclass
class Manifest:
    """results/<study>/cells.json: the cells this study owns, so collect and the book find them."""
    study: str
    grid: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return results_dir() / self.study / "cells.json"

    def add(self, cells: list[Cell]) -> None:
        have = {c.run_id for c in self.cells}
        self.cells += [c for c in cells if c.run_id not in have]

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"study": self.study, "grid": self.grid, "book": str(book_dir()),
                                   "cells": [asdict(c) for c in self.cells]}, indent=1))
        os.replace(tmp, self.path)


def kept_cells(grid: Grid) -> list[Cell]:
    """A study is the cells of its latest grid run; stages that this run leaves out keep theirs."""
    try:
        old = read_manifest(grid.study)
    except FileNotFoundError:
        return []
    return [Cell(**c) for c in old["cells"] if c["stage"] not in grid.stages]


def read_manifest(study: str) -> dict:
    path = results_dir() / study / "cells.json"
    if not path.is_file():
        raise FileNotFoundError(f"study '{study}' has no {path}: run `studylib grid params/{study}.yaml` first.")
    return json.loads(path.read_text())


def worker_thread_env(workers: int) -> dict:
    """The thread count every worker's notebooks compute with: the cores shared among the workers.

    Dask's nanny starts workers with OMP_NUM_THREADS=1 (and MKL's, OpenBLAS's) unless told otherwise,
    and the notebook kernels inherit it. A value the user exported wins."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {name: os.environ.get(name, threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def start_client(workers: int, scheduler: Optional[str], gpus: int):
    from distributed import Client, LocalCluster
    if scheduler:
        return Client(scheduler), None
    env = worker_thread_env(workers)
    import logging

    import dask
    # Dask's nanny also sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, for the worker's own memory;
    # the notebook kernels inherited it, and with it glibc hands every freed tensor back to the kernel:
    # shufflenet_v2_x1_0 trained at 196 images/s instead of 551 on 2 cores. None unsets it (a value the
    # user exported is still inherited).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
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


def cuda_devices() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


class Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):
    raise Interrupted()


def run_grid(path: str | Path, workers: int = 1, scheduler: Optional[str] = None, gpus: Optional[int] = None,
             report: bool = True, log=None) -> int:
    """Run a grid file. Returns 0 when every cell is ok, 1 when some failed, 130 when interrupted."""
    from distributed import as_completed
    from tqdm import tqdm

    from studylib.study import book

    from studylib.study import collect as results

    grid, cells = load_grid(path)          # every parameter checked before anything runs
    if workers < 1:
        raise ParameterError("--workers", workers, "a positive integer")
    gpus = cuda_devices() if gpus is None else gpus
    bar = tqdm(total=0, unit="run", desc=f"study {grid.study}", file=sys.stderr, dynamic_ncols=True)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    manifest = Manifest(grid.study, str(path), kept_cells(grid))
    summary = {"ok": 0, "skipped": 0, "failed": []}
    old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    client, cluster = start_client(workers, scheduler, gpus)
    use_gpu = cluster_has_gpus(client)
    where = scheduler or f"a local cluster of {workers} worker{'s' * (workers > 1)}"
    log(f"study {grid.study}: {sum(len(v) for v in cells.values())} cells known before the run, on {where}"
        + (" with GPUs" if use_gpu else ""))
    status = 0
    try:
        for stage in STAGES:
            if stage not in grid.stages:
                continue
            source = stage_notebook(stage)
            if not source.exists():
                log(f"[{stage}] skipped: {source.relative_to(project_root())} does not exist yet")
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
            futures = {}
            for i, c in enumerate(stage_cells):
                out = book_dir() / c.notebook
                if valid_record(out, stage):
                    log(f"[{stage}] skip   {c.run_id} (done: {c.notebook})")
                    summary["skipped"] += 1
                    bar.update(1)
                    continue
                gpu = c.gpu and use_gpu
                fut = client.submit(execute_cell, asdict(c), str(out), str(project_root()), str(source), gpu,
                                    key=f"{c.run_id}-{time.time_ns()}", pure=False, priority=-i,
                                    resources={"GPU": 1} if gpu else None)
                futures[fut] = c
            for fut in as_completed(list(futures)):
                c = futures[fut]
                try:
                    res = fut.result()
                except Exception as err:  # the worker itself died
                    res = {"status": "failed", "error": f"{type(err).__name__}: {err}", "wall_seconds": 0.0}
                if res["status"] == "ok":
                    summary["ok"] += 1
                    log(f"[{stage}] ok     {c.run_id} in {res['wall_seconds']:.1f} s on worker {res.get('worker')}")
                else:
                    summary["failed"].append((c, res["error"]))
                    log(f"[{stage}] FAILED {c.run_id} in {res['wall_seconds']:.1f} s: {res['error']}")
                bar.update(1)
            results.collect(grid.study, quiet=True)   # later stages (deploy, cost) read what this one made
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
        results.collect(grid.study)
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
                        help="skip the results and methods pages and the book's table of contents")
    parser.add_argument("--check", action="store_true", help="validate the grid file, list its cells and exit")


def run(args) -> int:
    try:
        if args.check:
            grid, cells = load_grid(args.grid)
            for stage in STAGES:
                if stage in grid.stages:
                    for c in cells.get(stage, []):
                        print(f"{stage:9s} {c.run_id}  {c.title}")
                    if stage in ("deploy", "cost"):
                        print(f"{stage:9s} (expanded when the stage starts)")
            return 0
        return run_grid(args.grid, workers=args.workers, scheduler=args.scheduler, gpus=args.gpus, report=args.report)
    except ParameterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
