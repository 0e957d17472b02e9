"""Which process runs each tuning trial, and the trials whose process died: failed at once and retried once.

Optuna's heartbeat fails a dead worker's trial only after its grace period, and only when another
trial starts; a rerun right after a kill -9 would leave the trial RUNNING. Every trial names its
process first thing (`this_process`: host, pid, start time), so a run on the same host can tell a
trial whose process is gone (`fail_dead_trials`) at once. Trials of other hosts go by the heartbeat.
"""
from __future__ import annotations

import copy
import os
import socket
from typing import Optional

import optuna
import psutil
from optuna.trial import TrialState


def this_process() -> dict:
    """What names a trial's process: host, pid and the process's start time (a pid is reused, the pair is not)."""
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "worker_started": psutil.Process().create_time()}


def process_alive(worker: str, started: Optional[float]) -> bool:
    """Whether the process `host:pid` that started at `started` still runs (a process of another host: assumed so)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or started is None:
        return True
    try:
        return abs(psutil.Process(int(pid)).create_time() - started) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the running trials whose process on this host is gone, and queue each for one retry.

    The heartbeat fails a dead worker's trial only after GRACE_SECONDS, and only when another trial
    starts; a rerun right after a kill -9 would otherwise leave it RUNNING. The retry is the
    storage's own stale-trial callback (the same parameters, once). Returns the failed trial numbers."""
    storage = study._storage
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if not worker or process_alive(worker, t.user_attrs.get("worker_started")):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t)
        except optuna.exceptions.UpdateFinishedTrialError:   # another process failed it first
            pass
    retry = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()   # RDB storages have one
    for t in failed:
        print(f"trial {t.number:>3} FAIL     its process {t.user_attrs['worker']} is gone (killed?): "
              f"run again with its parameters", flush=True)
        if retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(t._trial_id)))
    return [t.number for t in failed]
