"""Tune's search space: a dict or YAML read into Optuna distributions, each bound and choice
checked against TrainParams before any trial; the space as JSON; one trial's suggestions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.paths import project_root

# What a trial may vary: train parameters that do not change the data or the budget.
SEARCHABLE = ("lr", "batch_size", "weight_decay", "optimizer", "label_smoothing", "augment",
              "schedule", "head", "finetune")

# The default space. A list is a categorical choice; a mapping is a range (log scale with log: true).
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 3e-4, "high": 5e-2, "log": True},
    "batch_size": [32, 64, 128],
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "optimizer": ["adamw", "adam", "sgd"],
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "augment": [True, False],
}


def parse_space(spec: Union[dict, str, None]) -> dict[str, optuna.distributions.BaseDistribution]:
    """A search space from a dict, a YAML file path, or YAML text ("" or None: DEFAULT_SPACE).

    Every bound and choice is checked against TrainParams, so a bad space fails before any trial.
    """
    if spec is None or spec == "" or spec == {}:
        spec = DEFAULT_SPACE
    if isinstance(spec, str):
        text = spec
        if spec.strip().endswith((".yaml", ".yml")):
            path = Path(spec).expanduser()
            if not path.is_absolute() and not path.is_file():   # notebooks run with cwd book/: try the repo root
                path = project_root() / path
            if not path.is_file():
                raise ParameterError("search_space", spec, "an existing YAML file, YAML text or a dict")
            text = path.read_text()
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ParameterError("search_space", spec, "valid YAML: a mapping of parameter to range or choices") from None
        if isinstance(spec, dict) and isinstance(spec.get("search_space"), dict):
            spec = spec["search_space"]
    if not isinstance(spec, dict) or not spec:
        raise ParameterError("search_space", spec, "a non-empty mapping of parameter to a range or a list of choices")
    space = {}
    for name, entry in spec.items():
        if name == "epochs":
            raise ParameterError("search_space", "epochs",
                                 "free of 'epochs', which is the pruner's budget (set the parameter epochs)")
        if name not in SEARCHABLE:
            raise ParameterError("search_space", name, f"made of {', '.join(SEARCHABLE)}")
        space[name] = _distribution(name, entry)
    return space


def _check_value(name: str, value) -> None:
    try:
        TrainParams.from_mapping({name: value})
    except ParameterError as err:
        raise ParameterError(f"search_space.{name}", value, err.allowed) from None


def _distribution(name: str, entry):
    if isinstance(entry, (list, tuple)):
        if not entry:
            raise ParameterError(f"search_space.{name}", entry, "a non-empty list of choices")
        for v in entry:
            _check_value(name, v)
        return CategoricalDistribution(list(entry))
    if isinstance(entry, dict):
        unknown = set(entry) - {"low", "high", "log", "step"}
        if unknown or "low" not in entry or "high" not in entry:
            raise ParameterError(f"search_space.{name}", entry, "a list of choices or {low, high[, log][, step]}")
        low, high, log, step = entry["low"], entry["high"], bool(entry.get("log", False)), entry.get("step")
        kind = TrainParams.model_fields[name].annotation
        if kind not in (int, float):
            raise ParameterError(f"search_space.{name}", entry, "a list of choices (it is not a number)")
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float))) or isinstance(low, bool) or low >= high:
            raise ParameterError(f"search_space.{name}", entry, "a range with numbers low < high")
        if log and low <= 0:
            raise ParameterError(f"search_space.{name}", entry, "a range with low > 0 on a log scale")
        if log and step is not None:
            raise ParameterError(f"search_space.{name}", entry, "either log or step, not both")
        _check_value(name, low)
        _check_value(name, high)
        if kind is int:
            if low != int(low) or high != int(high):
                raise ParameterError(f"search_space.{name}", entry, "a range of integers")
            return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        return FloatDistribution(float(low), float(high), log=log, step=step)
    raise ParameterError(f"search_space.{name}", entry, "a list of choices or {low, high[, log][, step]}")


def space_as_dict(space: dict) -> dict:
    """The space as plain JSON (for the record and the study's identity)."""
    return {k: optuna.distributions.distribution_to_json(d) for k, d in sorted(space.items())}


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """One trial's hyperparameters: the sampler's suggestion for each parameter of the space."""
    hp = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            hp[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            hp[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            hp[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return hp
