"""Records are read as the models they were written as: a record that fails validation names its first bad field."""
import json
import os
import subprocess
import sys

import nbformat
import pytest

from studylib.params import TrainParams
from studylib.record import RECORD_TYPES, Record, TrainRecord, invalid_field, run_id
from studylib.study.execute import check_record, execute_cell, valid_record

EPOCH = {"epoch": 1, "train_loss": 1.2, "train_top1": 0.5, "val_loss": 1.1, "val_top1": 0.55, "lr": 0.01,
         "seconds": 3.0, "val_seconds": 0.5, "images_per_second": 300.0, "data_wait_seconds": 0.1}


def train_record(**changes) -> dict:
    """A train record as the train notebook glues it (every field TrainRecord requires), with `changes`."""
    record = {
        "run_id": "train-clothing10-smallvgg1-s0-0123456789", "stage": "train", "status": "ok",
        "params": {"dataset": "clothing10", "model": "smallvgg1", "seed": 0},
        "dataset": "clothing10", "model": "smallvgg1", "pretrained": False, "device": "cpu",
        "hardware": {"cpu_count": 2}, "versions": {"torch": "2"}, "classes": ["a", "b"], "num_classes": 2,
        "image_size": 32, "param_count": 1000, "trainable_params": 1000, "size_mb": 0.1, "gmacs": 0.01,
        "data": {}, "history": [EPOCH],
        "test": {"top1": 0.5, "top5": 1.0, "balanced_accuracy": 0.5, "macro_f1": 0.5, "per_class": [],
                 "confusion_matrix": [[1, 1], [1, 1]]},
        "train_seconds": 3.5, "first_step_seconds": 0.2, "eval_seconds": 0.3, "time_to_target": {"0.5": 3.5},
        "epoch_to_target": {"0.5": 1}, "peak_memory_mb": 100.0, "checkpoint": "runs/x/model.pt",
        "started_at": "2026-01-01T12:00:00+00:00", "finished_at": "2026-01-01T12:00:05+00:00",
    }
    record.update(changes)
    return record


def glued_notebook(path, record: dict):
    """A notebook as papermill leaves it after `scrapbook.glue("record", record)`."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("sb.glue('record', record)")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={
        "application/scrapbook.scrap.json+json": {"name": "record", "data": record, "encoder": "json", "version": 1}},
        metadata={"scrapbook": {"name": "record", "data": True, "display": False}})]
    nbformat.write(nb, str(path))
    return path


def test_every_stage_has_its_record_type():
    assert set(RECORD_TYPES) == {"data_prep", "train", "tune", "deploy", "cost"}
    assert all(issubclass(t, Record) for t in RECORD_TYPES.values())
    assert invalid_field("train", train_record()) is None
    TrainRecord.model_validate(train_record())


@pytest.mark.parametrize("changes, message", [
    ({"test": {**train_record()["test"], "top1": None}}, "record field 'test.top1': Input should be a valid number"),
    ({"history": [{k: v for k, v in EPOCH.items() if k != "lr"}]}, "record field 'history[0].lr': Field required"),
    ({"num_classes": "two"}, "record field 'num_classes': Input should be a valid integer"),
])
def test_an_invalid_record_names_its_first_bad_field(tmp_path, changes, message):
    path = glued_notebook(tmp_path / "x.ipynb", train_record(**changes))
    record, problem = check_record(path, "train")
    assert record is None and problem.startswith(message)
    assert valid_record(path, "train") is None


def test_a_valid_record_is_done_and_a_glued_failure_keeps_its_error(tmp_path):
    ok = glued_notebook(tmp_path / "ok.ipynb", train_record())
    assert check_record(ok, "train") == (train_record(), None) and valid_record(ok, "train") == train_record()
    failed = glued_notebook(tmp_path / "failed.ipynb", {"run_id": "r", "stage": "train", "status": "failed",
                                                        "params": {}, "error": "DatasetUnavailable: no images"})
    assert check_record(failed, "train") == (None, "DatasetUnavailable: no images")
    none = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nbformat.write(none, tmp_path / "none.ipynb")
    assert check_record(tmp_path / "none.ipynb", "train") == (
        None, "the notebook finished without a valid `record` scrap with status ok")


@pytest.mark.slow
def test_a_cell_that_glues_a_bad_record_fails_naming_the_field(tmp_path):
    """Planted: a notebook that glues a train record whose test top-1 is None. The cell fails, and says why."""
    data = tmp_path / "record.json"
    data.write_text(json.dumps(train_record(test={**train_record()["test"], "top1": None})))
    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import json\nimport scrapbook as sb\nsb.glue('record', json.loads(open({str(data)!r}).read()))")])
    source.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(source, tmp_path / "train.ipynb")
    out = tmp_path / "book" / "train" / "train-x.ipynb"
    cell = {"stage": "train", "run_id": "train-x", "params": {}, "title": "", "gpu": False,
            "notebook": "train/train-x.ipynb"}
    result = execute_cell(cell, str(out), str(tmp_path), str(tmp_path / "train.ipynb"))
    message = "record field 'test.top1': Input should be a valid number"
    assert result["status"] == "failed" and result["error"] == message
    failed = out.with_name("train-x.failed.ipynb")
    assert not out.exists() and failed.exists() and not out.with_name("train-x.running.ipynb").exists()
    assert nbformat.read(failed, as_version=4).metadata["studylib"]["record"]["error"] == message


def test_a_run_id_is_the_same_in_every_process():
    """The same parameters name the same run in another process (another PYTHONHASHSEED, another set
    order), so a rerun finds and skips it. Python's own hash() of a string changes per process."""
    params = TrainParams(model="smallvgg1", epochs=2, targets=[0.5, 0.7]).run_params()
    here = run_id("train", params)
    code = ("import sys; from studylib.params import TrainParams; from studylib.record import run_id; "
            "sys.stdout.write(run_id('train', TrainParams(model='smallvgg1', epochs=2, targets=[0.5, 0.7]).run_params()))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, check=True)
        assert out.stdout == here
    assert run_id("train", {**params, "epochs": 3}) != here
