"""amp and channels_last on every device: "auto" resolved from the bench's rows, and what a run trains in.

The resolution reads hand-written bench CSVs (no timing is measured here); the training tests run
a few real steps on the CPU and look at what the model computed in and what the batches hold.
"""
import pandas as pd
import pytest
import torch

from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.train import speed
from studylib.train.loop import autocast, train_epoch
from studylib.train.setup import load_run_data, prepare

CPU = speed.device_name("cpu")


def bench_row(model="mobilenet_v3_small", measured_at="2026-12-01T10:00:00+00:00", **bare) -> dict:
    """One row as `studylib bench` writes it (the columns resolution reads), bare: setting -> images/s."""
    row = {"model": model, "dataset": "clothing10", "image_size": 64, "batch_size": 64, "precision": "fp32",
           "layout": "nhwc", "compile": False, "device": "cpu", "device_name": CPU, "measured_at": measured_at}
    for name, value in bare.items():
        row[speed.bare_column(*name.split("_"))] = value
    return row


def write_bench(folder, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "benchmark-train-pt2150-cpu.csv", index=False)


def params(**kw) -> TrainParams:
    return TrainParams.from_mapping({"model": "mobilenet_v3_small", "image_size": 64, "batch_size": 64, **kw})


FOUR = {"fp32_nchw": 311.0, "fp32_nhwc": 558.0, "bf16_nchw": 237.0, "bf16_nhwc": 338.0}  # issue 17's first row


def test_auto_takes_a_setting_clearly_faster_than_the_default(tmp_path):
    # smallvgg3_bn at 32 px in issue 17: bf16 channels_last 1116 images/s against fp32 channels_last's 719
    write_bench(tmp_path / "bench", [bench_row(fp32_nchw=444, fp32_nhwc=719, bf16_nchw=888, bf16_nhwc=1116)])
    chosen = speed.resolve(params(), "cpu", tmp_path)
    assert (chosen.precision, chosen.layout, chosen.amp, chosen.channels_last) == ("bf16", "nhwc", True, True)
    assert chosen.source.startswith("bench row measured_at 2026-12-01T10:00:00+00:00: bf16-nhwc, 55% faster")


def test_auto_keeps_the_default_within_the_margin(tmp_path):
    # bf16 channels_last 9% faster than the default (fp32 channels_last on a CPU): not clearly faster
    write_bench(tmp_path / "bench", [bench_row(fp32_nchw=300, fp32_nhwc=500, bf16_nchw=200, bf16_nhwc=545)])
    chosen = speed.resolve(params(), "cpu", tmp_path)
    assert (chosen.precision, chosen.layout) == speed.DEFAULT["cpu"] == ("fp32", "nhwc")
    assert chosen.source == "default: bench row measured_at 2026-12-01T10:00:00+00:00 has no setting more than 10% faster"
    # ... and 11% faster is clearly faster
    write_bench(tmp_path / "bench", [bench_row(fp32_nchw=300, fp32_nhwc=500, bf16_nchw=200, bf16_nhwc=555)])
    assert speed.resolve(params(), "cpu", tmp_path).precision == "bf16"


def test_of_two_settings_within_the_margin_the_preferred_one(tmp_path):
    # bf16 NCHW measured fastest, but bf16 channels_last (the default's layout) is within 10% of it
    write_bench(tmp_path / "bench", [bench_row(fp32_nchw=100, fp32_nhwc=200, bf16_nchw=400, bf16_nhwc=380)])
    assert speed.resolve(params(), "cpu", tmp_path).layout == "nhwc"
    write_bench(tmp_path / "bench", [bench_row(fp32_nchw=100, fp32_nhwc=200, bf16_nchw=400, bf16_nhwc=350)])
    chosen = speed.resolve(params(), "cpu", tmp_path)
    assert (chosen.precision, chosen.layout) == ("bf16", "nchw") and "bf16-nchw, 100% faster than fp32-nhwc" in chosen.source
    # a change of layout alone (fp32 NCHW) comes before a change of precision alone (bf16 channels_last)
    write_bench(tmp_path / "bench", [bench_row(fp32_nchw=190, fp32_nhwc=100, bf16_nchw=50, bf16_nhwc=200)])
    assert (speed.resolve(params(), "cpu", tmp_path).precision, speed.resolve(params(), "cpu", tmp_path).layout) == (
        "fp32", "nchw")


def test_without_a_bench_row_of_the_model_the_default(tmp_path):
    assert speed.resolve(params(), "cpu", tmp_path).source.startswith("default: no bench row")
    # another model's row, and this model's at another image size or batch size, are not its own
    write_bench(tmp_path / "bench", [bench_row(model="smallvgg3_bn", fp32_nhwc=100, bf16_nhwc=900),
                                     {**bench_row(fp32_nhwc=100, bf16_nhwc=900), "image_size": 32},
                                     {**bench_row(fp32_nhwc=100, bf16_nhwc=900), "batch_size": 128},
                                     {**bench_row(fp32_nhwc=100, bf16_nhwc=900), "device_name": "another CPU"}])
    chosen = speed.resolve(params(), "cpu", tmp_path)
    assert (chosen.precision, chosen.layout) == ("fp32", "nhwc") and chosen.source.startswith("default: no bench row")
    assert speed.resolve(params(model="smallvgg3_bn"), "cpu", tmp_path).precision == "bf16"


def test_the_newest_row_decides_and_fixed_values_stay(tmp_path):
    write_bench(tmp_path / "bench", [bench_row(measured_at="2026-12-02T00:00:00+00:00", **FOUR),
                                     bench_row(measured_at="2026-12-01T00:00:00+00:00", fp32_nhwc=100, bf16_nhwc=900)])
    assert speed.resolve(params(), "cpu", tmp_path).source.startswith("default: bench row measured_at 2026-12-02")
    # amp fixed on: only the bf16 settings are candidates, and bf16-nhwc (338) beats bf16-nchw (237)
    forced = speed.resolve(params(amp=True), "cpu", tmp_path)
    assert (forced.precision, forced.layout) == ("bf16", "nhwc")
    # channels_last fixed off: fp32-nchw (311) against bf16-nchw (237): the default precision stays
    assert speed.resolve(params(channels_last=False), "cpu", tmp_path).layout == "nchw"
    both = speed.resolve(params(amp=False, channels_last=False), "cpu", tmp_path)
    assert (both.precision, both.layout, both.source) == ("fp32", "nchw", "parameters")


def test_an_older_bench_file_is_not_read(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    pd.DataFrame([bench_row(fp32_nhwc=100, bf16_nhwc=900)]).to_csv(folder / "benchmark-train-fp32-nchw-pt2150-cpu.csv")
    assert speed.read_bench(folder) is None


@pytest.mark.parametrize("value", ["fast", 1, None, "True"])
def test_a_bad_value_is_one_sentence(value):
    for name in ("amp", "channels_last"):
        with pytest.raises(ParameterError, match=f"parameter '{name}' is .*, but it must be true, false or 'auto'"):
            params(**{name: value})


def tiny_run(study_env, tiny_imagefolder, **kw):
    p = TrainParams.from_mapping({"dataset": "imagefolder", "root": str(tiny_imagefolder), "model": "smallvgg1_bn",
                                  "image_size": 32, "batch_size": 8, "epochs": 1, "device": "cpu", **kw})
    data = load_run_data(p)
    return p, prepare(p, data, "cpu")


def test_amp_on_a_cpu_trains_in_bf16_and_channels_last_batches_are_channels_last(study_env, tiny_imagefolder):
    p, setup = tiny_run(study_env, tiny_imagefolder, amp=True, channels_last=True)
    assert (setup.speed.precision, setup.speed.layout, setup.speed.source) == ("bf16", "nhwc", "parameters")
    seen = []
    setup.model.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    stats = train_epoch(setup.step_model, setup.train, setup.optimizer, setup.schedule, setup.loss_fn, "cpu",
                        setup.speed.amp)
    assert stats["images"] == 32 and len(seen) == 4   # 36 images, batches of 8: the last 4 dropped (drop_last)
    for x, out in seen:
        assert out.dtype == torch.bfloat16
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    conv = next(m for m in setup.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x, _ = next(iter(setup.val))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def test_fp32_nchw_is_what_it_says(study_env, tiny_imagefolder):
    _, setup = tiny_run(study_env, tiny_imagefolder, amp=False, channels_last=False)
    seen = []
    setup.model.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    train_epoch(setup.step_model, setup.train, setup.optimizer, setup.schedule, setup.loss_fn, "cpu", setup.speed.amp)
    assert seen and all(out.dtype == torch.float32 and x.is_contiguous() for x, out in seen)


def test_an_unresolved_auto_in_the_loop_is_the_default_precision():
    with autocast("cpu", "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast("cpu", True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
