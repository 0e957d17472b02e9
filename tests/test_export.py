"""Exports of a trained run: torch.export, ONNX and int8 ONNX, each checked against PyTorch on the test split;
every model's serving numbers side by side (serve/benchmark.py) and the grid cell that lists their runs."""
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from deploy_helpers import exported_run, trained_run
from studylib.data.loader import TensorBatches
from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.record import ModelServing, run_id
from studylib.serve import benchmark, export
from studylib.serve.export import run_data
from studylib.stages.deploy import DeployParams
from studylib.study import expand
from studylib.train.run import train_run
from studylib.views.deploy import fixed, serving_table


@pytest.fixture(scope="module")
def exported(study_env):
    return exported_run()


def test_exports_agree_with_pytorch(exported):
    s = exported.summary
    assert s["test_images"] == 18
    for fmt in ("torch_export", "onnx"):
        assert s["checks"][fmt]["max_abs_diff"] < 1e-4, fmt
        assert s["checks"][fmt]["top1_agreement"] == 1.0, fmt
        assert s["checks"][fmt]["top1"] == s["checks"]["pytorch"]["top1"], fmt
    q = s["checks"]["onnx_int8"]
    assert 0 < q["max_abs_diff"] < 1.0            # quantized: close, but not the same numbers
    # the int8 file's own predictions on the test split, computed here: its top-1 and its agreement with fp32 ONNX
    record = json.loads((exported.files["checkpoint"].parent / "record.json").read_text())
    test = run_data(record).splits["test"]
    x = export.normalise(test.images, record["data"]["mean"], record["data"]["std"]).numpy()
    int8_top1 = export.onnx_session(exported.files["onnx_int8"], threads=1).run(None, {export.INPUT: x})[0].argmax(1)
    np.testing.assert_array_equal(exported.offline_top1["onnx_int8"], int8_top1)
    assert q["top1"] == pytest.approx(float((int8_top1 == test.labels.numpy()).mean()))
    assert q["top1_agreement_with_onnx"] == pytest.approx(float((int8_top1 == exported.offline_top1["onnx"]).mean()))
    assert s["calibration_images"] == 32
    # int8 weights: the file shrinks (smallvgg1's weights dominate its graph)
    assert s["sizes_mb"]["onnx_int8"] < 0.6 * s["sizes_mb"]["onnx"]
    for fmt, path in s["files"].items():
        assert os.path.getsize(path) / 1e6 == pytest.approx(s["sizes_mb"][fmt])
    # offline top-1 per format, in the order of the test split
    assert len(exported.names) == len(exported.labels) == 18
    np.testing.assert_array_equal(exported.offline_top1["onnx"], exported.offline_top1["pytorch"])


def test_exported_files_are_complete_and_loadable(exported):
    folder = exported.files["checkpoint"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["model.int8.onnx", "model.onnx", "model.pt", "model.pt2",
                                                        "record.json"]  # no temporary files left behind
    model = onnx.load(str(exported.files["onnx"]))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [export.INPUT]
    assert [o.name for o in model.graph.output] == [export.OUTPUT]
    sess = export.onnx_session(exported.files["onnx_int8"], threads=1)
    for batch in (1, 5):  # dynamic batch
        assert sess.run(None, {export.INPUT: np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 3)
    program = torch.export.load(str(exported.files["torch_export"])).module()
    assert program(torch.zeros(3, 3, 32, 32)).shape == (3, 3)


def test_normalise_is_the_evaluation_path(exported):
    rid, folder = trained_run()
    record = json.loads((folder / "record.json").read_text())
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    x, _ = next(iter(TensorBatches(images, torch.zeros(7, dtype=torch.int64), 7,
                                   mean=record["data"]["mean"], std=record["data"]["std"])))
    assert torch.equal(export.normalise(images, record["data"]["mean"], record["data"]["std"]), x)
    served = export.Normaliser(record["data"]["mean"], record["data"]["std"])(images.numpy())  # the server's numpy path
    assert served.dtype == np.float32 and np.array_equal(served, x.numpy())


def test_resolve_run(exported, tmp_path):
    rid, folder = trained_run()
    assert export.resolve_run(rid)[0] == folder.resolve()
    assert export.resolve_run(str(folder))[1]["run_id"] == rid
    for bad in ("", "no-such-run", str(tmp_path)):
        with pytest.raises(ParameterError, match="parameter 'run'"):
            export.resolve_run(bad)
    with pytest.raises(ParameterError, match="calibration_images"):
        export.export_run(rid, calibration_images=0)


# ---------------------------------------------------------------- every model's serving numbers (serve/benchmark.py)

QUICK = benchmark.SpeedSettings(latency_calls=3, batch_size=8, throughput_calls=1, warmup=1, threads=1)


@pytest.fixture(scope="module")
def serving(exported):
    """Two models' rows: the served run (its export reused) and a second model's run, exported here; the
    served run given twice is measured once."""
    first, second = trained_run()[0], trained_run("smallvgg2")[0]
    return benchmark.measure_runs([first, second, first], QUICK, calibration_images=16, exported={first: exported})


def independent_top1(onnx_file, record) -> float:
    """Test top-1 of an ONNX file by a plain ONNX Runtime session over the evaluation's own test batches."""
    import onnxruntime as ort
    test = run_data(record).splits["test"]
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    hits = 0
    for x, y in TensorBatches(test.images, test.labels, 5, mean=record["data"]["mean"], std=record["data"]["std"]):
        hits += int((session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].argmax(1) == y.numpy()).sum())
    return hits / len(test.labels)


def test_every_model_gets_one_row_of_serving_numbers(serving):
    assert [row["model"] for row in serving] == ["smallvgg1", "smallvgg2"]     # one row per model, in the given order
    assert [row["run_id"] for row in serving] == [trained_run()[0], trained_run("smallvgg2")[0]]
    for row in serving:
        folder = Path(export.resolve_run(row["run_id"])[0])
        record = json.loads((folder / "record.json").read_text())
        assert ModelServing.model_validate(row).batch_size == 8
        assert row["latency_ms"] > 0 and row["throughput"] > 0
        # the sizes are the files in the run's folder (where `studylib serve` finds them), int8 the smaller
        assert row["fp32_mb"] == os.path.getsize(folder / "model.onnx") / 1e6
        assert row["int8_mb"] == os.path.getsize(folder / "model.int8.onnx") / 1e6
        assert row["int8_mb"] < row["fp32_mb"]
        # test top-1 equals a plain ONNX Runtime pass over the test tensors, for both files
        assert row["fp32_top1"] == independent_top1(folder / "model.onnx", record)
        assert row["int8_top1"] == independent_top1(folder / "model.int8.onnx", record)


def test_each_number_comes_from_its_own_file(exported, monkeypatch):
    """fp32 and int8 sizes and top-1 from their own export checks; the timed file is the precision's."""
    record = json.loads((trained_run()[1] / "record.json").read_text())
    made = dataclasses.replace(exported, summary={**exported.summary, "sizes_mb": {"onnx": 2.0, "onnx_int8": 1.0},
                                                  "checks": {"onnx": {"top1": 0.75}, "onnx_int8": {"top1": 0.5}}})
    timed = []
    monkeypatch.setattr(benchmark, "onnx_session", lambda path, *a: timed.append(Path(path).name) or export.onnx_session(path, 1))
    for precision in ("fp32", "int8"):
        row = benchmark.serving_numbers(record, made, dataclasses.replace(QUICK, precision=precision))
        assert (row["fp32_mb"], row["int8_mb"], row["fp32_top1"], row["int8_top1"]) == (2.0, 1.0, 0.75, 0.5)
    assert timed == ["model.onnx", "model.int8.onnx"]


def test_serving_table_is_what_a_reader_sees(serving):
    t = serving_table(serving)
    assert list(t.index) == ["smallvgg1", "smallvgg2"]
    assert list(t.columns) == ["batch-1 latency (ms)", "throughput (images/s)", "fp32 size (MB)", "int8 size (MB)",
                               "fp32 test top-1 (%)", "int8 test top-1 (%)"]
    for (_, shown), row in zip(t.iterrows(), serving):
        assert shown["fp32 test top-1 (%)"] == f"{100 * row['fp32_top1']:.1f}"
        assert shown["int8 test top-1 (%)"] == f"{100 * row['int8_top1']:.1f}"
        assert shown["throughput (images/s)"] == f"{row['throughput']:,.0f}"
        size = shown["int8 size (MB)"]       # rounded to the column's decimals: off by at most half a last digit
        decimals = len(size.partition(".")[2])
        assert abs(float(size) - row["int8_mb"]) <= 0.5 * 10 ** -decimals + 1e-12
    assert fixed([6.0, 64.0]) == ["6", "64"] and fixed([0.5123, 12.34]) == ["0.5", "12.3"]
    assert fixed([123.4, 1.5]) == ["123", "2"] and fixed([None, 2.5]) == ["—", "2.50"]


def test_speed_counts_calls_and_images():
    """Latency is the median single call, throughput images per second of the timed batches."""
    calls = []

    def predict(x):
        calls.append(len(x))
        time.sleep(0.002 * len(x))

    one, batch = np.zeros((1, 3, 4, 4), np.float32), np.zeros((32, 3, 4, 4), np.float32)
    settings = benchmark.SpeedSettings(latency_calls=5, batch_size=32, throughput_calls=2, warmup=2)
    out = benchmark.speed(predict, one, batch, settings)
    assert calls == [1, 1] + [1] * 5 + [32] + [32, 32]  # warm-up, timed singles, one uncounted batch, timed batches
    assert 2 <= out["latency_ms"] < 20                  # 2 ms of sleep per image (a busy machine adds, never removes)
    assert 150 < out["throughput"] <= 500               # 32 images per 64 ms at best; batches per second would be ~15
    with pytest.raises(ParameterError, match="parameter 'latency_calls' is 0"):
        benchmark.SpeedSettings(latency_calls=0)
    with pytest.raises(ParameterError, match="parameter 'precision' is 'fp16'"):
        benchmark.SpeedSettings(precision="fp16")


def test_deploy_params_name_the_runs_timed_side_by_side(exported, tiny_imagefolder):
    first, second = trained_run()[0], trained_run("smallvgg2")[0]
    p = DeployParams.from_mapping({"run": first, "serving_runs": [second]})
    assert p.measured_runs() == [first, second]                       # the served run is always timed
    assert DeployParams.from_mapping({"run": first, "serving_runs": [second, first, second]}).measured_runs() == [second, first]
    assert DeployParams.from_mapping({"run": first}).measured_runs() == [first]
    assert p.speed_settings() == benchmark.SpeedSettings(latency_calls=20, batch_size=64, throughput_calls=3, warmup=5)
    with pytest.raises(ParameterError, match="parameter 'serving_runs' is 'no-such-run'"):
        DeployParams.from_mapping({"run": first, "serving_runs": [second, "no-such-run"]})
    with pytest.raises(ParameterError, match="parameter 'latency_calls' is 0"):
        DeployParams.from_mapping({"run": first, "latency_calls": 0})
    other = TrainParams(dataset="imagefolder", root=str(tiny_imagefolder), model="smallvgg1", epochs=1, image_size=32,
                        batch_size=16, device="cpu", amp=False)
    train_run(other, progress=False)
    with pytest.raises(ParameterError, match="parameter 'serving_runs' is .*a list of train runs on run's data"):
        DeployParams.from_mapping({"run": first, "serving_runs": [run_id("train", other.run_params())]})


def test_grid_deploy_cell_times_each_models_best_val_run(tmp_path, monkeypatch):
    """The deploy cell of a dataset passes one run per model, each model's best on validation (never test),
    the best model first; an explicit run takes its model's place."""
    monkeypatch.setenv("STUDYLIB_RESULTS", str(tmp_path))
    (tmp_path / "t").mkdir()
    rows = [("a", "d1", "m1", 0, 0.60, 0.90), ("a2", "d1", "m1", 1, 0.65, 0.10), ("b", "d1", "m2", 0, 0.70, 0.50),
            ("c", "d1", "m3", 0, 0.40, 0.95), ("e", "d2", "m1", 0, 0.30, 0.30)]
    pd.DataFrame([{"run_id": r, "stage": "train", "status": "ok", "dataset": d, "model": m, "seed": s, "val_top1": v,
                   "test_top1": t, "train_seconds": 1.0} for r, d, m, s, v, t in rows]
                 + [{"run_id": "f", "stage": "train", "status": "failed", "dataset": "d1", "model": "m4", "seed": 0,
                     "val_top1": None, "test_top1": None, "train_seconds": None}]).to_parquet(tmp_path / "t" / "runs.parquet")
    g = expand.Grid.model_validate({"study": "t", "stages": ["deploy"], "deploy": {"run": "best"}})
    cells = expand.expand_deploy(g, "t")
    assert [(c.params["run"], c.params["serving_runs"]) for c in cells] == [("b", ["b", "a2", "c"]), ("e", ["e"])]
    g = expand.Grid.model_validate({"study": "t", "stages": ["deploy"], "deploy": {"run": ["a"]}})
    [cell] = expand.expand_deploy(g, "t")
    assert cell.params["serving_runs"] == ["b", "a", "c"]
