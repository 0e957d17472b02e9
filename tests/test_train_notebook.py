"""train.ipynb end to end through papermill, its record read back with scrapbook; and determinism."""
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import scrapbook as sb
import torch

from studylib.params import TrainParams
from studylib.record import TrainRecord
from studylib.train.run import train_run

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(model="shufflenet_v2_x0_5", epochs=1, image_size=32, train_limit=96, batch_size=32)


@pytest.mark.slow
def test_train_notebook_end_to_end(study_env, tmp_path):
    out = tmp_path / "train.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "train.ipynb"), str(out), parameters={**TINY, "targets": [0.0, 1.01]},
                        cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    record = sb.read_notebook(str(out)).scraps["record"].data
    rec = TrainRecord.model_validate(record)
    assert rec.status == "ok" and rec.model == "shufflenet_v2_x0_5" and rec.dataset == "clothing10"
    assert rec.data["sizes"] == {"train": 96, "val": 341, "test": 372}
    assert len(rec.history) == 1
    # the test metrics are the confusion matrix's: rows are true classes, one count per test image
    cm = rec.test.confusion_matrix
    assert sum(map(sum, cm)) == 372
    assert rec.test.top1 == sum(cm[i][i] for i in range(len(cm))) / 372
    recalls = [cm[i][i] / sum(cm[i]) for i in range(len(cm)) if sum(cm[i])]
    assert abs(rec.test.balanced_accuracy - sum(recalls) / len(recalls)) < 1e-12 and rec.test.top5 >= rec.test.top1
    # time-to-accuracy for each target: a target of 0 is reached after the first epoch (train + validation
    # time), one above 1 never is
    first = rec.history[0]
    assert rec.time_to_target == {"0": first.seconds + first.val_seconds, "1.01": None}
    assert rec.epoch_to_target == {"0": 1, "1.01": None}
    assert Path(rec.checkpoint).exists() and (Path(rec.checkpoint).parent / "record.json").exists()
    # the executed notebook shows figures (learning curves, confusion matrix, misclassified images)
    images = [o for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
              for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3


@pytest.mark.slow
def test_bad_parameter_stops_the_notebook_at_its_first_cell(study_env, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDYLIB_RUNS", str(runs))   # the kernel inherits it: anything it writes lands here
    out = tmp_path / "bad.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(str(ROOT / "notebooks" / "train.ipynb"), str(out), parameters={"lr": -1.0},
                            cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    assert "parameter 'lr' is -1.0, but it must be a positive number." in str(info.value)
    nb = sb.read_notebook(str(out))
    assert "record" not in nb.scraps
    executed = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code" and c.get("execution_count")]
    # parameters, injected parameters, then the validation cell that failed: nothing after it ran
    assert len(executed) == 3
    assert not runs.exists() or not any(runs.iterdir()), "a refused run writes nothing"


TIMES = {"seconds", "val_seconds", "images_per_second", "data_wait_seconds", "train_seconds",
         "first_step_seconds", "eval_seconds", "time_to_target", "peak_memory_mb", "started_at",
         "finished_at", "checkpoint", "cache", "compile_seconds",
         "profile"}  # utilisation sampled over the run and peak memory: measurements, not results


def strip_times(obj):
    if isinstance(obj, dict):
        return {k: strip_times(v) for k, v in obj.items() if k not in TIMES and k != "output_dir"}
    if isinstance(obj, list):
        return [strip_times(v) for v in obj]
    return obj


@pytest.mark.slow
def test_identical_cpu_runs_give_identical_records(study_env, tmp_path):
    p = dict(TINY, model="smallvgg1", epochs=2, train_limit=128, augment=True)
    a = train_run(TrainParams(**p, output_dir=str(tmp_path / "a")), progress=False)
    b = train_run(TrainParams(**p, output_dir=str(tmp_path / "b")), progress=False)
    assert strip_times(a.record) == strip_times(b.record)
    sa, sb_ = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(sa[k], sb_[k]) for k in sa)
    c = train_run(TrainParams(**p, seed=1, output_dir=str(tmp_path / "c")), progress=False)
    assert strip_times(c.record)["history"] != strip_times(a.record)["history"]
