"""The study's records read as the pydantic models they were written as, and what cost takes from each.

`read_records` validates every successful train, tune, deploy and data_prep record as its model in
studylib.record; a record that does not validate stops here with one sentence naming its run id and
the first field that failed. The other helpers read one typed record each.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from studylib.errors import StudyError
from studylib.record import RECORD_TYPES, DataPrepRecord, DeployRecord, TrainRecord, TuneRecord, field_path

PRICED_STAGES = ("train", "tune", "deploy", "data_prep")


@dataclass
class StudyRecords:
    """A study's successful records of the stages cost reads, typed, and how many train runs failed."""
    trains: list[TrainRecord]
    tunes: list[TuneRecord]
    deploys: list[DeployRecord]
    preps: list[DataPrepRecord]
    failed_trains: int

    def with_hardware(self) -> list[TrainRecord | TuneRecord | DeployRecord | DataPrepRecord]:
        return [r for r in (*self.trains, *self.tunes, *self.deploys, *self.preps) if r.hardware]


def typed(record: dict) -> TrainRecord | TuneRecord | DeployRecord | DataPrepRecord:
    """One record as its stage's model, or a StudyError naming the run and the first field that failed."""
    model = RECORD_TYPES[record["stage"]]
    try:
        return model.model_validate(record)
    except ValidationError as err:
        first = err.errors()[0]
        raise StudyError(f"record {record.get('run_id')!r} is not a valid {model.__name__}: "
                         f"its field {field_path(first['loc'])!r} failed ({first['msg']}).") from None


def read_records(records: list[dict]) -> StudyRecords:
    """The successful records of each stage cost prices (in their order), typed; other stages are left out."""
    ok = [typed(r) for r in records if r.get("stage") in PRICED_STAGES and r.get("status", "ok") == "ok"]
    failed = [r for r in records if r.get("stage") == "train" and r.get("status") == "failed"]
    return StudyRecords(trains=[r for r in ok if isinstance(r, TrainRecord)],
                        tunes=[r for r in ok if isinstance(r, TuneRecord)],
                        deploys=[r for r in ok if isinstance(r, DeployRecord)],
                        preps=[r for r in ok if isinstance(r, DataPrepRecord)],
                        failed_trains=len(failed))


def latest_per_search(tunes: list[TuneRecord]) -> tuple[list[TuneRecord], list[str]]:
    """One tune record per Optuna study (study_name): the last finished. Rerunning a search with more
    trials writes a new record whose tuning_seconds covers the earlier trials too, so pricing every
    record would count them twice. Returns the records kept and the run ids left out."""
    latest: dict[str, TuneRecord] = {}
    for t in sorted(tunes, key=lambda t: t.finished_at):
        latest[t.study_name or t.run_id] = t
    kept = list(latest.values())
    return kept, [t.run_id for t in tunes if t not in kept]


def train_cache_seconds(rec: TrainRecord) -> float:
    """Seconds a train run itself spent decoding images into the tensor cache (cache misses only)."""
    cache = rec.data.get("cache") or {}
    return sum(c.get("seconds") or 0.0 for c in cache.values() if not c.get("hit"))


def data_prep_seconds(rec: DataPrepRecord) -> float | None:
    """Wall seconds a data_prep record spent verifying, describing and caching its dataset."""
    return rec.seconds.get("total")


def deploy_throughput(rec: DeployRecord) -> float | None:
    """The best measured HTTP throughput of a deploy record, predictions per second; None when it served none."""
    return rec.throughput or None


def deploy_latency_ms(rec: DeployRecord) -> float:
    """p50 HTTP latency at concurrency 1, in milliseconds."""
    return rec.latency_p50_ms


def seed_of(rec: TrainRecord | TuneRecord):
    """The seed the run was given (a parameter: the records hold it in their params)."""
    return rec.params.get("seed")
