"""The arithmetic of cost: seconds priced by the hour, DAWNBench's time-to-accuracy, the Pareto front."""
from __future__ import annotations

import pandas as pd

from studylib.record import EpochStats
from studylib.train.loop import time_to_targets

NOT_REACHED = "not reached"


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


def time_to_accuracy(history: list[EpochStats], target: float) -> tuple[float | None, int | None]:
    """DAWNBench time-to-accuracy: train + validation seconds up to the end of the first epoch with
    val top-1 >= target, and that epoch; (None, None) when no epoch reaches it.

    The train loop's rule (studylib.train.loop.time_to_targets), which writes the train record's time_to_target.
    """
    seconds, epochs = time_to_targets(history, [target])
    return seconds[f"{target:g}"], epochs[f"{target:g}"]


def pareto_front(points: pd.DataFrame, cost: str, accuracy: str) -> pd.Series:
    """True for the points no other point beats: none is at most as costly and at least as accurate,
    and strictly better in one of the two."""
    ok = points[[cost, accuracy]].dropna()
    front = pd.Series(False, index=points.index)
    for i, (c, a) in ok.iterrows():
        beaten = ((ok[cost] <= c) & (ok[accuracy] >= a) & ((ok[cost] < c) | (ok[accuracy] > a))).any()
        front[i] = not beaten
    return front
