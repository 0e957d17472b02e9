"""Issue 14, item 4: names that become paths (model, dataset, study, run id, stage) match one strict pattern,
checked in one place (studylib.paths.check_name), and every derived path stays inside its root
(studylib.paths.inside)."""
import nbformat
import pytest

from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.paths import check_name, inside
from studylib.record import run_id
from studylib.study import collect, manifest

ESCAPE = "resnet18./../../../../tmp/x"
HTML = "resnet18.<img src=x onerror=alert(1)>"


@pytest.mark.parametrize("name", ["resnet18", "resnet18.a1_in1k", "smallvgg3_bn", "quick-Mes-photos-ete",
                                  "train-clothing10-resnet18.a1_in1k-s0-0123456789"])
def test_check_name_takes_the_names_the_study_uses(name):
    assert check_name("model", name) == name


@pytest.mark.parametrize("name", [ESCAPE, HTML, "..", ".hidden", "a/b", "a\\b", "", "x" * 200, "é", "a b", None])
def test_check_name_refuses_anything_else_in_one_sentence(name):
    with pytest.raises(ParameterError, match="parameter 'model' is .* but it must be a name of ASCII letters"):
        check_name("model", name)


@pytest.mark.parametrize("model", [ESCAPE, HTML])
def test_a_model_name_with_a_path_or_markup_in_its_tag_is_refused(model):
    """Before: any text after a timm model's dot was accepted and became part of the run's folder."""
    with pytest.raises(ParameterError, match="parameter 'model'"):
        TrainParams.from_mapping({"model": model})


def test_a_run_id_is_always_a_name():
    assert run_id("train", {"dataset": "clothing10", "model": "resnet18", "seed": 0}).startswith("train-clothing10-resnet18-s0-")
    with pytest.raises(ParameterError, match="parameter 'run id'"):
        run_id("train", {"dataset": "clothing10", "model": ESCAPE, "seed": 0})


def test_inside_refuses_a_path_that_leaves_its_root(tmp_path):
    assert inside(tmp_path, "train", "x.ipynb") == tmp_path / "train" / "x.ipynb"
    for parts in (("..", "x"), ("a/../../x",), ("/etc/passwd",)):
        with pytest.raises(ParameterError, match="a path inside"):
            inside(tmp_path, *parts)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ParameterError):
        inside(tmp_path, "link", "x")


def test_cells_and_studies_are_names(study_env):
    with pytest.raises(ParameterError, match="parameter 'run id'"):
        manifest.Cell("train", "../../../tmp/x", {})
    with pytest.raises(ParameterError, match="parameter 'stage'"):
        manifest.Cell("../train", "x", {})
    with pytest.raises(ParameterError, match="parameter 'notebook'"):
        manifest.Cell("train", "x", {}, notebook="../../outside.ipynb")
    for study in ("../../tmp/x", "a/b", "<b>x</b>"):
        with pytest.raises(ParameterError, match="parameter 'study'"):
            manifest.manifest_path(study)
        with pytest.raises(ParameterError, match="parameter 'study'"):
            collect.study_dir(study)


def test_collect_reads_no_notebook_outside_the_book(tmp_path, study_env, monkeypatch):
    """A cells.json edited by hand (or by an older, looser version) cannot point collect outside book/."""
    monkeypatch.setenv("STUDYLIB_BOOK", str(tmp_path / "book"))
    outside = tmp_path / "outside.failed.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), outside)
    cell = {"stage": "train", "run_id": "x", "params": {}, "title": "", "gpu": False, "notebook": "../outside.ipynb"}
    with pytest.raises(ParameterError, match="a path inside"):
        collect.read_cell(cell, tmp_path / "book")
