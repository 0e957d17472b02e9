"""`studylib bench` writes a timm-style CSV row; its table and the runner-overhead report read back.

No timing is asserted: the numbers are measured, not tested (the machine is shared).
"""
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from studylib import bench
from studylib.study import overhead
from studylib.train import speed
from studylib.views import bench as bench_views
from studylib.cli import main

TINY = ["--model", "shufflenet_v2_x0_5", "--image-size", "32", "--batch-size", "32", "--train-limit", "80",
        "--rounds", "2", "--warmup", "1", "--latency-calls", "3", "--throughput-calls", "2", "--infer-batch-size", "8",
        "--threads", "1"]  # one thread: no OpenMP barriers waiting on cores other helpers' jobs hold


def test_bench_writes_a_row_with_every_column(study_env, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", *TINY, "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(a) bare step" in printed and "(b) study loop" in printed and "loop / fastest bare" in printed
    files = list(out.glob("*.csv"))
    assert [f.name for f in files] == [f"benchmark-train-{speed.torch_tag()}-cpu.csv"]
    table = pd.read_csv(files[0])
    assert list(table.columns) == bench.COLUMNS and len(table) == 1
    row = table.iloc[0]
    assert row["model"] == "shufflenet_v2_x0_5" and row["image_size"] == 32 and row["batch_size"] == 32
    # (a) and (b) passed over the same images: 80 training images in batches of 32 and 32 (the last 16 dropped)
    assert row["images"] == 64 and row["rounds"] == 2
    # warm-up: in each of the four settings one full batch, then one step of the loop
    assert row["warmup_steps"] == 4 * 1 + 1
    # the bare step in all four settings; the fastest of them is the ceiling the loop is set against
    four = {name: row[speed.bare_column(*name.split("-"))] for name in ("fp32-nchw", "fp32-nhwc", "bf16-nchw", "bf16-nhwc")}
    assert all(v > 0 for v in four.values()) and row["fastest"] == max(four, key=four.get)
    assert row["ceiling_samples_per_sec"] == max(four.values())
    # no bench row yet and no setting forced: the loop ran in the CPU's default setting
    assert (row["precision"], row["layout"]) == speed.DEFAULT["cpu"] or "measuring again" in printed
    assert row["bare_samples_per_sec"] == four[f"{row['precision']}-{row['layout']}"]
    for col in ("loop_samples_per_sec", "loop_ratio", "setting_ratio", "infer_latency_ms", "infer_samples_per_sec"):
        assert row[col] > 0, col
    # (how close the loop runs to the ceiling is a measurement: the bench reports it, no test asserts it)
    assert 0 <= row["data_wait_share"] < 1 and row["infer_batch_size"] == 8
    assert pd.isna(row["compile_seconds"]) and not row["compile"]
    assert printed.count("-> ") == 1

    # a second run, the loop forced into bf16 NCHW, appends; the book's table keeps the newest row per setting
    assert main(["bench", *TINY, "--amp", "--no-channels-last", "--no-infer", "--interleave", "pass",
                 "--out-dir", str(out)]) == 0
    second = pd.read_csv(files[0])
    assert list(second["interleave"]) == ["step", "pass"]  # auto on a CPU: step
    assert (second.iloc[1]["precision"], second.iloc[1]["layout"], second.iloc[1]["setting_source"]) == (
        "bf16", "nchw", "parameters")
    forced = second.iloc[1]
    assert forced["bare_samples_per_sec"] == forced["bare_bf16_nchw_samples_per_sec"]  # its own setting's bare step
    shown = bench_views.load_bench_table(tmp_path)          # the results folder, holding bench/
    assert shown.equals(bench_views.load_bench_table(out))  # or the folder of CSVs itself
    assert len(shown) == 2 and list(shown.columns) == bench_views.SUMMARY
    assert len(bench_views.load_bench_table(out, full=True, latest=False)) == 2
    assert bench_views.load_bench_table(tmp_path / "nothing") is None
    book = bench_views.speed_table(shown)
    assert list(book.columns) == ["model", "fp32 NCHW (images/s)", "fp32 channels_last (images/s)",
                                  "bf16 NCHW (images/s)", "bf16 channels_last (images/s)", "study's setting",
                                  "loop (images/s)", "loop / fastest"]
    assert sorted(book["study's setting"]) == sorted(
        bench_views.SETTING_LABELS[f"{p}-{f}"] for p, f in zip(shown.precision, shown.layout))
    assert "32 px, batch 32" in bench_views.bench_note(shown)


def test_bench_on_an_image_folder(study_env, tmp_path, tiny_imagefolder, capsys):
    """--data (what `make study DATA=...` passes): the models measured on the user's image folder."""
    out = tmp_path / "bench"
    assert main(["bench", "--model", "smallvgg1", "--image-size", "32", "--batch-size", "16", "--data",
                 str(tiny_imagefolder), "--rounds", "1", "--warmup", "0", "--no-infer", "--threads", "1",
                 "--out-dir", str(out)]) == 0
    row = pd.read_csv(next(out.glob("*.csv"))).iloc[0]
    assert row["dataset"] == "imagefolder" and row["images"] == 32 and row["model"] == "smallvgg1"
    assert main(["bench", "--data", str(tmp_path / "missing"), "--out-dir", str(out)]) == 2
    assert "parameter '--data' is" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_net"], "parameter '--model' is 'no_such_net'"),
    (["--image-size", "0"], "parameter '--image-size' is 0"),
    (["--rounds", "0"], "parameter '--rounds' is 0, but it must be a positive integer."),
    (["--device", "tpu"], "parameter '--device' is 'tpu'"),
])
def test_bad_arguments_stop_before_any_work(study_env, tmp_path, capsys, argv, message):
    assert main(["bench", *argv, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_names_follow_timm():
    assert speed.torch_tag().startswith("pt") and speed.torch_tag()[2:].isdigit()
    assert speed.csv_name("cpu") == f"benchmark-train-{speed.torch_tag()}-cpu.csv"
    assert speed.bare_column("bf16", "nhwc") == "bare_bf16_nhwc_samples_per_sec"


def _executed_notebook(path: Path, record: dict, durations: list[float], startup: float, wall: float):
    """A notebook as papermill and the grid runner leave it: clocks in the metadata, the record glued."""
    from datetime import datetime, timedelta
    t0 = datetime(2026, 1, 1, 12, 0, 0)
    nb = nbformat.v4.new_notebook()
    t = t0 + timedelta(seconds=startup)
    for i, d in enumerate(durations):
        cell = nbformat.v4.new_code_cell(f"x = {i}")
        cell.metadata["papermill"] = {"start_time": t.isoformat(), "end_time": (t + timedelta(seconds=d)).isoformat(),
                                      "duration": d, "status": "completed"}
        t += timedelta(seconds=d)
        nb.cells.append(cell)
    nb.cells[-1].outputs = [nbformat.v4.new_output("display_data", data={
        "application/scrapbook.scrap.json+json": {"name": "record", "data": record, "encoder": "json", "version": 1}},
        metadata={"scrapbook": {"name": "record", "data": True, "display": False}})]
    total = (t - t0).total_seconds() + 0.5
    nb.metadata["papermill"] = {"start_time": t0.isoformat(), "end_time": (t0 + timedelta(seconds=total)).isoformat(),
                                "duration": total}
    nb.metadata["studylib"] = {"execution": {"wall_seconds": wall}}
    nbformat.write(nb, str(path))
    return path


def test_runner_overhead_splits_wall_time(tmp_path):
    # the imports cell (100 s) outlasts the training cell (95 s): the work cell is the one running
    # when the record was finished (180 s after papermill started, in the cell from 102.1 s to 197.1 s)
    train = _executed_notebook(tmp_path / "train.ipynb",
                               {"run_id": "train-x", "stage": "train", "status": "ok", "train_seconds": 90.0,
                                "eval_seconds": 2.0, "finished_at": "2026-01-01T12:03:00+00:00"},
                               durations=[0.1, 100.0, 95.0, 1.0, 0.4], startup=2.0, wall=200.0)
    cost = _executed_notebook(tmp_path / "cost.ipynb", {"run_id": "cost-x", "stage": "cost", "status": "ok"},
                              durations=[0.2, 3.0], startup=1.5, wall=5.0)
    frame = overhead.runner_overhead([train, cost])
    t = frame.set_index("stage").loc["train"]
    assert t["run_id"] == "train-x" and t["wall_seconds"] == 200.0
    assert t["startup_seconds"] == pytest.approx(2.0) and t["work_seconds"] == pytest.approx(92.0)
    assert t["setup_seconds"] == pytest.approx(0.1 + 100.0 + 95.0 - 92.0)
    assert t["after_seconds"] == pytest.approx(1.4)
    assert t["startup_seconds"] + t["setup_seconds"] + t["work_seconds"] + t["after_seconds"] + t["other_seconds"] \
        == pytest.approx(200.0)
    assert t["work_share"] == pytest.approx(92.0 / 200.0)
    assert frame.set_index("stage").loc["cost", "work_seconds"] == 0.0
    stages = overhead.overhead_by_stage(frame).set_index("stage")
    assert list(stages.index) == ["train", "cost", "all"]
    assert stages.loc["all", "work_share"] == pytest.approx(92.0 / 205.0)
    json.dumps(frame.to_dict(orient="records"))  # plain values, ready for the book


SMOKE = str(Path(__file__).resolve().parent.parent / "params" / "smoke.yaml")


def test_grid_configurations(study_env, tiny_imagefolder):
    import argparse
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    configs = bench.configurations(parser.parse_args(["--grid", SMOKE]))
    assert [(c.dataset, c.model) for c in configs] == [
        ("clothing10", "smallvgg1"), ("clothing10", "shufflenet_v2_x0_5"), ("imagefolder", "smallvgg1")]
    one = bench.configurations(parser.parse_args(["--grid", SMOKE, "--model", "shufflenet_v2_x0_5",
                                                  "--batch-size", "16"]))
    assert len(one) == 1 and (one[0].image_size, one[0].batch_size, one[0].train_limit) == (32, 16, 64)
    with pytest.raises(bench.ParameterError, match="--model"):
        bench.configurations(parser.parse_args(["--grid", SMOKE, "--model", "resnet18"]))
    mine = bench.configurations(parser.parse_args(["--grid", SMOKE, "--data", str(tiny_imagefolder)]))
    assert mine and {(c.dataset, c.root) for c in mine} == {("imagefolder", str(tiny_imagefolder.resolve()))}
    plain = bench.configurations(parser.parse_args([]))
    assert [c.model for c in plain] == bench.DEFAULT_MODELS and {c.image_size for c in plain} == {64}
    # study 003's arms: smallvgg3 with and without L2 or augmentation is one step to measure, not three
    arms = bench.configurations(parser.parse_args(["--grid", SMOKE.replace("smoke", "cifar10")]))
    assert [c.model for c in arms] == ["smallvgg1", "smallvgg2", "smallvgg3", "smallvgg3_dropout", "smallvgg3_bn",
                                       "smallvgg3_bn_dropout", "airbench_32_192_192"]


def test_runs_against_bench_matches_the_setting():
    """A study's train runs are compared with the newest bench row of their own machine and shape (threads
    included), against the bare step in the setting they trained in and against the fastest one."""
    setting = {"image_size": 64, "batch_size": 64, "compile": False, "device": "cpu"}
    run = {"stage": "train", "status": "ok", "model": "m", "amp": "auto", "channels_last": "auto",
           "precision": "fp32", "memory_format": "nhwc", "hardware_gpu_name": None, "hardware_cpu_model": "CPU X",
           "hardware_torch_threads": 2, **setting}
    runs = pd.DataFrame([
        {**run, "images_per_second": 90.0},
        {**run, "images_per_second": 70.0},
        {**run, "images_per_second": 40.0, "hardware_torch_threads": 1},
        {**run, "images_per_second": None, "status": "failed"},
        {**run, "images_per_second": 60.0, "precision": None, "memory_format": None},  # a record from before
    ])
    four = {"bare_fp32_nchw_samples_per_sec": 70.0, "bare_fp32_nhwc_samples_per_sec": 100.0,
            "bare_bf16_nchw_samples_per_sec": 50.0, "bare_bf16_nhwc_samples_per_sec": 160.0,
            "ceiling_samples_per_sec": 160.0, "fastest": "bf16-nhwc"}
    table = pd.DataFrame([
        {"model": "m", "precision": "fp32", "layout": "nhwc", "device_name": "CPU X", "torch_threads": 2,
         "measured_at": "2026-12-02", **four, **setting},
        {"model": "m", "precision": "fp32", "layout": "nhwc", "device_name": "CPU X", "torch_threads": 2,
         "measured_at": "2026-12-01", **{k: 1.0 for k in four}, "fastest": "fp32-nchw", **setting},  # older
        {"model": "m", "precision": "fp32", "layout": "nhwc", "device_name": "CPU Y", "torch_threads": 2,
         "measured_at": "2026-12-03", **{k: 500.0 for k in four}, "fastest": "fp32-nchw", **setting},
    ])
    out = bench_views.runs_against_bench(runs, table)
    assert len(out) == 1   # the 1-thread run has no bench row of its machine; CPU Y is another machine
    row = out.iloc[0]
    assert row.runs == 2 and row.run_samples_per_sec == 80.0 and row.bare_samples_per_sec == 100.0
    assert row.run_ratio == pytest.approx(0.5) and row.fastest == "bf16-nhwc"
    shown = bench_views.against_table(out)
    assert shown.iloc[0].to_dict() == {
        "model": "m", "setting": "fp32 channels_last", "runs": "2", "runs (images/s)": "80",
        "bare step, same setting (images/s)": "100", "fastest bare step (images/s)": "160", "runs / fastest": "50%"}
    assert bench_views.against_sentence(out) == "The study's runs trained at 50% of the fastest bare step's speed."
    assert bench_views.runs_against_bench(runs, None).empty
    assert bench_views.runs_against_bench(runs.drop(columns=["precision", "memory_format"]), table).empty
