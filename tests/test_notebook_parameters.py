"""Each stage notebook's parameters cell shows its params class: every field, the same default, the same order.

A reader of notebooks/<stage>.ipynb sees every parameter they can pass with `papermill -p`, and the
grid passes nothing the notebook does not show (papermill warns about unknown parameters).
"""
import ast
import importlib
from pathlib import Path

import papermill as pm
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

PARAMS_CLASSES = {
    "train": "studylib.params:TrainParams",
    "tune": "studylib.stages.tune:TuneParams",
    "data_prep": "studylib.stages.data_prep:DataPrepParams",
    "deploy": "studylib.stages.deploy:DeployParams",
    "cost": "studylib.stages.cost.params:CostParams",
}


def params_class(stage: str):
    module, name = PARAMS_CLASSES[stage].split(":")
    return getattr(importlib.import_module(module), name)


def field_default(field):
    return field.get_default(call_default_factory=True)


@pytest.mark.parametrize("stage", sorted(PARAMS_CLASSES))
def test_parameters_cell_shows_every_field_with_its_default(stage):
    cls = params_class(stage)
    shown = pm.inspect_notebook(str(NOTEBOOKS / f"{stage}.ipynb"))
    assert shown, f"notebooks/{stage}.ipynb has no cell tagged 'parameters'"
    assert list(shown) == list(cls.model_fields), (
        f"notebooks/{stage}.ipynb's parameters cell lists {list(shown)}, but {cls.__name__} has {list(cls.model_fields)}")
    for name, field in cls.model_fields.items():
        default = ast.literal_eval(shown[name]["default"])
        assert default == field_default(field), (
            f"notebooks/{stage}.ipynb sets {name} = {default!r}, but {cls.__name__}.{name} defaults to {field_default(field)!r}")


@pytest.mark.parametrize("stage", sorted(PARAMS_CLASSES))
def test_a_changed_default_is_caught(stage, tmp_path):
    """The check above can fail: a notebook whose first parameter's default differs is reported."""
    import nbformat
    nb = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    first = next(iter(params_class(stage).model_fields))
    lines = cell.source.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"{first} ") or line.startswith(f"{first}="))
    lines[i] = f"{first} = {'__changed__'!r}"
    cell.source = "\n".join(lines)
    path = tmp_path / f"{stage}.ipynb"
    nbformat.write(nb, path)
    shown = pm.inspect_notebook(str(path))
    assert ast.literal_eval(shown[first]["default"]) != field_default(params_class(stage).model_fields[first])
