"""The grid runner: grid files validated before any work, cells expanded, the smoke grid end to end
(two Dask workers, a failure recorded, a rerun that skips what is done). An interrupted grid: test_resume.py;
kernels that die and notebooks without a record: test_failures.py."""
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from studylib.errors import ParameterError
from studylib.record import RECORD_TYPES, TrainRecord
from studylib.study import expand, manifest, runner, schema
from studylib.study.execute import execute_cell as execute, valid_record

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def write_grid(tmp_path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


# ---- grid files ------------------------------------------------------------------------------

def test_shipped_grids_validate():
    quick, cells = expand.load_grid(ROOT / "params" / "quick.yaml")
    train = cells["train"]
    models = {"mnasnet0_5", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
              "smallvgg3_bn"}
    assert {c.params["model"] for c in train} == models
    assert all(c.params["dataset"] == "clothing10" and c.params["image_size"] == 64 for c in train)
    seeds = {m: sorted(c.params["seed"] for c in train if c.params["model"] == m) for m in models}
    assert seeds == {m: [0, 1, 2] for m in models}      # three seeds each: the pages rank with intervals
    assert all(c.params["amp"] == c.params["channels_last"] == "auto" for c in train)
    lrs = {c.params["model"]: c.params["lr"] for c in train}
    assert lrs.pop("mobilenet_v3_large") == 3e-3 and set(lrs.values()) == {1e-2}   # the override applies to one model
    assert [c.params["dataset"] for c in cells["data_prep"]] == ["clothing10"]
    assert cells["data_prep"][0].params["image_sizes"] == [64]

    full, cells = expand.load_grid(ROOT / "params" / "full.yaml")
    train = cells["train"]
    assert {c.params["dataset"] for c in train} == {"clothing10", "stanford_dogs", "food101", "cifar10"}
    study002 = [c for c in train if c.params["model"] == "mobilenet_v3_large"]
    assert all(c.params["pretrained"] and c.params["image_size"] == 224 and c.params["optimizer"] == "adam"
               and c.params["lr"] == 1e-4 and c.params["batch_size"] == 32 and c.params["epochs"] == 10
               and not c.params["augment"] for c in study002)
    assert {c.params["model"] for c in train} >= {"resnet50", "resnet101", "smallvgg1", "smallvgg3_bn_dropout",
                                                  "tiny_vit_5m_224"}
    l2 = sorted(c.params["weight_decay"] for c in train if c.params["model"] == "smallvgg3")
    assert l2 == [0.0, 5e-4]

    smoke, cells = expand.load_grid(ROOT / "params" / "smoke.yaml")
    assert len(cells["train"]) == 3


def test_cartesian_product_overrides_and_run_ids(tmp_path):
    path = write_grid(tmp_path, """
study: t
stages: [train]
train:
  datasets: [clothing10]
  models: [smallvgg1, smallvgg2]
  seeds: [0]
  lr: [1.0e-3, 3.0e-3]
  image_size: 32
  targets: [0.5, 0.9]          # a list-typed parameter: a value, not a sweep
  overrides:
    smallvgg2: {seeds: [0, 1], epochs: 3}
""")
    _, cells = expand.load_grid(path)
    train = cells["train"]
    assert len(train) == 2 * (1 + 2)
    assert all(c.params["targets"] == [0.5, 0.9] for c in train)
    assert {c.params["epochs"] for c in train if c.params["model"] == "smallvgg2"} == {3}
    from studylib.params import TrainParams
    default_epochs = TrainParams.model_fields["epochs"].default
    assert {c.params["epochs"] for c in train if c.params["model"] == "smallvgg1"} == {default_epochs} != {3}
    assert len({c.run_id for c in train}) == len(train)
    c = train[0]
    assert c.run_id.startswith("train-clothing10-smallvgg1-s0-") and c.notebook == f"train/{c.run_id}.ipynb"
    assert "lr 0.001" in c.title and "targets" not in c.title     # a list-typed value is no sweep: not in the title
    # the run id is the one train_run computes from the full, validated parameters
    from studylib.record import run_id
    assert c.run_id == run_id("train", TrainParams.from_mapping(c.params).run_params())


BAD = [
    ("study: t\nstages: [train]\ntrain: {models: [resnet9000]}",
     "parameter 'train.models' is 'resnet9000'"),
    ("study: t\nstages: [train]\ntrain: {models: [smallvgg1], overrides: {smallvgg1: {lr: -1}}}",
     "parameter 'train.overrides.smallvgg1.lr' is -1.0, but it must be a positive number."),
    ("study: t\nstages: [train]\ntrain: {models: [smallvgg1], lrr: 0.1}",
     "parameter 'train.lrr' is 0.1, but it must be one of the train parameters"),
    ("study: t\nstages: [train]\ntrain: [{models: [smallvgg1]}, {models: [smallvgg1], epochs: 0}]",
     "parameter 'train[1].epochs' is 0, but it must be a positive integer."),
    ("study: t\nstages: [train]\ntrain: {models: [smallvgg1], overrides: {vit*: {epochs: 1}}}",
     "parameter 'train.overrides.vit*' is 'vit*', but it must be a model of this block"),
    ("study: t\nstages: [training]\ntrain: {models: [smallvgg1]}",
     "parameter 'stages[0]' is 'training', but it must be 'data_prep', 'train', 'tune', 'deploy' or 'cost'."),
    ("study: t\nstages: [train]\nmodels: [smallvgg1]",
     "parameter 'models' is ['smallvgg1'], but it must be left out"),
    ("stages: [train]\ntrain: {models: [smallvgg1]}",
     "parameter 'study' is None, but it must be given"),
    ("study: a study\nstages: [train]\ntrain: {models: [smallvgg1]}",
     "parameter 'study' is 'a study', but it must be a name matching"),
    ("study: t\nstages: [train]\ntrain: {datasets: [imagenet], models: [smallvgg1]}",
     "parameter 'train.datasets' is 'imagenet', but it must be one of"),
    ("study: t\nstages: [train]\ntrain: {models: [smallvgg1], root: no/such/folder}",
     "parameter 'train.root' is 'no/such/folder', but it must be an existing folder"),
    ("study: t\nstages: [tune]\ntune: {models: [smallvgg1], n_trials: 0}",
     "parameter 'tune.n_trials' is 0, but it must be greater than 0."),
    ("study: t\nstages: [train]\ntrain: {models: [smallvgg1]\n",
     "but it must be valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split("'")[1] if "'" in m else "yaml" for _, m in BAD])
def test_bad_grid_is_one_sentence_before_any_work(tmp_path, text, message, monkeypatch):
    outputs = {name: tmp_path / name.lower() for name in ("STUDYLIB_RESULTS", "STUDYLIB_BOOK", "STUDYLIB_RUNS", "STUDYLIB_CACHE")}
    for name, folder in outputs.items():
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    path = write_grid(tmp_path, text)
    with pytest.raises(ParameterError) as info:
        expand.load_grid(path)
    assert message in str(info.value)
    assert str(info.value).count("\n") == 0
    with pytest.raises(ParameterError) as again:    # the runner: the same sentence, before its cluster or manifest
        runner.run_grid(path, report=False)
    assert str(again.value) == str(info.value)
    written = {name: sorted(p.name for p in folder.rglob("*")) for name, folder in outputs.items()}
    assert written == {name: [] for name in outputs}, "nothing is written while validating"


def test_stage_section_keys_must_be_notebook_parameters(tmp_path, monkeypatch):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('study = "quick"\nprices = ""')])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nbformat.write(nb, nbs / "cost.ipynb")
    monkeypatch.setattr(manifest, "notebooks_dir", lambda: nbs)
    expand.load_grid(write_grid(tmp_path, "study: t\nstages: [cost]\ncost: {prices: params/prices.yaml}"))
    with pytest.raises(ParameterError, match=r"parameter 'cost.price' is 'x', but it must be a parameter of notebooks/cost.ipynb \(prices, study\)."):
        expand.load_grid(write_grid(tmp_path, "study: t\nstages: [cost]\ncost: {price: x}"))


def test_cli_rejects_a_bad_grid_with_one_line(tmp_path):
    path = write_grid(tmp_path, "study: t\nstages: [train]\ntrain: {models: [smallvgg1], lr: -2}")
    out = subprocess.run([str(VENV_BIN / "studylib"), "grid", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: parameter 'train.lr' is -2.0, but it must be a positive number."


def test_deploy_best_is_chosen_on_validation_never_test(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path))
    (tmp_path / "t").mkdir()
    pd.DataFrame([
        {"run_id": "a", "stage": "train", "status": "ok", "dataset": "d1", "model": "m1", "seed": 0, "val_top1": 0.6, "test_top1": 0.9, "train_seconds": 1.0},
        {"run_id": "b", "stage": "train", "status": "ok", "dataset": "d1", "model": "m2", "seed": 0, "val_top1": 0.7, "test_top1": 0.5, "train_seconds": 1.0},
        {"run_id": "c", "stage": "train", "status": "failed", "dataset": "d1", "model": "m3", "seed": 0, "val_top1": None, "test_top1": None, "train_seconds": None},
        {"run_id": "d", "stage": "train", "status": "ok", "dataset": "d2", "model": "m1", "seed": 0, "val_top1": 0.3, "test_top1": 0.3, "train_seconds": 1.0},
    ]).to_parquet(tmp_path / "t" / "runs.parquet")
    g = expand.Grid.model_validate({"study": "t", "stages": ["deploy"], "deploy": {"run": "best"}})
    cells = expand.expand_deploy(g, "t")
    assert [c.params["run"] for c in cells] == ["b", "d"]
    # the cell's id is readable and is the id its record will carry (the notebook's deploy_run_id)
    assert cells[0].run_id.startswith("deploy-d1-m2-") and cells[0].params["deploy_run_id"] == cells[0].run_id
    g = expand.Grid.model_validate({"study": "t", "stages": ["deploy"], "deploy": {"run": ["a"]}})
    [cell] = expand.expand_deploy(g, "t")
    assert cell.params == {"run": "a", "serving_runs": ["b", "a"], "deploy_run_id": cell.run_id} and cell.run_id.startswith("deploy-d1-m1-")


def test_cost_page_changes_when_the_study_gains_a_run():
    g = expand.Grid.model_validate({"study": "t", "stages": ["cost"]})
    one = expand.expand_cost(g, "t", ["r1", "r2"])[0]
    assert one.params == {"study": "t", "cost_run_id": one.run_id}
    assert expand.expand_cost(g, "t", ["r2", "r1"])[0].run_id == one.run_id
    assert expand.expand_cost(g, "t", ["r1", "r2", "r3"])[0].run_id != one.run_id


def test_each_stage_validates_against_its_record_model():
    assert [RECORD_TYPES[s].__name__ for s in manifest.STAGES] == [
        "DataPrepRecord", "TrainRecord", "TuneRecord", "DeployRecord", "CostRecord"]


def test_a_notebook_without_a_valid_record_is_not_done(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert valid_record(path, "train") is None            # ran, but glued nothing
    path.write_text(path.read_text()[:40])
    assert valid_record(path, "train") is None            # half-written
    assert valid_record(tmp_path / "missing.ipynb", "train") is None


# ---- a cell's execution timeout (issue 14 item 10) -------------------------------------------------

def test_cell_timeout_per_stage_from_the_grid_file(tmp_path):
    grid, _ = expand.load_grid(write_grid(tmp_path, "study: t\nstages: [cost]\n"))
    assert {s: grid.timeout(s) for s in manifest.STAGES} == schema.CELL_TIMEOUT   # the documented defaults
    assert all(0 < v < 24 * 3600 for v in schema.CELL_TIMEOUT.values())
    grid, _ = expand.load_grid(write_grid(tmp_path, "study: t\nstages: [cost]\ncell_timeout: {deploy: 600, cost: 90.5}\n"))
    assert grid.timeout("deploy") == 600 and grid.timeout("cost") == 90.5
    assert grid.timeout("train") == schema.CELL_TIMEOUT["train"]
    for text, message in [("{deploy: 0}", "parameter 'cell_timeout.deploy' is 0, but it must be greater than 0."),
                          ("{deplyo: 60}", "parameter 'cell_timeout.deplyo' is 'deplyo', but it must be 'data_prep', "
                                           "'train', 'tune', 'deploy' or 'cost'.")]:
        with pytest.raises(ParameterError) as info:
            expand.load_grid(write_grid(tmp_path, f"study: t\nstages: [cost]\ncell_timeout: {text}\n"))
        assert str(info.value) == message


class FakeClient:
    """Records what run_stage submits, and runs nothing."""
    def __init__(self):
        self.submitted = []

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(args)
        raise StopIteration   # enough: the arguments are what the test reads


def test_run_stage_hands_each_cell_its_stage_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_BOOK", str(tmp_path / "book"))
    client = FakeClient()
    cell = manifest.Cell("deploy", "deploy-x", {"run": "r"})
    with pytest.raises(StopIteration):
        runner.run_stage(client, "deploy", [cell], False, None, print, {"skipped": 0}, timeout=12.5)
    assert client.submitted[0][-1] == 12.5


def test_a_cell_past_its_timeout_fails_and_leaves_no_kernel(tmp_path):
    psutil = pytest.importorskip("psutil")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("seconds = 1"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    source = tmp_path / "sleep.ipynb"
    nbformat.write(nb, source)
    cell = {"stage": "train", "run_id": "sleepy", "params": {"seconds": 600}, "notebook": "train/sleepy.ipynb"}
    out = tmp_path / "book" / "train" / "sleepy.ipynb"
    res = execute(cell, str(out), str(tmp_path), str(source), timeout=3)
    assert res["status"] == "failed" and res["wall_seconds"] < 120, res
    assert res["error"] == "CellTimeoutError: a cell ran longer than the cell timeout of 3 s (cell_timeout in the grid file).", res
    assert (tmp_path / "book" / "train" / "sleepy.failed.ipynb").is_file() and not out.exists()
    time.sleep(1)
    kernels = [p for p in psutil.Process().children(recursive=True) if "ipykernel" in " ".join(p.cmdline())]
    assert kernels == [], "the timed-out cell's kernel is still running"


# ---- the smoke grid, end to end ------------------------------------------------------------------

def _interval(row):
    return datetime.fromisoformat(row.started_at), datetime.fromisoformat(row.finished_at)


@pytest.mark.slow
def test_smoke_grid_end_to_end(smoke_study, monkeypatch):
    s = smoke_study
    print("seconds:", s.seconds)
    first = s.first.stdout + s.first.stderr
    assert s.first.returncode == 1, first
    assert "study smoke: 2 ran ok, 0 skipped (already done), 1 failed" in s.first.stdout, first
    assert "FAILED train-imagefolder-smallvgg1-s0-" in s.first.stdout

    monkeypatch.setenv("STUDYLIB_RESULTS", str(s.base / "results"))
    from studylib.study.collect import load_epochs, load_records, load_runs
    runs = load_runs("smoke")
    assert len(runs) == 3 and set(runs.stage) == {"train"}
    ok, failed = runs[runs.status == "ok"], runs[runs.status == "failed"]
    assert sorted(ok.model) == ["shufflenet_v2_x0_5", "smallvgg1"] and set(ok.dataset) == {"clothing10"}
    assert len(failed) == 1 and failed.iloc[0].dataset == "imagefolder"
    assert failed.iloc[0].error.startswith("DatasetUnavailable: dataset 'imagefolder' root 'tests/data/no_images'")
    assert (ok.images_per_second > 0).all() and (ok.param_count > 0).all()
    assert (runs.notebook_seconds > 0).all() and (runs.startup_seconds > 0).all()
    csv = pd.read_csv(s.results / "runs.csv")
    assert list(csv.run_id) == list(runs.run_id) and list(csv.status) == list(runs.status)
    assert np.allclose(csv.test_top1.fillna(-1), runs.test_top1.fillna(-1))
    assert len(load_epochs("smoke")) == 2

    records = load_records("smoke", stage="train")
    assert len(records) == 3
    good = [r for r in records if r["status"] == "ok"]
    assert len(good) == 2
    table = ok.set_index("run_id")
    for r in good:
        TrainRecord.model_validate(r)
        assert r["notebook"] == f"train/{r['run_id']}.ipynb"   # the record's id is the cell's id
        # test top-1 is the confusion matrix's diagonal over every test image, and the table carries the record's
        cm, test = np.array(r["test"]["confusion_matrix"]), r["test"]
        assert cm.sum() == r["data"]["sizes"]["test"] == len(test["predictions"]) > 0
        assert test["top1"] == pytest.approx(np.trace(cm) / cm.sum())
        assert test["top1"] == pytest.approx(np.mean(np.array(test["predictions"]) == np.array(test["labels"])))
        row = table.loc[r["run_id"]]
        assert (row.model, row.dataset, row.seed) == (r["model"], r["dataset"], r["params"]["seed"])
        assert row.test_top1 == test["top1"] and row.test_top5 == test["top5"]
        assert row.val_top1 == r["history"][-1]["val_top1"] and row.epochs_run == len(r["history"]) == 1
        assert row.train_seconds == r["train_seconds"] and row.param_count == r["param_count"]
        assert row.images_per_second == pytest.approx(np.median([h["images_per_second"] for h in r["history"]]))
    bad = [r for r in records if r["status"] == "failed"][0]
    assert bad["params"]["root"] == "tests/data/no_images" and bad["notebook"].endswith(".failed.ipynb")

    # the failed notebook is kept, partial, with its traceback; nothing is left half-written
    nb = nbformat.read(s.book / bad["notebook"], as_version=4)
    tracebacks = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert tracebacks and tracebacks[0]["ename"] == "DatasetUnavailable"
    assert not list(s.book.rglob("*.running.ipynb"))
    manifest = json.loads((s.results / "cells.json").read_text())
    assert len(manifest["cells"]) == 3

    # both workers took cells over the run (whether their cells overlapped in time depends on the machine's load)
    assert runs.worker.nunique() == 2, runs[["run_id", "worker", "started_at", "finished_at"]]
    assert all(_interval(r)[0] <= _interval(r)[1] for r in runs.itertuples())

    # the rerun skips both finished cells (their notebooks untouched) and retries the failed one
    second = s.second.stdout + s.second.stderr
    assert s.second.returncode == 1, second
    for r in good:
        assert f"skip   {r['run_id']}" in second
    assert "study smoke: 0 ran ok, 2 skipped (already done), 1 failed" in s.second.stdout
    after = {p.name: p.stat().st_mtime_ns for p in (s.book / "train").glob("*.ipynb") if ".failed" not in p.name}
    assert after == {k: v for k, v in s.mtimes.items() if ".failed" not in k} and len(after) == 2

    # the book: built, with the results table and a page per run
    assert s.build.returncode == 0, s.build.stdout[-3000:] + s.build.stderr[-3000:]
    toc = yaml.safe_load((s.book / "_toc.yml").read_text())
    pages = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    assert "results/results-smoke" in pages and "results/methods-smoke" in pages and "reference_studies" in pages
    assert sum(p.startswith("train/") and not p.endswith(".failed") for p in pages) == 2
    html = (s.html / "results" / "results-smoke.html").read_text()
    assert "Results on clothing10 (test split)" in html and "<table" in html
    for heading in ("params (M)", "size (MB)", "GMACs", "test top-1", "balanced accuracy", "train minutes", "images/s"):
        assert heading in html
    for model in ("smallvgg1", "shufflenet_v2_x0_5"):
        assert model in html
    for r in good:
        assert (s.html / "train" / f"{r['run_id']}.html").exists()
    methods = (s.html / "results" / "methods-smoke.html").read_text()
    # the smoke grid has no bench rows of its settings: the comparison says how to get them
    assert "Did the study’s runs train that fast?" in methods   # Sphinx curls the apostrophe
    assert "No train run of this study has a bench row of its own" in methods
    # numbers in the text are glued: the count of training runs is the table's, not typed
    assert 'study <span class="pasted-text">smoke</span> measured: <span class="pasted-text">2</span> training runs' in html


def test_a_grid_of_some_stages_keeps_the_other_stages_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path))
    manifest.Manifest("t", "g.yaml", [manifest.Cell("train", "train-a", {"model": "m"}), manifest.Cell("deploy", "deploy-b", {"run": "train-a"})]).write()
    g = expand.Grid.model_validate({"study": "t", "stages": ["deploy", "cost"]})
    assert [c.run_id for c in manifest.kept_cells(g)] == ["train-a"]
    assert manifest.kept_cells(expand.Grid.model_validate({"study": "other", "stages": ["train"]})) == []


def test_local_gpu_workers_offer_the_gpu_resource():
    """With --gpus N the local workers advertise GPU=1 (cells then ask for it); without, none do."""
    for gpus, expected in ((1, True), (0, False)):
        client, cluster = runner.start_client(workers=1, scheduler=None, gpus=gpus)
        try:
            assert runner.cluster_has_gpus(client) is expected
        finally:
            client.close()
            cluster.close()


def _kernel_settings() -> tuple:
    """What a notebook kernel started on this worker computes with: a new process inherits the worker's env."""
    code = "import os, torch; print(torch.get_num_threads(), os.environ.get('MALLOC_TRIM_THRESHOLD_'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, trim = out.stdout.split()
    return int(threads), trim


@pytest.mark.parametrize("workers", [1, 2])
def test_local_workers_notebooks_compute_as_if_run_by_hand(workers, monkeypatch):
    """Dask's nanny sets OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_=65536 in its workers (both made a
    one-worker grid train ~3x slower); the grid's notebooks get cores // workers threads and glibc's default."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    client, cluster = runner.start_client(workers=workers, scheduler=None, gpus=0)
    try:
        settings = client.run(_kernel_settings)
    finally:
        client.close()
        cluster.close()
    assert list(settings.values()) == [(max(1, os.cpu_count() // workers), "None")] * workers


def _profiles(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def test_local_workers_do_not_profile_their_threads():
    """Dask's workers sample their threads' stacks every 10 ms; a grid's worker thread only waits on papermill,
    so the local workers run without that profiler (it took about 2.5% of a core from the training kernel)."""
    client, cluster = runner.start_client(workers=1, scheduler=None, gpus=0)
    try:
        assert list(client.run(_profiles).values()) == [False]
    finally:
        client.close()
        cluster.close()
