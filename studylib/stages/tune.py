"""Hyperparameter search with Optuna: one shared, resumable study per (model, dataset, budget).

Each trial is one training run through the study's own loop (`studylib.train.loop.fit`, set up by
`studylib.train.setup.prepare` as train's runs are), scored on validation top-1 (never test) and
reported to the pruner after every epoch. Epochs are the pruner's budget, not a searched value.
The search space is `tune_space`'s; the tables and figures of tune.ipynb are `studylib.views.tune`'s.

The study lives in an Optuna storage (a SQLite file under results/ by default, in WAL mode so
readers never block the writing worker; PostgreSQL or MySQL across hosts). Rerunning continues it:
`n_trials` is the total wanted, counting complete and pruned trials, so several workers can tune
one study at once and stop together. Create the study once before starting workers
(`prepare_study`): concurrent first creation of a database races.

A trial whose process died (kill -9, a dead kernel) is failed and run again once with the same
parameters: at the next run on the same host at once (`fail_dead_trials`: every trial names its
process), on another host after the heartbeat's grace period.
"""
from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional, Union

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError, field_validator

from studylib import environment
from studylib.errors import ParameterError, StudyError
from studylib.params import NonNegativeInt, PositiveInt, StageParams, TrainParams
from studylib.paths import results_dir, runs_dir
from studylib.record import TrainRecord, TuneRecord, run_id
from studylib.stages.tune_space import parse_space, space_as_dict, suggest
from studylib.stages.tune_trials import fail_dead_trials, this_process
from studylib.train.loop import fit
from studylib.train.run import train_run
from studylib.train.setup import load_run_data, prepare
from studylib.util import now, redact_url

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")
# A worker beats every HEARTBEAT_SECONDS; a running trial silent for GRACE_SECONDS belonged to a worker
# that died: the next worker to start marks it failed and runs its parameters again (once).
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what n_trials counts


# --------------------------------------------------------------------------- parameters

def default_storage() -> str:
    return f"sqlite:///{(results_dir() / 'optuna.sqlite3').resolve()}"


class TuneParams(StageParams):
    """Parameters of tune.ipynb. Train settings shared by every trial, plus the search's own."""
    stage: ClassVar[str] = "tune"

    dataset: str = "clothing10"
    root: str = ""                       # data root; "" means data/<dataset>
    model: str = "mobilenet_v3_small"
    pretrained: bool = False
    image_size: PositiveInt = 64
    epochs: PositiveInt = 3              # the budget of one trial (the pruner's max resource); not searched
    train_limit: NonNegativeInt = 2000   # training images per trial; 0 means all
    seed: int = 0                        # fixes splits, init and batch order: every trial sees the same
    device: str = "auto"
    fixed: dict = {}                     # other train parameters fixed for every trial, e.g. {"schedule": "cosine"}
    n_trials: PositiveInt = 8            # the total wanted in the study (complete + pruned), over all workers
    search_space: Union[dict, str] = ""  # dict, YAML path or YAML text; "" means tune_space.DEFAULT_SPACE
    pruner: Literal["median", "hyperband", "none"] = "median"
    storage: str = ""                    # an Optuna RDB URL; "" means sqlite under results/
    study_name: str = ""                 # "" means one derived from the parameters that define the search
    sampler_seed: Optional[int] = None   # None: fresh per process (workers never repeat each other)
    timeout: float = 0                   # seconds this process may start trials for; 0 means no limit

    @classmethod
    def from_mapping(cls, values: dict) -> "TuneParams":
        params = super().from_mapping(values)
        params.space()                 # a bad space fails here
        params.train_params({})        # so do bad train settings (model, dataset, image size, fixed)
        return params

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v):
        if not v >= 0:
            raise ParameterError("timeout", v, "zero (no limit) or a positive number of seconds")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v):
        if v and v.split(":", 1)[0].split("+", 1)[0] not in STORAGE_SCHEMES:
            raise ParameterError("storage", v, "an Optuna storage URL (sqlite:///path, postgresql://..., mysql://...) or '' for the default")
        return v

    @field_validator("fixed")
    @classmethod
    def _fixed(cls, v):
        owned = {"dataset", "root", "model", "pretrained", "image_size", "epochs", "train_limit", "seed", "device", "output_dir"}
        for k in v:
            if k in owned:
                raise ParameterError("fixed", k, f"free of {k!r}, which is a tune parameter of its own")
        return v

    def space(self) -> dict:
        space = parse_space(self.search_space)
        clash = sorted(set(space) & set(self.fixed))
        if clash:
            raise ParameterError("fixed", clash[0], "a parameter that is not also in the search space")
        return space

    def train_params(self, hp: dict) -> TrainParams:
        """The train parameters of one trial (hp: the trial's suggestions; {}: the defaults)."""
        base = {"dataset": self.dataset, "root": self.root, "model": self.model, "pretrained": self.pretrained,
                "image_size": self.image_size, "epochs": self.epochs, "train_limit": self.train_limit,
                "seed": self.seed, "device": self.device, **self.fixed}
        return TrainParams.from_mapping({**base, **hp})

    def identity(self) -> dict:
        """What makes trials comparable; a study holds trials of one identity only."""
        d = self.model_dump(exclude={"n_trials", "storage", "study_name", "sampler_seed", "timeout", "device", "search_space"})
        d["search_space"] = space_as_dict(self.space())
        return d

    def resolved_study_name(self) -> str:
        return self.study_name or run_id("tune", self.identity())

    def resolved_storage(self) -> str:
        return self.storage or default_storage()


# --------------------------------------------------------------------------- the study

def open_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker died is failed and retried once by the next worker.

    A SQLite file is put in WAL mode first (a setting the file keeps): a reader (another worker between
    trials, a table of the study) never blocks the worker writing its trial, and a process killed
    mid-write leaves the database consistent."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
                con.execute("PRAGMA journal_mode=WAL")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


def prepare_study(params: TuneParams) -> str:
    """Create the study (and its database) once, before any worker starts; safe to call again.

    Returns the study name. A study created with other parameters under the same name is refused.
    """
    name = params.resolved_study_name()
    identity = params.identity()
    last = None
    for attempt in range(5):   # first creation of tables can race with another process: retry
        try:
            study = optuna.create_study(storage=open_storage(params.resolved_storage()), study_name=name,
                                        direction="maximize", load_if_exists=True)
            break
        except Exception as err:  # sqlalchemy OperationalError / IntegrityError while tables appear
            last = err
            time.sleep(0.5 * (attempt + 1))
    else:
        raise last
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("objective", "val_top1")
    elif json.loads(json.dumps(stored)) != json.loads(json.dumps(identity)):
        diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        raise ParameterError("study_name", name, f"a study tuned with these parameters (it differs in {', '.join(diff)}); "
                             "choose another study_name")
    return name


def load_study(params: TuneParams, sampler: Optional[optuna.samplers.BaseSampler] = None,
               pruner: Optional[optuna.pruners.BasePruner] = None) -> optuna.Study:
    name = prepare_study(params)
    return optuna.load_study(study_name=name, storage=open_storage(params.resolved_storage()),
                             sampler=sampler, pruner=pruner)


def make_pruner(params: TuneParams) -> optuna.pruners.BasePruner:
    if params.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=params.epochs, reduction_factor=3)
    if params.pruner == "median":
        # Prune a trial below the median of completed trials at the same epoch, once two have completed.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0, interval_steps=1)
    return optuna.pruners.NopPruner()


def make_sampler(params: TuneParams, trials_so_far: int) -> optuna.samplers.TPESampler:
    """TPE; random for the first third of the trials (at most 10). constant_liar spreads parallel workers."""
    seed = None if params.sampler_seed is None else params.sampler_seed * 100_003 + trials_so_far
    startup = min(10, max(2, params.n_trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(n_startup_trials=startup, multivariate=True, constant_liar=True, seed=seed)


def counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


@dataclass
class TuneOutcome:
    study: optuna.Study
    trials_run: list[int]        # trial numbers this process ran
    seconds: float               # this process: wall time of the search (after data loading)
    data_seconds: float          # this process: loading the data tensors once
    device: str


def tune(params: TuneParams) -> TuneOutcome:
    """Run trials until the study holds params.n_trials complete or pruned trials (over all workers)."""
    space = params.space()
    base = params.train_params({})
    device = environment.resolve_device(base.device)
    study = load_study(params, pruner=make_pruner(params))
    fail_dead_trials(study)
    study.sampler = make_sampler(params, len(study.trials))
    remaining = params.n_trials - counted(study)
    if remaining <= 0:
        return TuneOutcome(study, [], 0.0, 0.0, device)
    t0 = time.perf_counter()
    data = load_run_data(base)              # once per process; every trial reuses the tensors
    data_seconds = time.perf_counter() - t0
    process = this_process()
    mine: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        for key, value in process.items():   # first: a trial whose process dies is known by it
            trial.set_user_attr(key, value)
        mine.append(trial.number)
        hp = suggest(trial, space)
        tp = params.train_params(hp)
        trial.set_user_attr("device", device)
        setup = prepare(tp, data, device)
        epoch_seconds: list[float] = []

        def on_epoch(row) -> None:
            epoch_seconds.append(row.seconds + row.val_seconds)
            trial.report(row.val_top1, row.epoch)
            trial.set_user_attr("epoch_seconds", epoch_seconds)
            # The last epoch is paid for already: let it complete rather than prune it.
            if row.epoch < tp.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"val top-1 {row.val_top1:.3f} after epoch {row.epoch}")

        fitted = fit(setup.step_model, setup.train, setup.val, epochs=tp.epochs, optimizer=setup.optimizer,
                     schedule=setup.schedule, loss_fn=setup.loss_fn, device=device, amp=setup.speed.amp,
                     early_stopping=tp.early_stopping, on_epoch=on_epoch, progress=False)
        vals = [h.val_top1 for h in fitted["history"]]
        return max(vals) if tp.early_stopping else vals[-1]

    t1 = time.perf_counter()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # one plain line per trial instead (log_trial)
    try:
        study.optimize(objective, n_trials=remaining, timeout=params.timeout or None,
                       callbacks=[optuna.study.MaxTrialsCallback(params.n_trials, states=COUNTED), log_trial])
    finally:
        optuna.logging.set_verbosity(verbosity)
    return TuneOutcome(study, mine, time.perf_counter() - t1, data_seconds, device)


def short(params: dict) -> dict:
    """Parameters with floats to 3 significant digits, for tables and log lines."""
    return {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in params.items()}


def log_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    reports = t.intermediate_values
    value = t.value if t.value is not None else (reports[max(reports)] if reports else float("nan"))
    print(f"trial {t.number:>3} {t.state.name:<8} val top-1 {value:.3f} after {len(reports)} epoch(s), "
          f"{trial_seconds(t):.1f} s  {short(t.params)}", flush=True)


# --------------------------------------------------------------------------- trial times (the log, the record, views.tune)

def trial_seconds(t: optuna.trial.FrozenTrial) -> float:
    return t.duration.total_seconds() if t.duration is not None else float("nan")


def state_totals(study: optuna.Study, epochs: int) -> dict[str, dict]:
    """Per trial state: trials, seconds, epochs trained and epochs saved (what pruning spared)."""
    rows = {}
    for t in study.trials:
        r = rows.setdefault(t.state.name, {"trials": 0, "seconds": 0.0, "epochs trained": 0, "epochs saved": 0})
        r["trials"] += 1
        r["seconds"] += 0.0 if math.isnan(trial_seconds(t)) else trial_seconds(t)
        r["epochs trained"] += len(t.intermediate_values)
        if t.state == TrialState.PRUNED:
            r["epochs saved"] += epochs - len(t.intermediate_values)
    return rows


# --------------------------------------------------------------------------- retrain and record

def train_or_reuse(tp: TrainParams) -> tuple[dict, bool]:
    """The train record for these parameters: runs/<run_id>/record.json when it and the run's model.pt exist
    (the record alone is not a run: deploy and serve load the weights), else a fresh train_run."""
    path = runs_dir() / run_id("train", tp.run_params()) / "record.json"
    if path.exists() and path.with_name("model.pt").is_file():
        try:
            record = TrainRecord.model_validate_json(path.read_text()).model_dump(mode="json")
            if record["status"] == "ok":
                return record, True
        except ValidationError:
            pass
    return train_run(tp, progress=False).record, False


def final_val(record: dict) -> float:
    vals = [h["val_top1"] for h in record["history"]]
    return max(vals) if record["params"].get("early_stopping") else vals[-1]


@dataclass
class Retrained:
    best_params: dict
    tuned: dict             # train record of the best configuration
    tuned_reused: bool
    default: dict           # train record of the default hyperparameters
    default_reused: bool


def retrain(params: TuneParams, study: optuna.Study) -> Retrained:
    """Train the best configuration and the defaults on the train split with train's loop; test once each."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise StudyError(f"study '{study.study_name}' has no completed trial yet, so there is no best configuration to retrain.")
    best = dict(study.best_trial.params)
    tuned, tuned_reused = train_or_reuse(params.train_params(best))
    default, default_reused = train_or_reuse(params.train_params({}))
    return Retrained(best, tuned, tuned_reused, default, default_reused)


def make_record(params: TuneParams, outcome: TuneOutcome, r: Retrained, started_at: str) -> dict:
    study = outcome.study
    totals = state_totals(study, params.epochs)
    seconds = {s: totals[s]["seconds"] if s in totals else 0.0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    trials = []
    for t in study.trials:
        trials.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                       "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                       "seconds": None if t.duration is None else t.duration.total_seconds(),
                       "worker": t.user_attrs.get("worker")})
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    worst = min(done, key=lambda t: t.value)
    default_val, best_val = final_val(r.default), study.best_value
    record = TuneRecord(
        run_id=run_id("tune", params.model_dump()), params=params.model_dump(mode="json"),
        dataset=params.dataset, model=params.model, image_size=params.image_size, epochs=params.epochs,
        study_name=study.study_name, storage=redact_url(params.resolved_storage(), keep_user=True),
        search_space=space_as_dict(params.space()), pruner=params.pruner, sampler="TPE (multivariate, constant liar)",
        device=outcome.device, hardware=environment.hardware(outcome.device), versions=environment.versions(),
        n_trials=params.n_trials, trial_counts=counts, trials=trials,
        trials_this_process=outcome.trials_run,
        best_trial=study.best_trial.number, best_params=r.best_params, best_val_top1=best_val,
        worst_trial=worst.number, worst_params=worst.params, worst_val_top1=worst.value,
        default_val_top1=default_val, val_gain=best_val - default_val,
        retrained_val_top1=final_val(r.tuned),
        tuned_run_id=r.tuned["run_id"], tuned_test_top1=r.tuned["test"]["top1"], tuned_reused=r.tuned_reused,
        default_run_id=r.default["run_id"], default_test_top1=r.default["test"]["top1"], default_reused=r.default_reused,
        test_gain=r.tuned["test"]["top1"] - r.default["test"]["top1"],
        complete_seconds=seconds["COMPLETE"], pruned_seconds=seconds["PRUNED"], failed_seconds=seconds["FAIL"],
        tuning_seconds=sum(seconds.values()),
        epochs_trained=sum(t["epochs trained"] for t in totals.values()),
        epochs_saved_by_pruning=sum(t["epochs saved"] for t in totals.values()),
        process_seconds=outcome.seconds, data_seconds=outcome.data_seconds,
        retrain_seconds=0.0 if r.tuned_reused else r.tuned["train_seconds"],
        default_seconds=0.0 if r.default_reused else r.default["train_seconds"],
        started_at=started_at, finished_at=now(),
    )
    return record.model_dump(mode="json")
