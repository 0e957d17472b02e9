"""The grid file's schema: a study's name, its stages, train blocks and stage sections, each stage's cell timeout.

pydantic models only; `studylib.study.expand` reads a grid file through them and expands it into cells.
A mistake is one ParameterError sentence (`first_error`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from studylib.errors import ParameterError
from studylib.paths import NAME
from studylib.record import field_path
from studylib.study.manifest import STAGES


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


# Seconds one notebook cell of a stage may run (a train cell's training is one cell): generous for a CPU, a
# bound for a cell that hangs (a server that never answers); a grid file's `cell_timeout` overrides them.
CELL_TIMEOUT = {"data_prep": 4 * 3600, "train": 12 * 3600, "tune": 12 * 3600, "deploy": 3600, "cost": 1800}


class Grid(BaseModel):
    """A grid file: the study's name, the stages to run, a section per stage, and each stage's cell timeout."""
    model_config = ConfigDict(extra="forbid")
    study: str = Field(pattern=rf"^{NAME.pattern}$")   # the one pattern of names that become paths
    title: str = ""
    description: str = ""
    stages: list[Literal[STAGES]] = Field(min_length=1)
    train: list[TrainBlock] = []
    data_prep: DataPrepSection = DataPrepSection()
    tune: Optional[TuneSection] = None
    deploy: DeploySection = DeploySection()
    cost: Section = Section()
    cell_timeout: dict[Literal[STAGES], Annotated[float, Field(gt=0)]] = {}

    def timeout(self, stage: str) -> float:
        """Seconds any one notebook cell of `stage` may run."""
        return self.cell_timeout.get(stage, CELL_TIMEOUT[stage])

    @field_validator("train", mode="before")
    @classmethod
    def _one_block_or_many(cls, v):
        return [v] if isinstance(v, dict) else v


def first_error(err: ValidationError) -> ParameterError:
    """The grid file's first invalid key as one ParameterError sentence."""
    first = err.errors()[0]
    path = field_path([part for part in first["loc"] if part != "[key]"])   # a bad dict key: named by itself
    allowed = first.get("msg", "valid").replace("Input should be ", "").replace("String should match pattern", "a name matching")
    if first["type"] == "missing":
        return ParameterError(path, None, "given (it is required)")
    if first["type"] == "extra_forbidden":
        return ParameterError(path, first.get("input"), f"left out: the known keys are {', '.join(Grid.model_fields)}")
    return ParameterError(path or "grid", first.get("input"), allowed)
