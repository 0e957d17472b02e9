"""Failure isolation beyond a raised exception: a cell whose kernel dies, notebooks that finish without a valid
record, a cell that never ends (stopped by the grid file's cell_timeout), and a later stage (deploy of the best run) that still runs after those train cells failed.

The grid runs in this process on a test-only copy of notebooks/ (manifest.notebooks_dir patched; the runner
hands each worker the source notebook's path) whose train.ipynb breaks on purpose, by model name.
"""
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from studylib.record import DeployRecord
from studylib.study import manifest, runner
from studylib.study.collect import load_records
from studylib.study.execute import NO_RECORD, glued_record

ROOT = Path(__file__).resolve().parent.parent

# Inserted after train.ipynb's parameters cell (papermill injects the grid's values just before it).
BREAK = '''# test only (tests/test_failures.py): ways a cell breaks besides raising, chosen by the model's name
import os
import scrapbook

if model == "mnasnet0_5":                 # the kernel dies
    os._exit(1)
if model == "shufflenet_v2_x0_5":         # the notebook runs to its end but glues no record
    scrapbook.glue = lambda *args, **kwargs: None
if model == "smallvgg3":                  # a cell that never ends: the grid file's cell_timeout stops it
    import time
    time.sleep(3600)
if model == "smallvgg2":                  # the notebook glues a record without its test metrics
    _glue = scrapbook.glue
    scrapbook.glue = lambda name, value, **kw: _glue(name, {k: v for k, v in value.items() if k != "test"}, **kw)
'''

GRID = """
study: failures
stages: [train, deploy]
cell_timeout: {{train: 20}}
train:
  datasets: [imagefolder]
  root: {root}
  models: [smallvgg1, mnasnet0_5, shufflenet_v2_x0_5, smallvgg2, smallvgg3]
  seeds: [0]
  image_size: 32
  epochs: 1
  batch_size: 16
deploy:
  run: best
  concurrency: [1]
  max_requests: 20
  max_seconds: 2.0
  paired_rounds: 2
  warmup: 1
  calibration_images: 16
"""


def breaking_notebooks(folder: Path) -> Path:
    """A copy of notebooks/ whose train.ipynb runs BREAK right after its parameters."""
    shutil.copytree(ROOT / "notebooks", folder)
    nb = nbformat.read(folder / "train.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(BREAK))
    nbformat.write(nb, folder / "train.ipynb")
    return folder


@pytest.mark.slow
def test_broken_cells_are_recorded_and_a_later_stage_still_runs(study_env, tiny_imagefolder, tmp_path, monkeypatch, capsys):
    notebooks = breaking_notebooks(tmp_path / "notebooks")
    monkeypatch.setattr(manifest, "notebooks_dir", lambda: notebooks)
    book = tmp_path / "book"
    for name, folder in (("STUDYLIB_RESULTS", tmp_path / "results"), ("STUDYLIB_BOOK", book),
                         ("STUDYLIB_RUNS", tmp_path / "runs")):
        monkeypatch.setenv(name, str(folder))
    grid = tmp_path / "failures.yaml"
    grid.write_text(GRID.format(root=tiny_imagefolder))
    lines = []

    status = runner.run_grid(grid, workers=2, gpus=0, report=False, log=lines.append)

    out = capsys.readouterr().out
    log = "\n".join(lines) + "\n" + out
    assert status == 1, log
    assert "study failures: 2 ran ok, 0 skipped (already done), 4 failed" in out, log

    runs = pd.read_csv(tmp_path / "results" / "failures" / "runs.csv")
    train = runs[runs.stage == "train"].set_index("model")
    assert sorted(train.index) == ["mnasnet0_5", "shufflenet_v2_x0_5", "smallvgg1", "smallvgg2", "smallvgg3"]
    assert train.status.to_dict() == {"mnasnet0_5": "failed", "shufflenet_v2_x0_5": "failed",
                                      "smallvgg1": "ok", "smallvgg2": "failed", "smallvgg3": "failed"}
    errors = train.error.to_dict()
    assert errors["mnasnet0_5"].startswith("DeadKernelError: Kernel died"), errors["mnasnet0_5"]   # nbclient's words
    assert errors["shufflenet_v2_x0_5"] == NO_RECORD
    assert errors["smallvgg2"].startswith("record field 'test'"), errors["smallvgg2"]
    assert errors["smallvgg3"] == ("CellTimeoutError: a cell ran longer than the cell timeout of 20 s "
                                   "(cell_timeout in the grid file).")
    for model in ("mnasnet0_5", "shufflenet_v2_x0_5", "smallvgg2", "smallvgg3"):   # each failure named in the summary too
        assert f"FAILED {train.run_id[model]}: {errors[model]}" in out

    # every failed notebook is kept as <run-id>.failed.ipynb, and nothing is left half-written
    for model in ("mnasnet0_5", "shufflenet_v2_x0_5", "smallvgg2", "smallvgg3"):
        rid = train.run_id[model]
        assert (book / "train" / f"{rid}.failed.ipynb").is_file() and not (book / "train" / f"{rid}.ipynb").exists()
    assert not list(book.rglob("*.running.ipynb"))
    kept = nbformat.read(book / "train" / f"{train.run_id['smallvgg2']}.failed.ipynb", as_version=4)
    assert "test" not in glued_record(book / "train" / f"{train.run_id['smallvgg2']}.failed.ipynb")
    assert kept.metadata["studylib"]["record"]["status"] == "failed"

    # the later stage ran on the one good run: deploy of the best (the only ok) train run
    [deploy] = runs[runs.stage == "deploy"].itertuples()
    assert deploy.status == "ok", deploy.error
    [record] = load_records("failures", stage="deploy")
    record = DeployRecord.model_validate(record)
    assert record.train_run_id == train.run_id["smallvgg1"] and record.served_agreement == 1.0
