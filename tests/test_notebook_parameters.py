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


TYPOS = {"train": ("epoch", 3, "epochs"), "data_prep": ("image_size", 32, "image_sizes"),
         "tune": ("n_trial", 2, "n_trials"), "deploy": ("concurency", [1], "concurrency"),
         "cost": ("studdy", "quick", "study")}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(PARAMS_CLASSES))
def test_a_parameter_the_notebook_does_not_know_stops_it_before_any_work(stage, tmp_path, study_env):
    """`papermill notebooks/<stage>.ipynb out.ipynb -p epoch 3`: one sentence naming the typo and the nearest
    parameter, raised by the validation cell (the first after the parameters), in a real kernel whose own
    globals (In, Out, get_ipython, ...) the check leaves alone."""
    typo, value, nearest = TYPOS[stage]
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(NOTEBOOKS / f"{stage}.ipynb"), str(out), parameters={typo: value},
                            cwd=str(NOTEBOOKS.parent), progress_bar=False, kernel_name="python3")
    assert info.value.ename == "ParameterError", info.value.evalue
    assert info.value.evalue.startswith(f"parameter '{typo}' is {value!r}") and f"the nearest is '{nearest}'" in info.value.evalue
    import nbformat
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    failed = next(i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    assert failed == injected + 1, f"notebooks/{stage}.ipynb failed in code cell {failed}, not in its validation cell"
