"""The grid file and its cells: the schema of params/<study>.yaml, validated, expanded into one cell per run.

A grid file names a study, the stages to run and, for the train stage, blocks of datasets x
models x seeds x hyperparameters (a list is a cartesian product; per-model overrides allowed).
`load_grid` validates every parameter before any cell runs and expands the train, data_prep and
tune cells; deploy and cost cells depend on earlier stages' records and are expanded when their
stage starts (`expand_deploy`, `expand_cost`). Any mistake is one ParameterError sentence.
A train block with a `name` can be the source of a later block's weights: `pretrained: {from: <name>}` in a
block makes each of its cells fine-tune the source block's cell of the same model (the same seed when the
source block ran it, else the source block's first seed; its first dataset and setting), whose run id
becomes the cell's `pretrained` (`Cell.source`: the runner starts the cell once that one has finished).
The source must be an earlier block (so there is no cycle) with a cell of every model of the block.
`cell_timeout` (stage: seconds) bounds how long any one notebook cell of a stage may run (schema.CELL_TIMEOUT's
defaults for the stages it leaves out); past it the grid stops that notebook and records it as failed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import itertools
import re
import unicodedata
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from studylib.data.registry import dataset_spec
from studylib.data.sources import load_imagefolder
from studylib.errors import DatasetUnavailable, ParameterError, check_no_secret
from studylib.params import TrainParams
from studylib.paths import project_root
from studylib.util import is_uri, read_yaml_file
from studylib.record import params_hash, run_id
from studylib.stages.data_prep import DataPrepParams
from studylib.stages.tune import TuneParams
from studylib.study.collect import load_runs
from studylib.study.manifest import Cell, source_notebook
from studylib.study.schema import Grid, first_error

def load_grid(path: str | Path, data: str | Path | None = None) -> tuple[Grid, dict[str, list[Cell]]]:
    """Read and validate a grid file; returns the grid and the cells known before any run.

    Train (and data_prep, tune) cells are expanded and validated here; deploy and cost cells
    depend on earlier stages' records and are expanded when their stage starts. `data` (the CLI's
    --data): an image folder the whole grid runs on instead of its own datasets (`apply_data`).
    """
    path = Path(path)
    raw = read_yaml_file(path, "grid file", "an existing YAML file such as params/quick.yaml")
    if not isinstance(raw, dict):
        raise ParameterError("grid file", str(path), "a YAML mapping with study, stages and train")
    check_no_secret("", raw)   # before any cell: a secret would reach cells.json, the notebooks and the tables
    try:
        grid = Grid.model_validate(raw)
    except ValidationError as err:
        raise first_error(err) from None
    if data is not None:
        grid = apply_data(grid, check_data_folder(data))
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


def _list_fields() -> set[str]:
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


def data_label(dataset: str, root: str) -> str:
    """How a page title names the data: the dataset, or for an image folder the folder's name."""
    return Path(root).name if root and dataset_spec(dataset).needs_root else dataset


PRETRAINED_FROM = "false, true, a run id, a path to a run folder, or {from: <name of an earlier train block>}"


def source_block(grid: Grid, b: int, where: str) -> Optional[int]:
    """The index of the earlier block that block b's `pretrained: {from: <name>}` names; None when its
    `pretrained` is anything else. Only an earlier block may be named: no two blocks wait on each other."""
    spec = (grid.train[b].model_extra or {}).get("pretrained")
    if not isinstance(spec, dict):
        return None
    name = spec.get("from")
    if set(spec) != {"from"} or not isinstance(name, str) or not name:
        raise ParameterError(f"{where}.pretrained", spec, PRETRAINED_FROM)
    names = [block.name for block in grid.train]
    earlier = [i for i in range(b) if names[i] == name]
    if len(earlier) == 1:
        return earlier[0]
    if earlier:
        allowed = f"the name of one train block ({len(earlier)} blocks are named '{name}')"
    elif name in names[b:]:
        allowed = ("the name of an earlier train block (a block takes weights only from a block above it, "
                   "so no two blocks wait on each other)")
    else:
        known = ", ".join(f"'{n}'" for n in names[:b] if n)
        allowed = f"the name of an earlier train block ({known or 'no earlier block has a name'})"
    raise ParameterError(f"{where}.pretrained.from", name, allowed)


def source_cell(cells: list[Cell], model: str, seed: int, where: str, name: str) -> Cell:
    """The source block's cell for a dependent cell: the same model, the same seed when the source block ran
    it, else the source block's first seed (of the model's cells, the first in the block's order)."""
    candidates = [c for c in cells if c.params["model"] == model]
    if not candidates:
        models = ", ".join(dict.fromkeys(c.params["model"] for c in cells))
        raise ParameterError(f"{where}.pretrained.from", name,
                             f"a block with a cell of model '{model}' (block '{name}' trains {models})")
    return next((c for c in candidates if c.params["seed"] == seed), candidates[0])


def expand_train(grid: Grid) -> list[Cell]:
    """One cell per dataset x model x seed x swept setting, each validated as TrainParams (duplicates once).
    A block with `pretrained: {from: <block>}` takes each cell's weights from its source cell (source_cell)."""
    fields = set(TrainParams.model_fields)
    list_fields = _list_fields()
    cells, by_id, block_cells = [], {}, []
    for b, block in enumerate(grid.train):
        where = f"train[{b}]" if len(grid.train) > 1 else "train"
        base = dict(block.model_extra or {})
        src = source_block(grid, b, where)
        if src is not None:
            base.pop("pretrained")   # each cell's own: its source cell's run id
        block_cells.append([])
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
                    source = None if src is None else source_cell(block_cells[src], model, seed, where,
                                                                   grid.train[src].name)
                    for combo in _sweep(settings, list_fields):
                        values = {"dataset": dataset, "model": model, "seed": seed, **combo}
                        if source is not None:
                            values["pretrained"] = source.run_id
                        try:   # a source cell has not run yet: its run is checked when this cell starts
                            params = TrainParams.from_mapping(values, check_source=source is None).run_params()
                        except ParameterError as err:
                            src_key = origin.get(err.parameter, where)
                            if err.parameter in ("dataset", "model", "seed"):
                                src_key, name = where, err.parameter + "s"
                            else:
                                name = err.parameter
                            raise ParameterError(f"{src_key}.{name}", err.value, err.allowed) from None
                        rid = run_id("train", params)
                        if rid in by_id:
                            block_cells[b].append(by_id[rid])
                            continue
                        title = f"{model} on {data_label(dataset, params['root'])}, seed {seed}"
                        swept = [k for k, v in settings.items() if isinstance(v, list)
                                 and (k not in list_fields or (v and isinstance(v[0], list)))]   # as _sweep does
                        extra = {k: params[k] for k in combo if k in swept}
                        if source is not None:
                            extra = {"from": source.params["dataset"], "finetune": params["finetune"], **extra}
                        if extra:
                            title += " (" + ", ".join(f"{k} {v}" for k, v in extra.items()) + ")"
                        cell = Cell("train", rid, params, title=title, gpu=params["device"] != "cpu",
                                    source=source.run_id if source is not None else "")
                        by_id[rid] = cell
                        block_cells[b].append(cell)
                        cells.append(cell)
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
        rid = run_id("data_prep", DataPrepParams.from_mapping(params).run_params())
        cells.append(Cell("data_prep", rid, params, title=data_label(ds, params["root"])))
    return cells


def expand_tune(grid: Grid, train: list[Cell]) -> list[Cell]:
    """One Optuna search per dataset x model of the tune section (datasets default to the train cells')."""
    sec = grid.tune
    if sec is None:
        return []
    datasets = sec.datasets or list(dict.fromkeys(c.params["dataset"] for c in train)) or ["clothing10"]
    extra = sec.model_extra or {}
    roots = {}
    for c in train:   # a dataset's root is its train cells' (an image folder has no default one)
        roots.setdefault(c.params["dataset"], c.params["root"])
    cells = []
    for ds in datasets:
        root = extra.get("root") or roots.get(ds, "")
        where = {"root": root} if root else {}
        for model in sec.models:
            try:
                TrainParams.from_mapping({"dataset": ds, "model": model, **where})
            except ParameterError as err:
                name = err.parameter + "s" if err.parameter in ("dataset", "model") else err.parameter
                raise ParameterError(f"tune.{name}", err.value, err.allowed) from None
            params = {"model": model, "dataset": ds, "n_trials": sec.n_trials, **where, **extra}
            rid = run_id("tune", TuneParams.from_mapping(params).model_dump())  # as the tune record names itself
            cells.append(Cell("tune", rid, params, title=f"{model} on {data_label(ds, root)}",
                              gpu=params.get("device", "auto") != "cpu"))
    return cells


def best_per_model(train):
    """Per dataset and model, the ok train run with the best val top-1 (of the weights it saved; ties: the
    faster, then the run id), never chosen on test; the best model of each dataset first."""
    return (train.sort_values(["val_top1", "train_seconds", "run_id"], ascending=[False, True, True])
            .groupby(["dataset", "model"], sort=False).head(1))


def expand_deploy(grid: Grid, study: str) -> list[Cell]:
    """deploy.run "best": per dataset, the ok train run of this study with the best val top-1
    (of the weights it saved), never chosen on test. Or explicit train run ids. Each cell also
    times every model of its dataset side by side (serving_runs: best_per_model's runs, the served
    run in its model's place)."""
    wanted = grid.deploy.run
    try:
        runs = load_runs(study)
        train = runs[(runs.stage == "train") & (runs.status == "ok")]
    except FileNotFoundError:
        train = None
    per_model = best_per_model(train) if train is not None else None
    if wanted == "best":
        if train is None or train.empty:
            return []
        best = per_model.groupby("dataset", sort=True).head(1)
        chosen = [(r.run_id, f"best of {r.dataset}: {r.model}, seed {r.seed}") for r in best.itertuples()]
    else:
        chosen = [(r, r) for r in ([wanted] if isinstance(wanted, str) else wanted)]
    cells = []
    for rid, title in chosen:
        trained = train[train.run_id == rid].head(1) if train is not None else []
        named = {"dataset": trained.dataset.iloc[0], "model": trained.model.iloc[0]} if len(trained) else {}
        serving = ([rid if r.model == named["model"] else r.run_id
                    for r in per_model[per_model.dataset == named["dataset"]].itertuples()] if named else [])
        params = {"run": rid, **({"serving_runs": serving} if serving else {}), **(grid.deploy.model_extra or {})}
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
    try:
        runs = load_runs(study)
    except FileNotFoundError:
        return []
    if runs.empty:
        return []
    return sorted(f"{r.run_id}:{r.status}" for r in runs.itertuples() if r.stage != "cost")


def check_notebook_parameters(stage: str, extra: dict) -> None:
    """Pass-through keys of a stage section must be parameters the stage notebook declares."""
    nb = source_notebook(stage)
    if not extra or not nb.exists():
        return
    import papermill as pm  # lazy: `studylib grid` needs it only for sections that pass parameters through
    declared = set(pm.inspect_notebook(str(nb)))
    for key, value in extra.items():
        if key not in declared:
            raise ParameterError(f"{stage}.{key}", value, f"a parameter of notebooks/{stage}.ipynb ({', '.join(sorted(declared))})")


# --- --data: the grid on the user's own image folder ------------------------------------------------

DATA_DATASET = "imagefolder"
DATA_ALLOWED = "an existing local folder of images in <class>/<image> or <split>/<class>/<image> folders"


def check_data_folder(data: str | Path) -> Path:
    """--data before any work: a local folder the imagefolder loader reads as two or more classes of
    images, with its own splits or enough images in every class to carve them by seed. Its absolute path."""
    folder = Path(data).expanduser()
    if not str(data).strip() or is_uri(str(data)) or not folder.is_dir():
        raise ParameterError("--data", str(data), DATA_ALLOWED)
    folder = folder.resolve()
    try:
        classes = load_imagefolder(str(folder)).classes   # lists the files and carves the splits; opens no image
    except DatasetUnavailable:
        raise ParameterError("--data", str(data), f"{DATA_ALLOWED} (this one holds no class folder with images)") from None
    except ParameterError as err:   # the loader's own sentence (a class train lacks, an empty class folder, ...)
        raise ParameterError("--data", str(data), err.allowed) from None
    except ValueError:   # scikit-learn's stratified split: a class too small to give validation and test images
        raise ParameterError("--data", str(data), "a folder with enough images in every class to carve stratified "
                             "validation and test splits from (10 or more a class)") from None
    if len(classes) < 2:
        raise ParameterError("--data", str(data), f"a folder of two or more class folders (this one has only '{classes[0]}')")
    return folder


def data_study_name(study: str, folder: Path) -> str:
    """<study>-<folder name>: the name in ASCII letters, digits, '_' and '.', accents dropped, any other
    run of characters one '-' (a name with none left: a hash of the path), safe as a file name."""
    name = unicodedata.normalize("NFKD", folder.name).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")[:100].strip("-.")   # a name (paths.NAME), however long
    return f"{study}-{name or 'data-' + hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def apply_data(grid: Grid, folder: Path) -> Grid:
    """The grid on the image folder: every train block's datasets become imagefolder with `folder` as its
    root (a root the block or its overrides name gives way); data_prep and tune sections that name datasets
    name imagefolder instead (else they follow the train cells, as always); deploy serves the new study's
    best run (run ids name runs on the grid's own data); the study is data_study_name's, so its results,
    runs and book pages stay apart from the grid's own."""
    if not grid.train:
        raise ParameterError("--data", str(folder), "given with a grid file that has train blocks (their datasets become the folder)")
    d = grid.model_dump()
    d["study"] = data_study_name(grid.study, folder)
    d["title"] = f"The {grid.study} study on the images in {folder}"
    for block in d["train"]:
        block.update(datasets=[DATA_DATASET], root=str(folder))
        for values in block["overrides"].values():
            values.pop("root", None)
    for section in (d["data_prep"], d["tune"]):
        if section is not None:
            section.pop("root", None)
            if section.get("datasets"):
                section["datasets"] = [DATA_DATASET]
    d["deploy"]["run"] = "best"
    return Grid.model_validate(d)
