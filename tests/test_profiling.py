"""The profile of a run: top operators of a few loop steps, utilisation over the run, peak memory."""
import time

import pytest
import torch
from torch import nn

from studylib.data.loader import TensorBatches
from studylib.models import create_model
from studylib.train.profiling import UtilisationSampler, peak_memory, profile_steps
from studylib.train.setup import build_optimizer


@pytest.fixture
def one_thread():
    """One PyTorch thread: no OpenMP barrier waits on cores that other jobs hold."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_profile_steps_reports_top_operators_and_leaves_the_model_alone(one_thread):
    torch.manual_seed(0)
    model = create_model("smallvgg1_bn", 3)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    batches = TensorBatches(images, torch.randint(0, 3, (40,)), 8, mean=[0.5] * 3, std=[0.25] * 3,
                            shuffle=True, augment=True)
    optimizer = build_optimizer(model, "adamw", 1e-3, 0.0)
    loss_fn = nn.CrossEntropyLoss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    epoch, rng = batches.epoch, torch.random.get_rng_state()

    prof = profile_steps(model, batches, optimizer, loss_fn, "cpu", False, steps=3, warmup=1, top=10)

    assert prof["steps"] == 3 and prof["warmup_steps"] == 1 and prof["images"] == 4 * 8
    rows = prof["top_operators"]
    assert 0 < len(rows) <= 10 and prof["sort_by"] == "self_cpu_time_total"
    names = [r["name"] for r in rows]
    assert any(n.startswith("aten::") for n in names)
    assert any("conv" in n for n in names)          # the model's own work is among the top operators
    assert all(r["calls"] >= 1 and r["self_cpu_ms"] >= 0 and 0 <= r["self_share"] <= 1 for r in rows)
    assert rows == sorted(rows, key=lambda r: r["self_cpu_ms"], reverse=True)
    assert "Self CPU" in prof["table"]
    # the steps ran on copies: weights, BatchNorm statistics, optimizer state, batch order and RNG unchanged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert optimizer.state == {} and batches.epoch == epoch
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_utilisation_sampler_samples_while_the_block_runs():
    # The block runs until the sampler has taken 5 samples (a busy machine may delay its thread): no
    # count within fixed seconds, only a generous limit.
    t = time.perf_counter()
    with UtilisationSampler("cpu", interval=0.05) as sampler:
        x = torch.randn(256, 256)
        while len(sampler.rows) < 5:
            assert time.perf_counter() - t < 60, f"the sampler took {len(sampler.rows)} samples in 60 s"
            x = (x @ x).tanh()
    elapsed = time.perf_counter() - t
    s = sampler.summary()
    assert s["samples"] >= 5 and s["sampling_interval_seconds"] == 0.05
    assert s["process_cpu_percent_max"] > 0             # this process computed while it was sampled
    assert 0 < s["sampled_seconds"] <= elapsed + 0.01   # the samples' clock starts with the block (2 decimals)
    assert 0 <= s["cpu_percent_mean"] <= s["cpu_percent_max"] <= 100
    assert 0 <= s["process_cpu_percent_mean"] <= 100 and s["rss_peak_sampled_mb"] > 0
    assert s["gpu_name"] is None and s["gpu_percent_mean"] is None     # no GPU here: nothing invented
    line = s["timeline"]
    assert len(line["seconds"]) == len(line["cpu_percent"]) == len(line["process_cpu_percent"]) == s["samples"]
    assert line["seconds"] == sorted(line["seconds"])


def test_sampler_asked_for_a_gpu_without_one_reports_none():
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    with UtilisationSampler("cuda", interval=0.05) as sampler:
        time.sleep(0.12)
    s = sampler.summary()
    assert s["gpu_name"] is None and s["gpu_percent_max"] is None and s["samples"] >= 1


def test_sampler_timeline_is_bounded():
    sampler = UtilisationSampler("cpu", interval=0.01, max_points=10)
    sampler.rows = [(i * 0.01, 50.0, 25.0, 100.0, None, None) for i in range(95)]
    s = sampler.summary()
    assert s["samples"] == 95 and len(s["timeline"]["seconds"]) == 10 and s["cpu_percent_mean"] == 50.0


def test_peak_memory_on_cpu():
    m = peak_memory("cpu")
    assert m["host_peak_rss_mb"] > 0 and m["cuda_peak_allocated_mb"] is None


@pytest.mark.slow
def test_train_run_keeps_the_profile_in_its_record(study_env, one_thread):
    from studylib.params import TrainParams
    from studylib.record import TrainRecord
    from studylib.train.run import train_run

    params = TrainParams(model="shufflenet_v2_x0_5", epochs=1, image_size=32, train_limit=64, batch_size=16,
                         profile=True)
    result = train_run(params, progress=False)
    record = TrainRecord.model_validate(result.record).model_dump(mode="json")
    prof = record["profile"]
    assert prof["samples"] >= 1 and prof["host_peak_rss_mb"] > 0 and prof["cpu_count"] >= 1
    ops = prof["operators"]
    assert ops["steps"] >= 1 and ops["top_operators"] and "table" in ops
    # profiling ran after the test pass, on copies: the checkpoint holds the weights that were tested
    saved = torch.load(record["checkpoint"], weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in result.model.state_dict().items())
