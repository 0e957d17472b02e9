"""A study's cells and where their notebooks live: the stages in run order, results/<study>/cells.json.

The grid runner writes the manifest; collect, the book and a rerun read it. An executed cell is
book/<stage>/<run-id>.ipynb; while it runs it is <run-id>.running.ipynb, and a failed one is kept
as <run-id>.failed.ipynb. A cell's stage and run id are names (studylib.paths.check_name), so its notebook
stays under book/; cells.json holds no secret (studylib.errors.redact).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from studylib.errors import redact
from studylib.paths import book_dir, check_name, inside, project_root, results_dir
from studylib.util import atomic_write_json

STAGES = ("data_prep", "train", "tune", "deploy", "cost")   # the order a grid runs them in


@dataclass
class Cell:
    """One papermill execution of notebooks/<stage>.ipynb with these parameters."""
    stage: str
    run_id: str
    params: dict
    title: str = ""
    gpu: bool = False
    notebook: str = ""          # book-relative path of the executed notebook, e.g. train/<run-id>.ipynb
    source: str = ""            # a train cell's source cell (its `pretrained` run): this cell starts after it

    def __post_init__(self):
        check_name("stage", self.stage)
        check_name("run id", self.run_id)
        self.notebook = self.notebook or f"{self.stage}/{self.run_id}.ipynb"
        for part in self.notebook.split("/"):   # a path read back from cells.json: names only, no '..'
            check_name("notebook", part)


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def source_notebook(name: str) -> Path:
    """notebooks/<name>.ipynb: the notebook a stage's cells (or a report page) execute."""
    return notebooks_dir() / f"{name}.ipynb"


def failed_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".ipynb", ".failed.ipynb"))


def running_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".ipynb", ".running.ipynb"))


def manifest_path(study: str) -> Path:
    return inside(results_dir(), check_name("study", study), "cells.json")


@dataclass
class Manifest:
    """results/<study>/cells.json: the cells this study owns, so collect and the book find them."""
    study: str
    grid: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return manifest_path(self.study)

    def add(self, cells: list[Cell]) -> None:
        have = {c.run_id for c in self.cells}
        self.cells += [c for c in cells if c.run_id not in have]

    def write(self) -> None:
        atomic_write_json(self.path, {"study": self.study, "grid": self.grid, "book": str(book_dir()),
                                      "cells": [redact(asdict(c)) for c in self.cells]})


def read_manifest(study: str) -> dict:
    path = manifest_path(study)
    if not path.is_file():
        raise FileNotFoundError(f"study '{study}' has no {path}: run `studylib grid params/{study}.yaml` first.")
    return json.loads(path.read_text())


def kept_cells(grid) -> list[Cell]:
    """A study is the cells of its latest grid run; stages that this run (`grid.stages`) leaves out keep theirs."""
    try:
        old = read_manifest(grid.study)
    except FileNotFoundError:
        return []
    return [Cell(**c) for c in old["cells"] if c["stage"] not in grid.stages]
