"""Hyperparameter search: the search space, one resumable study shared by workers, pruning, the notebook."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import optuna
import papermill as pm
import pytest
import scrapbook as sb
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from studylib.stages import tune as tuning
from studylib.stages import tune_space
from studylib.views import tune as tune_views
from studylib.errors import ParameterError
from studylib.record import TuneRecord
from studylib.train.setup import load_run_data
from studylib.util import redact_url

ROOT = Path(__file__).resolve().parent.parent
SPACE = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": [8, 16]}


def tiny_params(root, tmp_path, **kw):
    values = dict(dataset="imagefolder", root=str(root), model="smallvgg1", image_size=32, epochs=2,
                  train_limit=0, search_space=SPACE, pruner="none",
                  storage=f"sqlite:///{tmp_path / 'optuna.sqlite3'}")
    values.update(kw)
    return tuning.TuneParams.from_mapping(values)


# --------------------------------------------------------------------------- search space and parameters

def test_search_space_from_dict_yaml_text_and_yaml_file(tmp_path):
    default = tune_space.parse_space("")
    assert set(default) == {"lr", "batch_size", "weight_decay", "optimizer", "label_smoothing", "augment"}
    assert isinstance(default["lr"], FloatDistribution) and default["lr"].log
    assert isinstance(default["weight_decay"], FloatDistribution) and default["weight_decay"].log
    assert isinstance(default["batch_size"], CategoricalDistribution)

    text = "lr: {low: 0.0001, high: 0.1, log: true}\nbatch_size: {low: 16, high: 128, log: true}\naugment: [true, false]\n"
    from_text = tune_space.parse_space(text)
    (tmp_path / "space.yaml").write_text(text)
    from_file = tune_space.parse_space(str(tmp_path / "space.yaml"))
    from_dict = tune_space.parse_space({"lr": {"low": 1e-4, "high": 0.1, "log": True},
                                        "batch_size": {"low": 16, "high": 128, "log": True}, "augment": [True, False]})
    assert tune_space.space_as_dict(from_text) == tune_space.space_as_dict(from_file) == tune_space.space_as_dict(from_dict)
    assert isinstance(from_text["batch_size"], IntDistribution)
    assert list(tune_views.space_frame(from_text).index) == ["lr", "batch_size", "augment"]


@pytest.mark.parametrize("space, parameter, fragment", [
    ({"epochs": [1, 2]}, "search_space", "pruner's budget"),
    ({"momentum": [0.9]}, "search_space", "made of lr"),
    ({"lr": {"low": 0, "high": 0.1, "log": True}}, "search_space.lr", "low > 0"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "search_space.lr", "low < high"),
    ({"optimizer": ["adamw", "rmsprop"]}, "search_space.optimizer", "one of"),
    ({"batch_size": [0, 32]}, "search_space.batch_size", "positive"),
    ({"label_smoothing": {"low": 0.0, "high": 1.5}}, "search_space.label_smoothing", "[0, 1)"),
    ("lr: [unclosed", "search_space", "valid YAML"),
    ("/no/such/space.yaml", "search_space", "existing YAML file"),
])
def test_bad_search_space_fails_with_one_sentence(space, parameter, fragment):
    with pytest.raises(ParameterError) as info:
        tuning.TuneParams.from_mapping({"search_space": space})
    assert info.value.parameter == parameter and fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("values, parameter", [
    ({"n_trials": 0}, "n_trials"),
    ({"epochs": -1}, "epochs"),
    ({"pruner": "asha"}, "pruner"),
    ({"storage": "redis://localhost"}, "storage"),
    ({"model": "no_such_net"}, "model"),
    ({"fixed": {"epochs": 5}}, "fixed"),
    ({"fixed": {"lr": 0.1}}, "fixed"),            # also searched by the default space
    ({"fixed": {"schedule": "sometimes"}}, "schedule"),
    ({"n_trail": 3}, "n_trail"),
])
def test_bad_tune_parameters_fail_before_any_work(values, parameter):
    with pytest.raises(ParameterError) as info:
        tuning.TuneParams.from_mapping(values)
    assert info.value.parameter == parameter


def test_storage_password_is_hidden():
    assert "s3cret" not in redact_url("postgresql://user:s3cret@db.example:5432/optuna")


# --------------------------------------------------------------------------- the study

def test_rerun_continues_the_study_and_n_trials_is_the_total(study_env, tiny_imagefolder, tmp_path):
    params = tiny_params(tiny_imagefolder, tmp_path, n_trials=2, sampler_seed=0)
    first = tuning.tune(params)
    assert first.trials_run == [0, 1] and tuning.counted(first.study) == 2
    for t in first.study.trials:   # reported to the pruner after every epoch
        assert t.state.name == "COMPLETE" and sorted(t.intermediate_values) == [1, 2]
        assert t.value == t.intermediate_values[2] and set(t.params) == {"lr", "batch_size"}

    again = tuning.tune(params)                      # the total is reached: nothing to do
    assert again.trials_run == [] and len(again.study.trials) == 2

    more = tuning.tune(params.model_copy(update={"n_trials": 3}))   # same study, one more trial
    assert more.study.study_name == first.study.study_name
    assert more.trials_run == [2] and tuning.counted(more.study) == 3
    assert [t.number for t in more.study.trials] == [0, 1, 2]

    # The same study name with a different budget is refused: its trials would not be comparable.
    with pytest.raises(ParameterError) as info:
        tuning.prepare_study(params.model_copy(update={"epochs": 5, "study_name": first.study.study_name}))
    assert info.value.parameter == "study_name" and "epochs" in str(info.value)


def test_pruner_stops_a_trial_after_the_epoch_it_falls_behind(study_env, tiny_imagefolder, tmp_path):
    params = tiny_params(tiny_imagefolder, tmp_path, n_trials=3, epochs=3, pruner="median",
                         search_space={"lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    study = tuning.load_study(params)
    # Two finished trials whose reports (2.0) no real accuracy can reach: the median pruner must stop
    # the next real trial after its first epoch, and the loop must honour it.
    for lr in (2e-3, 4e-3):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": FloatDistribution(1e-3, 1e-2, log=True)},
            value=2.0, intermediate_values={1: 2.0, 2: 2.0, 3: 2.0}))
    out = tuning.tune(params)
    pruned = out.study.trials[2]
    assert out.trials_run == [2] and pruned.state.name == "PRUNED"
    assert list(pruned.intermediate_values) == [1]
    table = tune_views.time_by_state(out.study, params.epochs)
    assert table.loc["PRUNED", "epochs trained"] == 1 and table.loc["PRUNED", "epochs saved"] == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")   # study.ask plays the dead worker
def test_a_dead_workers_trial_is_failed_and_run_again(study_env, tiny_imagefolder, tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(tuning, "GRACE_SECONDS", 1)
    params = tiny_params(tiny_imagefolder, tmp_path, n_trials=1, epochs=1)
    study = tuning.load_study(params)
    dead = study.ask(tune_space.parse_space(SPACE))  # a worker takes a trial, beats once, and dies
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    out = tuning.tune(params)                        # the next worker fails it and runs its parameters again
    assert [t.state.name for t in out.study.trials] == ["FAIL", "COMPLETE"]
    assert out.study.trials[1].params == out.study.trials[0].params and out.trials_run == [1]


WORKER = r"""
import json, sys, time
from pathlib import Path
from studylib.stages import tune as tuning
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
params = tuning.TuneParams.from_mapping(json.loads(sys.argv[3]))
ready.touch()
while not go.exists():
    time.sleep(0.02)
print(json.dumps(tuning.tune(params).trials_run))
"""


def test_two_processes_tune_one_sqlite_study(study_env, tiny_imagefolder, tmp_path):
    values = dict(dataset="imagefolder", root=str(tiny_imagefolder), model="smallvgg1", image_size=32, epochs=1,
                  train_limit=0, search_space=SPACE, pruner="none", n_trials=6,
                  storage=f"sqlite:///{tmp_path / 'shared.sqlite3'}")
    params = tuning.TuneParams.from_mapping(values)
    tuning.prepare_study(params)                     # created once, before the workers start
    load_run_data(params.train_params({}))           # warm the tensor cache
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}     # two workers on a small machine: a core each
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"ready{i}"), str(go), json.dumps(values)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
             for i in range(2)]
    try:
        deadline = time.time() + 300
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), "a worker exited before it was ready"
            assert time.time() < deadline, "the workers did not start within 300 s"
            time.sleep(0.05)
        go.touch()                                   # both start their search together
        ran = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            ran.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    # Which process wins how many trials depends on the machine's load; what they share must not.
    study = optuna.load_study(study_name=params.resolved_study_name(), storage=params.storage)
    states = [t.state.name for t in study.trials]
    assert set(states) == {"COMPLETE"}         # pruner "none": nothing pruned, nothing failed
    # n_trials is the study's total: a process stops once the study holds it, but may finish the one
    # trial it had started while the other finished the last (so at most n_trials + 1 with two processes)
    assert 6 <= tuning.counted(study) == len(study.trials) <= 7
    # every trial ran once, in one of the two processes, and says which one
    numbers = ran[0] + ran[1]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == [t.number for t in study.trials]
    host = socket.gethostname()
    for proc, mine in zip(procs, ran):
        assert {study.trials[n].user_attrs["worker"] for n in mine} <= {f"{host}:{proc.pid}"}
    assert {t.user_attrs["worker"] for t in study.trials} <= {f"{host}:{p.pid}" for p in procs}


KILLED = r"""
import json, sys, time
from pathlib import Path
from studylib.stages import tune as tuning
started = Path(sys.argv[1])

def stuck(*args, **kwargs):   # the trial is running: say so and wait for kill -9
    started.touch()
    time.sleep(600)

tuning.fit = stuck
tuning.tune(tuning.TuneParams.from_mapping(json.loads(sys.argv[2])))
"""


def test_sqlite_storage_is_in_wal_mode(study_env, tiny_imagefolder, tmp_path):
    """Readers do not block the writer (several workers, the notebook's tables while trials run)."""
    params = tiny_params(tiny_imagefolder, tmp_path, n_trials=1)
    tuning.prepare_study(params)
    with sqlite3.connect(tmp_path / "optuna.sqlite3") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_trial_killed_with_kill_9_is_failed_and_retried_on_the_next_run(study_env, tiny_imagefolder, tmp_path):
    values = dict(dataset="imagefolder", root=str(tiny_imagefolder), model="smallvgg1", image_size=32, epochs=1,
                  train_limit=0, search_space=SPACE, pruner="none", n_trials=1,
                  storage=f"sqlite:///{tmp_path / 'optuna.sqlite3'}")
    params = tuning.TuneParams.from_mapping(values)
    tuning.prepare_study(params)
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(started), json.dumps(values)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not started.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the worker's trial did not start within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)     # no heartbeat's grace period has passed, no other trial started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    out = tuning.tune(params)                # the next run, right away
    trials = out.study.trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], [t.state.name for t in trials]
    assert trials[1].params == trials[0].params and out.trials_run == [1]   # the killed trial's parameters again
    assert trials[0].user_attrs["worker"] == f"{socket.gethostname()}:{proc.pid}"


def test_a_retrained_run_whose_model_pt_was_deleted_is_trained_again(study_env, tiny_imagefolder, tmp_path):
    params = tiny_params(tiny_imagefolder, tmp_path, epochs=1)
    tp = params.train_params({})
    record, reused = tuning.train_or_reuse(tp)
    assert not reused
    weights = Path(record["checkpoint"])
    assert tuning.train_or_reuse(tp)[1] is True          # record and weights there: reused
    weights.unlink()
    again, reused = tuning.train_or_reuse(tp)
    assert reused is False and weights.is_file() and again["run_id"] == record["run_id"]


# --------------------------------------------------------------------------- the notebook

@pytest.mark.slow
def test_tune_notebook_end_to_end(study_env, tiny_imagefolder, tmp_path):
    out = tmp_path / "tune.ipynb"
    space = "lr: {low: 0.001, high: 0.01, log: true}\nbatch_size: [8, 16]\naugment: [false]\n"
    storage = f"sqlite:///{tmp_path / 'nb.sqlite3'}"
    pm.execute_notebook(str(ROOT / "notebooks" / "tune.ipynb"), str(out), cwd=str(tmp_path), progress_bar=False,
                        kernel_name="python3",
                        parameters=dict(dataset="imagefolder", root=str(tiny_imagefolder), model="smallvgg1",
                                        image_size=32, epochs=2, train_limit=0, n_trials=3, search_space=space,
                                        storage=storage, sampler_seed=1))
    rec = TuneRecord.model_validate(sb.read_notebook(str(out)).scraps["record"].data)
    assert rec.status == "ok" and rec.stage == "tune" and rec.run_id.startswith("tune-imagefolder-smallvgg1-s0-")
    assert rec.trial_counts["COMPLETE"] + rec.trial_counts["PRUNED"] == 3 and len(rec.trials) == 3
    complete = [t.value for t in rec.trials if t.state == "COMPLETE"]
    assert rec.best_val_top1 == max(complete) and rec.worst_val_top1 == min(complete)
    assert rec.best_params == rec.trials[rec.best_trial].params and rec.best_params["augment"] is False
    assert rec.tuned_run_id != rec.default_run_id and not rec.tuned_reused and not rec.default_reused
    for rid in (rec.tuned_run_id, rec.default_run_id):
        assert (Path(study_env["STUDYLIB_RUNS"]) / rid / "record.json").exists()
    assert rec.test_gain == pytest.approx(rec.tuned_test_top1 - rec.default_test_top1)
    assert rec.tuning_seconds == pytest.approx(rec.complete_seconds + rec.pruned_seconds + rec.failed_seconds)
    assert rec.tuning_seconds > 0 and "sqlite" in rec.storage
    # the report: trials table, best/worst, time by state, and the Optuna figures
    nb = nbformat.read(out, as_version=4)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5
    html = "".join(o["data"].get("text/html", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if "data" in o)
    assert "worst" in html and "COMPLETE" in html and "gain (tuned - default)" in html
