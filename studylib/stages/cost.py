"""What each run costs: to prepare its data, tune, train, evaluate and serve, on which machine.

Prices come from params/prices.yaml (each with its source and date). Every function here takes
run records (plain dicts, as `studylib.study.collect.load_records` returns them) and returns tables;
cost.ipynb shows them. The rules:

- A run is priced on the machine it ran on: its hardware label (GPU name, or CPU model and
  count) is matched to a price entry. Hardware with no price entry stays unpriced and says so.
- Time-to-accuracy is DAWNBench's: the train and validation seconds up to the end of the first
  epoch whose validation top-1 is at or above the target; cost-to-accuracy is that time priced.
- A run is priced on another machine only when the results hold a measured speed ratio between
  the two: runs of the same model and parameters (seed and execution settings aside) on both.
  Otherwise the table says "not measured". Nothing is extrapolated from specifications.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Literal, Optional

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from studylib.errors import ParameterError
from studylib.paths import project_root

THIS_MACHINE = "this machine"
NOT_MEASURED = "not measured"
NOT_RUN = "not run here"
NOT_REACHED = "not reached"
NO_PRICE = "no price"
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CNY", "INR", "CAD", "AUD", "CHF")
UNITS = ("hour", "node-hour")
# Parameters that change where or how fast a run trains, not what it trains: two runs that differ
# only in these measure the same work, so their speed ratio is a ratio between machines.
EXECUTION_PARAMS = {"device", "amp", "channels_last", "compile", "profile", "output_dir", "root", "seed"}
PHASES = ("data prep", "tuning", "training", "evaluation")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()


# --------------------------------------------------------------------------- prices

class Price(BaseModel):
    """One hourly price, with where it came from."""
    model_config = ConfigDict(extra="forbid")
    provider: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    gpu: Optional[str]
    kind: Literal["vm", "automl"]
    price: float = Field(ge=0, allow_inf_nan=False)
    currency: Literal[CURRENCIES]
    unit: Literal[UNITS]
    source: str = Field(min_length=1)
    date: dt.date
    match: list[str] = []


class PublishedRow(BaseModel):
    """A result row of reference study 000, as published there."""
    model_config = ConfigDict(extra="forbid")
    system: str
    variant: str
    dataset: str
    accuracy: float = Field(ge=0, le=1)
    node_hours: float = Field(ge=0)
    price_per_node_hour: float = Field(ge=0)
    total_price: float = Field(ge=0)
    currency: Literal[CURRENCIES]
    note: str = ""


ALLOWED = {
    "provider": "a non-empty name", "instance": "a non-empty name", "source": "a non-empty URL or citation",
    "gpu": "a GPU name or null", "kind": "'vm' or 'automl'", "price": "a finite number, zero or more",
    "currency": "one of " + ", ".join(CURRENCIES), "unit": "one of " + ", ".join(UNITS),
    "date": "an ISO date (YYYY-MM-DD)", "match": "a list of hardware substrings",
    "accuracy": "a number in [0, 1]", "node_hours": "a number, zero or more",
    "price_per_node_hour": "a number, zero or more", "total_price": "a number, zero or more",
}


@dataclass
class PriceBook:
    prices: dict[str, Price]
    published: list[PublishedRow] = field(default_factory=list)
    published_source: str = ""
    origin: str = "prices.yaml"

    def vms(self) -> dict[str, Price]:
        return {k: p for k, p in self.prices.items() if p.kind == "vm"}

    def frame(self) -> pd.DataFrame:
        rows = [{"entry": k, **p.model_dump(mode="json")} for k, p in self.prices.items()]
        cols = ["entry", "provider", "instance", "gpu", "kind", "price", "currency", "unit", "date", "source"]
        return pd.DataFrame(rows, columns=cols).set_index("entry")


def _validation_error(err: ValidationError, where: str, values: dict) -> ParameterError:
    first = err.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "entry"
    if first["type"] == "missing":
        value = MISSING
    else:
        value = values.get(name, first.get("input")) if isinstance(values, dict) else values
    if first["type"] == "extra_forbidden":
        allowed = "absent: the fields are " + ", ".join(Price.model_fields if "prices" in where else PublishedRow.model_fields)
    else:
        allowed = ALLOWED.get(name, first.get("msg", "valid"))
    return ParameterError(f"{where}.{name}", value, allowed)


def parse_prices(data: dict, origin: str = "prices.yaml") -> PriceBook:
    """Validate the parsed YAML; the first bad field raises one ParameterError naming entry and field."""
    if not isinstance(data, dict) or not isinstance(data.get("prices"), dict) or not data["prices"]:
        raise ParameterError(f"{origin}: prices", (data or {}).get("prices") if isinstance(data, dict) else data,
                             "a mapping of entry name to price fields")
    prices = {}
    for name, values in data["prices"].items():
        where = f"{origin}: prices.{name}"
        if not isinstance(values, dict):
            raise ParameterError(where, values, "a mapping of price fields")
        try:
            prices[str(name)] = Price(**values)
        except ValidationError as err:
            raise _validation_error(err, where, values) from None
    if THIS_MACHINE not in prices:
        raise ParameterError(f"{origin}: prices", sorted(prices), f"a mapping with an entry named '{THIS_MACHINE}'")
    published, source = [], ""
    pub = data.get("published") or {}
    if pub:
        source = str(pub.get("source", ""))
        for i, values in enumerate(pub.get("rows", [])):
            try:
                published.append(PublishedRow(**values))
            except ValidationError as err:
                raise _validation_error(err, f"{origin}: published.rows[{i}]", values) from None
    return PriceBook(prices, published, source, origin)


def load_prices(path: str | os.PathLike = "params/prices.yaml", this_machine_price: float | None = None,
                this_machine_currency: str | None = None) -> PriceBook:
    """Read and validate prices.yaml (relative paths from the project root); the user may set this machine's price."""
    p = Path(path)
    if not p.is_absolute():
        p = project_root() / p
    if not p.is_file():
        raise ParameterError("prices", str(path), "an existing YAML file of hourly prices")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ParameterError("prices", str(path), f"valid YAML ({str(err).splitlines()[0]})") from None
    book = parse_prices(data, origin=p.name)
    return set_this_machine(book, this_machine_price, this_machine_currency)


def set_this_machine(book: PriceBook, price: float | None, currency: str | None = None) -> PriceBook:
    """Override this machine's price (and currency): the user's number, validated like the YAML's."""
    if price is None and currency is None:
        return book
    entry = book.prices[THIS_MACHINE].model_dump()
    if price is not None:
        entry["price"] = price
        entry["source"] = "Set by the user: the cost notebook's parameter this_machine_price."
        entry["date"] = dt.date.today()
    if currency is not None:
        entry["currency"] = currency
    try:
        new = Price(**entry)
    except ValidationError as err:
        first = err.errors()[0]
        name = {"price": "this_machine_price", "currency": "this_machine_currency"}.get(str(first["loc"][0]), str(first["loc"][0]))
        raise ParameterError(name, price if name == "this_machine_price" else currency,
                             ALLOWED.get(str(first["loc"][0]), "valid")) from None
    return PriceBook({**book.prices, THIS_MACHINE: new}, book.published, book.published_source, book.origin)


class CostParams(BaseModel):
    """The cost notebook's parameters."""
    model_config = ConfigDict(extra="forbid")
    study: str = "quick"
    prices: str = "params/prices.yaml"
    this_machine_price: Optional[float] = None   # per hour, in prices.yaml's currency for this machine
    this_machine_hardware: list[str] = []        # hardware labels priced as this machine; [] = this host's
    hardware_prices: dict[str, str] = {}         # hardware label -> prices.yaml vm entry
    cost_run_id: str = ""                        # the record's run id; "" means cost-<study>-<params hash>

    @classmethod
    def from_namespace(cls, namespace: dict) -> "CostParams":
        from studylib.params import validate_mapping
        params = validate_mapping(cls, {k: namespace[k] for k in cls.model_fields if k in namespace}, "cost", allowed={
            "study": "a study name", "prices": "a path to a prices YAML file",
            "this_machine_price": "a number, zero or more, or None",
            "this_machine_hardware": "a list of hardware labels",
            "hardware_prices": "a mapping of hardware label to price entry name",
            "cost_run_id": "a run id (text)"})
        from studylib.paths import results_dir
        here = results_dir()
        if not params.study or not (here / params.study).is_dir():
            found = sorted(p.name for p in here.iterdir() if p.is_dir()) if here.is_dir() else []
            raise ParameterError("study", params.study, "a collected study under " + str(here)
                                 + (f" (one of {', '.join(found)})" if found else "; run `studylib collect` first"))
        return params

    def run_id(self) -> str:
        """The cost record's id: the grid's cell id when it passes one, else cost-<study>-<hash of the parameters>."""
        from studylib.record import params_hash
        return self.cost_run_id or f"cost-{self.study}-{params_hash(self.model_dump(exclude={'cost_run_id'}))}"


# --------------------------------------------------------------------------- machines

def hardware_label(record: dict) -> str:
    """What a run ran on, as one string: the GPU's name for CUDA runs, else 'CPU model (N CPUs)'."""
    hw = record.get("hardware") or {}
    device = str(record.get("device") or (record.get("params") or {}).get("device") or "cpu")
    if device.startswith("cuda") and hw.get("gpu_name"):
        return str(hw["gpu_name"])
    cpu = hw.get("cpu_model") or "unknown CPU"
    n = hw.get("cpu_count")
    return f"{cpu} ({n} CPUs)" if n else str(cpu)


def host_labels() -> list[str]:
    """The hardware labels of the host running this code: its CPU, and each GPU it can see."""
    from studylib import environment
    labels = [hardware_label({"device": "cpu", "hardware": {"cpu_model": environment.cpu_model(),
                                                             "cpu_count": os.cpu_count()}})]
    try:
        import torch
        if torch.cuda.is_available():
            labels += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch or no driver: a CPU host
        pass
    return labels


def machine_for(label: str, book: PriceBook, this_machine: list[str], hardware_prices: dict | None = None) -> str | None:
    """The price entry a hardware label is priced at, or None when no entry prices it.

    In order: the user's explicit mapping; a vm entry whose `match` occurs in the label;
    this machine when the label is one of this machine's labels.
    """
    hardware_prices = hardware_prices or {}
    if label in hardware_prices:
        return hardware_prices[label]
    low = label.lower()
    for name, p in book.vms().items():
        if any(m.lower() in low for m in p.match):
            return name
    if label in this_machine:
        return THIS_MACHINE
    return None


def check_hardware_prices(hardware_prices: dict, book: PriceBook) -> None:
    for label, entry in (hardware_prices or {}).items():
        if entry not in book.vms():
            raise ParameterError(f"hardware_prices[{label!r}]", entry, "the name of a vm entry in prices.yaml ("
                                 + ", ".join(book.vms()) + ")")


# --------------------------------------------------------------------------- reading records

def _ok(records: list[dict], stage: str) -> list[dict]:
    return [r for r in records if r.get("stage") == stage and r.get("status", "ok") == "ok"]


def _get(rec: dict, key: str, default=None):
    """A field at the top of a record, else in its params."""
    if key in rec and rec[key] is not None:
        return rec[key]
    return (rec.get("params") or {}).get(key, default)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def latest_per_search(tunes: list[dict]) -> tuple[list[dict], list[str]]:
    """One tune record per Optuna study (study_name): the last finished. Rerunning a search with more
    trials writes a new record whose tuning_seconds covers the earlier trials too, so pricing every
    record would count them twice. Returns the records kept and the run ids left out."""
    latest: dict[str, dict] = {}
    for t in sorted(tunes, key=lambda t: str(t.get("finished_at") or "")):
        latest[str(t.get("study_name") or t["run_id"])] = t
    kept = list(latest.values())
    return kept, [t["run_id"] for t in tunes if t not in kept]


def tuning_seconds(rec: dict) -> float | None:
    """Total wall seconds of a tune record's search (every trial, pruned ones too)."""
    for key in ("tuning_seconds", "search_seconds", "total_seconds", "seconds"):
        if _num(rec.get(key)) is not None:
            return _num(rec[key])
    trials = rec.get("trials")
    if isinstance(trials, list) and trials:
        secs = [_num(t.get(k)) for t in trials for k in ("duration_seconds", "seconds", "duration") if k in t]
        secs = [s for s in secs if s is not None]
        if secs:
            return sum(secs)
    return None


def data_prep_seconds(rec: dict) -> float | None:
    """Wall seconds a data_prep record spent verifying, describing and caching its dataset."""
    secs = rec.get("seconds")
    if isinstance(secs, dict):          # DataPrepRecord: seconds per step and their total
        return _num(secs.get("total"))
    for key in ("total_seconds", "seconds", "prep_seconds"):
        if _num(rec.get(key)) is not None:
            return _num(rec[key])
    card = rec.get("dataset_card") or {}
    for key in ("total_seconds", "seconds"):
        if _num(card.get(key)) is not None:
            return _num(card[key])
    return None


def train_cache_seconds(rec: dict) -> float:
    """Seconds a train run itself spent decoding images into the tensor cache (cache misses only)."""
    cache = (rec.get("data") or {}).get("cache") or {}
    return sum(_num(c.get("seconds")) or 0.0 for c in cache.values() if isinstance(c, dict) and not c.get("hit"))


def deploy_train_run(rec: dict) -> str | None:
    for key in ("train_run_id", "source_run_id", "run"):
        v = _get(rec, key)
        if isinstance(v, str) and v:
            return Path(v).name if "/" in v else v
    return None


def deploy_throughput(rec: dict) -> float | None:
    """The best measured HTTP throughput of a deploy record, predictions per second."""
    for key in ("throughput", "throughput_per_second", "max_throughput"):
        v = rec.get(key)
        if isinstance(v, dict):
            v = max((_num(x) or 0 for x in v.values()), default=None)
        if _num(v):
            return _num(v)
    load = rec.get("load") or rec.get("load_test") or []
    rows = load.values() if isinstance(load, dict) else load
    best = [_num(r.get("throughput") or r.get("throughput_rps")) for r in rows if isinstance(r, dict)]
    best = [b for b in best if b]
    return max(best) if best else None


def deploy_latency_ms(rec: dict) -> float | None:
    """p50 HTTP latency at concurrency 1, in milliseconds."""
    for key in ("latency_p50_ms", "p50_ms"):
        if _num(rec.get(key)) is not None:
            return _num(rec[key])
    load = rec.get("load") or rec.get("load_test") or []
    rows = load.values() if isinstance(load, dict) else load
    for r in rows:
        if isinstance(r, dict) and int(r.get("concurrency", 0) or 0) == 1:
            for key in ("p50_ms", "latency_p50_ms"):
                if _num(r.get(key)) is not None:
                    return _num(r[key])
    return None


# --------------------------------------------------------------------------- arithmetic

def hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600.0


def priced(seconds: float | None, price_per_hour: float | None) -> float | None:
    """Seconds on a machine times its hourly price."""
    if seconds is None or price_per_hour is None:
        return None
    return seconds / 3600.0 * price_per_hour


def per_million(price_per_hour: float | None, predictions_per_second: float | None) -> float | None:
    """What a million predictions cost on a machine serving `predictions_per_second`."""
    if price_per_hour is None or not predictions_per_second:
        return None
    return price_per_hour / 3600.0 / predictions_per_second * 1e6


def time_to_accuracy(history: list[dict], target: float) -> tuple[float | None, int | None]:
    """DAWNBench time-to-accuracy: train + validation seconds up to the end of the first epoch with
    val top-1 >= target, and that epoch; (None, None) when no epoch reaches it.

    The same rule as studylib.train.loop.time_to_targets, which writes the train record's time_to_target.
    """
    elapsed = 0.0
    for row in history:
        elapsed += float(row["seconds"]) + float(row.get("val_seconds") or 0.0)
        if float(row["val_top1"]) >= target:
            return elapsed, int(row["epoch"])
    return None, None


def pareto_front(points: pd.DataFrame, cost: str, accuracy: str) -> pd.Series:
    """True for the points no other point beats: none is at most as costly and at least as accurate,
    and strictly better in one of the two."""
    ok = points[[cost, accuracy]].dropna()
    front = pd.Series(False, index=points.index)
    for i, (c, a) in ok.iterrows():
        beaten = ((ok[cost] <= c) & (ok[accuracy] >= a) & ((ok[cost] < c) | (ok[accuracy] > a))).any()
        front[i] = not beaten
    return front


def run_key(rec: dict) -> str:
    """What a run trains, independent of where and how fast: its parameters less the execution ones."""
    p = {k: v for k, v in (rec.get("params") or {}).items() if k not in EXECUTION_PARAMS}
    return json.dumps(p, sort_keys=True, default=str)


def epoch_seconds(rec: dict) -> float | None:
    """Median wall seconds of one epoch (training steps plus validation pass)."""
    h = rec.get("history") or []
    if not h:
        return None
    return median(float(r["seconds"]) + float(r.get("val_seconds") or 0.0) for r in h)


# --------------------------------------------------------------------------- the tables

@dataclass
class CostTables:
    machines: pd.DataFrame
    runs: pd.DataFrame
    targets: pd.DataFrame
    cheapest: pd.DataFrame
    serving: pd.DataFrame
    projections: pd.DataFrame
    breakdown: pd.DataFrame
    automl: pd.DataFrame
    notes: list[str]


def _price_of(book: PriceBook, machine: str | None) -> tuple[float | None, str | None]:
    if machine is None or machine not in book.prices:
        return None, None
    p = book.prices[machine]
    return p.price, p.currency


def machines_table(records: list[dict], book: PriceBook, this_machine: list[str], hardware_prices: dict) -> pd.DataFrame:
    """Every hardware label in the records, with the price entry it is priced at and how many runs ran on it."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        if r.get("stage") in ("train", "tune", "deploy", "data_prep") and r.get("hardware"):
            counts[hardware_label(r)][r["stage"]] += 1
    rows = []
    for label, by_stage in sorted(counts.items()):
        m = machine_for(label, book, this_machine, hardware_prices)
        price, cur = _price_of(book, m)
        rows.append({"hardware": label, "priced as": m or NO_PRICE, "price per hour": price, "currency": cur,
                     **{f"{s} records": by_stage.get(s, 0) for s in ("train", "tune", "deploy", "data_prep")}})
    return pd.DataFrame(rows, columns=["hardware", "priced as", "price per hour", "currency", "train records",
                                       "tune records", "deploy records", "data_prep records"])


RUN_COLUMNS = ["run_id", "stage", "dataset", "model", "seed", "device", "hardware", "machine", "price per hour",
               "currency", "test top-1", "epochs", "data_prep_seconds", "data_prep_cost", "data prep source",
               "tuning_seconds", "tuning_cost", "tuning source", "training_seconds", "training_cost",
               "evaluation_seconds", "evaluation_cost", "total_seconds", "total_cost"]


def _phase_costs(parts: dict[str, list[tuple]], book: PriceBook) -> tuple[dict, list[str]]:
    """Seconds and cost per phase from (seconds, machine) items, and the total when every part is priced
    in one currency. A part with unknown seconds makes its phase unknown (None) and is named in the notes."""
    out, missing, total_c, complete, currencies = {}, [], 0.0, True, set()
    total_s = 0.0
    for phase, items in parts.items():
        key = phase.replace(" ", "_")
        if any(s is None for s, _ in items):
            out[f"{key}_seconds"] = out[f"{key}_cost"] = None
            missing.append(phase)
            complete = False
            continue
        secs, cost = sum(s for s, _ in items), 0.0
        for s, m in items:
            p, c = _price_of(book, m)
            if p is None:
                cost = None
                break
            currencies.add(c)
            cost += priced(s, p)
        out[f"{key}_seconds"], out[f"{key}_cost"] = secs, cost
        total_s += secs
        if cost is None:
            complete = False
        else:
            total_c += cost
    out["total_seconds"] = total_s
    out["total_cost"] = total_c if complete and len(currencies) <= 1 else None
    return out, missing


def cost_tables(records: list[dict], book: PriceBook, this_machine: list[str] | None = None,
                hardware_prices: dict | None = None) -> CostTables:
    """Every table of cost.ipynb from the study's records (all stages; missing stages cost 0 and say so)."""
    this_machine = host_labels() if this_machine is None else list(this_machine)
    hardware_prices = dict(hardware_prices or {})
    check_hardware_prices(hardware_prices, book)
    notes: list[str] = []

    def machine_of(rec: dict, default: str | None) -> str | None:
        if rec.get("hardware"):
            return machine_for(hardware_label(rec), book, this_machine, hardware_prices)
        return default

    trains = _ok(records, "train")
    failed = [r for r in records if r.get("stage") == "train" and r.get("status") == "failed"]
    if failed:
        notes.append(f"{len(failed)} failed train run(s) have no timings and are not priced.")
    tunes, deploys, preps = _ok(records, "tune"), _ok(records, "deploy"), _ok(records, "data_prep")
    tunes, superseded = latest_per_search(tunes)
    if superseded:
        notes.append(f"{len(superseded)} earlier tune record(s) of a search that has a later one are not priced "
                     f"({', '.join(superseded)}): the latest record's tuning time covers every trial of the search.")
    if not tunes:
        notes.append("No tune records: tuning cost is 0 for every run (no run was tuned).")
    if not deploys:
        notes.append("No deploy records: no serving cost or serving latency.")
    if not preps:
        notes.append("No data_prep records: data-prep time is what each train run spent building its own "
                     "tensor cache (0 when the cache was already warm).")

    prep_by_dataset: dict[str, list[dict]] = defaultdict(list)
    for r in preps:
        prep_by_dataset[str(_get(r, "dataset"))].append(r)
    train_ids = {r["run_id"] for r in trains}
    # tuning is charged to the run it produced (the tuned run); a tune record naming no run
    # is charged to every run of its dataset and model
    tune_for_run: dict[str, list[dict]] = defaultdict(list)
    tune_by_model: dict[tuple, list[dict]] = defaultdict(list)
    for t in tunes:
        if t.get("tuned_run_id"):
            tune_for_run[t["tuned_run_id"]].append(t)
        else:
            tune_by_model[(str(_get(t, "dataset")), str(_get(t, "model")))].append(t)

    def prep_parts(dataset: str, own_cache_seconds: float, machine: str | None):
        if prep_by_dataset.get(dataset):
            return [(data_prep_seconds(p), machine_of(p, machine)) for p in prep_by_dataset[dataset]], \
                "data_prep record (once per dataset)"
        return [(own_cache_seconds, machine)], "this run's cache build"

    rows, target_rows = [], []
    for r in trains:
        label = hardware_label(r)
        machine = machine_for(label, book, this_machine, hardware_prices)
        price, cur = _price_of(book, machine)
        dataset, model = str(r.get("dataset")), str(r.get("model"))
        prep, prep_source = prep_parts(dataset, train_cache_seconds(r), machine)
        tune_recs = tune_for_run.get(r["run_id"], []) + tune_by_model.get((dataset, model), [])
        parts = {"data prep": prep,
                 "tuning": [(tuning_seconds(t), machine_of(t, machine)) for t in tune_recs],
                 "training": [(_num(r.get("train_seconds")), machine)],
                 "evaluation": [(_num(r.get("eval_seconds")), machine)]}
        costs, missing = _phase_costs(parts, book)
        notes += [f"{r['run_id']}: its {ph} time is unknown, so its {ph} and total cost are left empty." for ph in missing]
        rows.append({"run_id": r["run_id"], "stage": "train", "dataset": dataset, "model": model,
                     "seed": _get(r, "seed"), "device": r.get("device"), "hardware": label,
                     "machine": machine or NO_PRICE, "price per hour": price, "currency": cur,
                     "test top-1": (r.get("test") or {}).get("top1"), "epochs": len(r.get("history") or []),
                     "data prep source": prep_source,
                     "tuning source": ", ".join(t["run_id"] for t in tune_recs) if tune_recs else "not tuned",
                     **costs})
        for t, recorded in sorted((r.get("time_to_target") or {}).items(), key=lambda kv: float(kv[0])):
            secs, epoch = time_to_accuracy(r.get("history") or [], float(t))
            target_rows.append({"run_id": r["run_id"], "dataset": dataset, "model": model, "seed": _get(r, "seed"),
                                "target": float(t), "epoch": epoch, "seconds": secs, "hours": hours(secs),
                                "cost": priced(secs, price), "currency": cur, "machine": machine or NO_PRICE,
                                "recorded seconds": recorded})

    # a tuned run that is not among the train records gets its row from the tune record
    for rid, ts in tune_for_run.items():
        if rid in train_ids:
            continue
        t = ts[-1]
        label = hardware_label(t) if t.get("hardware") else None
        machine = machine_of(t, THIS_MACHINE if not label else None)
        price, cur = _price_of(book, machine)
        dataset = str(_get(t, "dataset"))
        retrain = None if t.get("tuned_reused") else _num(t.get("retrain_seconds"))
        prep, prep_source = prep_parts(dataset, 0.0, machine)
        parts = {"data prep": prep, "tuning": [(tuning_seconds(x), machine_of(x, machine)) for x in ts],
                 "training": [(retrain, machine)]}
        costs, missing = _phase_costs(parts, book)
        if missing:
            notes.append(f"{rid}: the tuned run was trained by an earlier tune process and its train record is not "
                         "in the results, so its training cost is left empty.")
        rows.append({"run_id": rid, "stage": "tune", "dataset": dataset, "model": _get(t, "model"),
                     "seed": _get(t, "seed"), "device": t.get("device"), "hardware": label or "unknown",
                     "machine": machine or NO_PRICE, "price per hour": price, "currency": cur,
                     "test top-1": t.get("tuned_test_top1"), "epochs": _get(t, "epochs"),
                     "data prep source": prep_source, "tuning source": ", ".join(x["run_id"] for x in ts),
                     "evaluation_seconds": None, "evaluation_cost": None, **costs})

    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    targets = pd.DataFrame(target_rows, columns=["run_id", "dataset", "model", "seed", "target", "epoch", "seconds",
                                                 "hours", "cost", "currency", "machine", "recorded seconds"])
    return CostTables(
        machines=machines_table(records, book, this_machine, hardware_prices),
        runs=runs, targets=targets, cheapest=cheapest_to_target(targets),
        serving=serving_table(deploys, trains, book, this_machine, hardware_prices, notes),
        projections=projections_table(trains, book, this_machine, hardware_prices),
        breakdown=time_breakdown(runs),
        automl=automl_table(book, trains, runs),
        notes=notes,
    )


def cheapest_to_target(targets: pd.DataFrame) -> pd.DataFrame:
    """DAWNBench's leaderboard: per dataset and target, the run that got there for the least (then fastest)."""
    reached = targets.dropna(subset=["seconds"])
    cols = ["dataset", "target", "model", "seed", "run_id", "epoch", "seconds", "cost", "currency", "machine", "runs reaching it"]
    if reached.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (ds, t), g in reached.groupby(["dataset", "target"]):
        g = g.assign(_c=g["cost"].fillna(math.inf)).sort_values(["_c", "seconds"])
        best = g.iloc[0]
        rows.append({**{c: best[c] for c in cols[:-1] if c in best}, "dataset": ds, "target": t, "runs reaching it": len(g)})
    return pd.DataFrame(rows, columns=cols)


def serving_table(deploys: list[dict], trains: list[dict], book: PriceBook, this_machine: list[str],
                  hardware_prices: dict, notes: list[str]) -> pd.DataFrame:
    """Per deploy record: the served model's test top-1, best HTTP throughput, p50 latency at concurrency 1,
    and the cost of a million predictions on the machine that served them."""
    by_id = {r["run_id"]: r for r in trains}
    rows = []
    for d in deploys:
        rid = deploy_train_run(d)
        train = by_id.get(rid, {})
        if d.get("hardware"):
            label = hardware_label(d)
        else:
            label = this_machine[0] if this_machine else None
            notes.append(f"{d['run_id']}: the deploy record names no hardware; it is priced as this machine.")
        machine = machine_for(label, book, this_machine, hardware_prices) if label else None
        price, cur = _price_of(book, machine)
        tput = deploy_throughput(d)
        # the accuracy of what was served (an int8 model may differ from the trained one), else the train run's
        served = _num(d.get("served_top1"))
        top1 = served if served is not None else (train.get("test") or {}).get("top1")
        rows.append({"deploy run": d["run_id"], "train run": rid, "dataset": train.get("dataset", _get(d, "dataset")),
                     "model": train.get("model", _get(d, "model")), "backend": d.get("backend"),
                     "precision": d.get("precision"), "test top-1": top1,
                     "hardware": label, "machine": machine or NO_PRICE, "price per hour": price, "currency": cur,
                     "throughput (pred/s)": tput, "p50 latency c=1 (ms)": deploy_latency_ms(d),
                     "cost per million predictions": per_million(price, tput)})
    return pd.DataFrame(rows, columns=["deploy run", "train run", "dataset", "model", "backend", "precision", "test top-1",
                                       "hardware", "machine",
                                       "price per hour", "currency", "throughput (pred/s)", "p50 latency c=1 (ms)",
                                       "cost per million predictions"])


def projections_table(trains: list[dict], book: PriceBook, this_machine: list[str], hardware_prices: dict) -> pd.DataFrame:
    """Each run's training cost on every vm price entry: measured where it ran, projected only through a
    measured speed ratio (same model and parameters on both machines), else 'not measured'."""
    label_of = {r["run_id"]: hardware_label(r) for r in trains}
    machine_of_label = {lab: machine_for(lab, book, this_machine, hardware_prices) for lab in set(label_of.values())}
    # median epoch seconds per (what was trained, hardware)
    speed: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in trains:
        s = epoch_seconds(r)
        if s:
            speed[(run_key(r), label_of[r["run_id"]])].append(s)
    rows = []
    for r in trains:
        here = label_of[r["run_id"]]
        mine = machine_of_label[here]
        key = run_key(r)
        for name, p in book.vms().items():
            row = {"run_id": r["run_id"], "dataset": r.get("dataset"), "model": r.get("model"), "seed": _get(r, "seed"),
                   "machine": name, "price per hour": p.price, "currency": p.currency}
            if name == mine:
                secs = _num(r.get("train_seconds"))
                row.update(status="measured", ratio=1.0, evidence=f"ran on {here}", train_seconds=secs,
                           train_cost=priced(secs, p.price))
            else:
                there = [lab for lab, m in machine_of_label.items() if m == name and lab != here]
                pairs = [(lab, speed[(key, lab)]) for lab in there if speed.get((key, lab))]
                if pairs and speed.get((key, here)):
                    lab, secs_there = pairs[0]
                    ratio = median(secs_there) / median(speed[(key, here)])
                    secs = _num(r.get("train_seconds"))
                    secs = None if secs is None else secs * ratio
                    row.update(status="projected", ratio=ratio,
                               evidence=f"{len(secs_there)} run(s) of the same model and parameters on {lab} vs "
                                        f"{len(speed[(key, here)])} on {here} (median epoch seconds)",
                               train_seconds=secs, train_cost=priced(secs, p.price))
                else:
                    row.update(status=NOT_MEASURED, ratio=None, evidence="no run of the same model and parameters "
                               "on this machine's hardware", train_seconds=None, train_cost=None)
            rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", "dataset", "model", "seed", "machine", "price per hour", "currency",
                                       "status", "ratio", "evidence", "train_seconds", "train_cost"])


def projection_matrix(projections: pd.DataFrame) -> pd.DataFrame:
    """Runs by machine: the training cost as measured or projected, else 'not measured'."""
    if projections.empty:
        return pd.DataFrame()

    def cell(r):
        if r["status"] == NOT_MEASURED or r["train_cost"] is None or pd.isna(r["train_cost"]):
            return NOT_MEASURED
        tag = "" if r["status"] == "measured" else " (projected)"
        return f"{r['train_cost']:.4g} {r['currency']}{tag}"

    p = projections.assign(cell=projections.apply(cell, axis=1), seed=projections["seed"].fillna("—"))
    return p.pivot_table(index=["dataset", "model", "seed", "run_id"], columns="machine", values="cell", aggfunc="first")


def time_breakdown(runs: pd.DataFrame) -> pd.DataFrame:
    """Hours per phase, per dataset and model (seeds summed); each tune search and each dataset's data prep
    counted once, however many rows they are charged to."""
    cols = ["dataset", "model", *PHASES]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for ds, g in runs.groupby("dataset", sort=True):
        # a dataset's data prep is paid once: its data_prep records', or every run's own cache build
        once = g["data prep source"].str.startswith("data_prep record")
        prep = g.loc[once, "data_prep_seconds"].max() if once.all() else g["data_prep_seconds"].fillna(0).sum()
        rows.append({"dataset": ds, "model": "(data prep, once per dataset)", "data prep": hours(prep or 0.0),
                     "tuning": 0.0, "training": 0.0, "evaluation": 0.0})
        for model, m in g.groupby("model", sort=True):
            tuned = m[m["tuning source"] != "not tuned"].drop_duplicates("tuning source")
            rows.append({"dataset": ds, "model": model, "data prep": 0.0,
                         "tuning": hours(tuned["tuning_seconds"].fillna(0).sum()),
                         "training": hours(m["training_seconds"].fillna(0).sum()),
                         "evaluation": hours(m["evaluation_seconds"].fillna(0).sum())})
    return pd.DataFrame(rows, columns=cols)


def automl_table(book: PriceBook, trains: list[dict], runs: pd.DataFrame) -> pd.DataFrame:
    """Study 000's published rows next to our runs on the same dataset, and our cheapest cost to match each accuracy."""
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in trains:
        by_ds[str(r.get("dataset"))].append(r)
    cost_of = runs.set_index("run_id") if not runs.empty else None
    rows = []
    for pub in book.published:
        row = {"system": pub.system, "variant": pub.variant, "dataset": pub.dataset, "accuracy (published)": pub.accuracy,
               "node-hours (published)": pub.node_hours, "price per node-hour (published)": pub.price_per_node_hour,
               "total (published)": pub.total_price, "node-hours x price": round(pub.node_hours * pub.price_per_node_hour, 4),
               "currency": pub.currency, "note": pub.note}
        ours = by_ds.get(pub.dataset, [])
        if not ours:
            row.update({"our runs": 0, "our best test top-1": NOT_RUN, "our best model": NOT_RUN,
                        "our cost to match (val)": NOT_RUN, "our model to match": NOT_RUN, "our time to match (h)": NOT_RUN})
            rows.append(row)
            continue
        best = max(ours, key=lambda r: (r.get("test") or {}).get("top1", -1))
        row.update({"our runs": len(ours), "our best test top-1": (best.get("test") or {}).get("top1"),
                    "our best model": best.get("model")})
        matches = []
        for r in ours:
            secs, epoch = time_to_accuracy(r.get("history") or [], pub.accuracy)
            if secs is None:
                continue
            price = cost_of.loc[r["run_id"], "price per hour"] if cost_of is not None else None
            matches.append((priced(secs, price) if price is not None and not pd.isna(price) else math.inf, secs, r, epoch))
        if matches:
            c, secs, r, epoch = min(matches, key=lambda m: (m[0], m[1]))
            row.update({"our cost to match (val)": None if math.isinf(c) else c,
                        "our model to match": f"{r.get('model')} (seed {_get(r, 'seed')}, epoch {epoch})",
                        "our time to match (h)": hours(secs)})
        else:
            row.update({"our cost to match (val)": NOT_REACHED, "our model to match": NOT_REACHED,
                        "our time to match (h)": NOT_REACHED})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- views (what the notebook shows)

def _fmt(x, empty: str = "—") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return empty
    if isinstance(x, (int, float)):
        return f"{x:.4g}"
    return str(x)


def runs_view(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per priced run: minutes, each phase's cost and the total, in the machine's currency."""
    if runs.empty:
        return pd.DataFrame()
    v = pd.DataFrame({
        "dataset": runs["dataset"], "model": runs["model"], "seed": runs["seed"], "stage": runs["stage"],
        "machine": runs["machine"], "test top-1": runs["test top-1"].map(lambda x: _fmt(x)),
        "train min": (runs["training_seconds"] / 60).map(_fmt),
        "data prep": runs["data_prep_cost"].map(_fmt), "tuning": runs["tuning_cost"].map(_fmt),
        "training": runs["training_cost"].map(lambda x: _fmt(x, NO_PRICE)),
        "evaluation": runs["evaluation_cost"].map(_fmt), "total": runs["total_cost"].map(_fmt),
        "currency": runs["currency"].fillna(""),
    })
    return v.sort_values(["dataset", "model", "seed"]).set_index(["dataset", "model", "seed"])


def targets_view(targets: pd.DataFrame) -> pd.DataFrame:
    """Runs by val top-1 target: 'minutes / cost' to the first epoch at or above it, else 'not reached'."""
    if targets.empty:
        return pd.DataFrame()

    def cell(r):
        if r["seconds"] is None or pd.isna(r["seconds"]):
            return NOT_REACHED
        money = NO_PRICE if pd.isna(r["cost"]) else f"{r['cost']:.4g} {r['currency']}"
        return f"{r['seconds'] / 60:.3g} min / {money} (epoch {int(r['epoch'])})"

    t = targets.assign(cell=targets.apply(cell, axis=1), target=targets["target"].map(lambda x: f"val top-1 ≥ {x:g}"),
                       seed=targets["seed"].fillna("—"))
    return t.pivot_table(index=["dataset", "model", "seed"], columns="target", values="cell", aggfunc="first")


class Text(str):
    """A string to glue into the book: shown without quotes, as plain text or Markdown, here or pasted
    into another page ({glue}`cost/<page>.ipynb::key`)."""

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def _repr_markdown_(self):
        return str(self)


# --------------------------------------------------------------------------- figures

def pareto_figure(runs: pd.DataFrame, serving: pd.DataFrame):
    """Per dataset: test top-1 against training cost, and against p50 serving latency; the Pareto front joined."""
    import matplotlib.pyplot as plt
    datasets = sorted(runs["dataset"].dropna().unique()) if not runs.empty else []
    n = max(1, len(datasets))
    fig, axes = plt.subplots(n, 2, figsize=(11, 3.8 * n), squeeze=False)
    if not datasets:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no successful train runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    for (a, b), ds in zip(axes, datasets):
        g = runs[runs["dataset"] == ds]
        cur = "/".join(sorted(g["currency"].dropna().unique())) or "no price"
        _pareto_panel(a, g, "training_cost", "test top-1", f"training cost ({cur})", f"{ds}: accuracy vs training cost")
        s = serving[serving["dataset"] == ds] if not serving.empty else serving
        if s.empty or s["p50 latency c=1 (ms)"].dropna().empty:
            b.text(0.5, 0.5, "no deploy records for this dataset", ha="center", va="center", transform=b.transAxes)
            b.set_title(f"{ds}: accuracy vs serving latency")
            b.set_axis_off()
        else:
            _pareto_panel(b, s, "p50 latency c=1 (ms)", "test top-1", "p50 HTTP latency at concurrency 1 (ms)",
                          f"{ds}: accuracy vs serving latency")
    fig.tight_layout()
    return fig


def _pareto_panel(ax, g: pd.DataFrame, x: str, y: str, xlabel: str, title: str) -> None:
    g = g.dropna(subset=[x, y])
    ax.set(xlabel=xlabel, ylabel="test top-1", title=title)
    if g.empty:
        ax.text(0.5, 0.5, "no priced runs", ha="center", va="center", transform=ax.transAxes)
        return
    front = pareto_front(g, x, y)
    if (~front).any():
        ax.scatter(g.loc[~front, x], g.loc[~front, y], color="0.6", label="dominated")
    f = g[front].sort_values(x)
    ax.plot(f[x], f[y], "o-", color="C3", label="Pareto front")
    machines = g["machine"].nunique() > 1
    for _, r in g.iterrows():
        label = str(r["model"])
        same = g[(g["model"] == r["model"]) & (g["machine"] == r["machine"])]
        if "seed" in g and len(same) > 1:
            label += f" s{r['seed']}"
        if machines:
            label += f" @ {r['machine']}"
        ax.annotate(label, (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def breakdown_figure(breakdown: pd.DataFrame):
    """Stacked horizontal bars: hours in data prep, tuning, training and evaluation, per dataset and model."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(3, len(breakdown)) + 1.2))
    if breakdown.empty:
        ax.text(0.5, 0.5, "no successful train runs", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    labels = [f"{d} / {m}" for d, m in zip(breakdown["dataset"], breakdown["model"])]
    left = [0.0] * len(breakdown)
    for i, phase in enumerate(PHASES):
        vals = breakdown[phase].fillna(0).astype(float).tolist()
        ax.barh(labels, vals, left=left, color=f"C{i}", label=phase)
        left = [a + b for a, b in zip(left, vals)]
    ax.invert_yaxis()
    ax.set(xlabel="hours", title="Where the time went")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the record

def json_rows(frame: pd.DataFrame) -> list[dict]:
    """A frame as JSON-ready rows: NaN becomes null."""
    if frame is None or frame.empty:
        return []
    return json.loads(frame.reset_index(drop=frame.index.name is None).to_json(orient="records", date_format="iso"))


def cost_record(run_id: str, params: dict, study: str, book: PriceBook, tables: CostTables, this_machine: list[str]) -> dict:
    from studylib.record import CostRecord
    return CostRecord(
        run_id=run_id, params=params, study=study,
        prices={k: p.model_dump(mode="json") for k, p in book.prices.items()},
        this_machine=this_machine,
        machines=json_rows(tables.machines), runs=json_rows(tables.runs), targets=json_rows(tables.targets),
        cheapest=json_rows(tables.cheapest), serving=json_rows(tables.serving),
        projections=json_rows(tables.projections), time_breakdown=json_rows(tables.breakdown),
        automl=json_rows(tables.automl), published_source=book.published_source, notes=tables.notes,
    ).model_dump(mode="json")
