"""Which price entry a run is priced at: its hardware as one label, matched to the price book.

A run is priced on the machine it ran on. Hardware that no entry matches stays unpriced and says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from studylib.environment import cpu_model
from studylib.errors import ParameterError
from studylib.record import DataPrepRecord, DeployRecord, TrainRecord, TuneRecord
from studylib.stages.cost.prices import THIS_MACHINE, PriceBook

NO_PRICE = "no price"


def hardware_label(hardware: dict, device: str) -> str:
    """What a run ran on, as one string: the GPU's name for CUDA runs, else 'CPU model (N CPUs)'."""
    if device.startswith("cuda") and hardware.get("gpu_name"):
        return str(hardware["gpu_name"])
    cpu = hardware.get("cpu_model") or "unknown CPU"
    n = hardware.get("cpu_count")
    return f"{cpu} ({n} CPUs)" if n else str(cpu)


def record_label(rec: TrainRecord | TuneRecord | DeployRecord | DataPrepRecord) -> str:
    """A record's hardware label. Data prep reads and decodes on the CPU: its record names no device."""
    return hardware_label(rec.hardware, "cpu" if isinstance(rec, DataPrepRecord) else rec.device)


def host_labels() -> list[str]:
    """The hardware labels of the host running this code: its CPU, and each GPU it can see."""
    labels = [hardware_label({"cpu_model": cpu_model(), "cpu_count": os.cpu_count()}, "cpu")]
    if torch.cuda.is_available():
        labels += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return labels


def check_hardware_prices(hardware_prices: dict, book: PriceBook) -> None:
    """Every entry the user maps hardware to is a vm entry of the price book."""
    for label, entry in (hardware_prices or {}).items():
        if entry not in book.vms():
            raise ParameterError(f"hardware_prices[{label!r}]", entry, "the name of a vm entry in prices.yaml ("
                                 + ", ".join(book.vms()) + ")")


@dataclass
class Machines:
    """The price book, the labels priced as this machine, and the user's label -> entry mapping."""
    book: PriceBook
    this_machine: list[str]
    hardware_prices: dict[str, str]

    def entry(self, label: str) -> str | None:
        """The price entry a hardware label is priced at, or None when no entry prices it.

        In order: the user's explicit mapping; this machine when the label is one of this machine's
        labels and the user gave it a price; a vm entry whose `match` occurs in the label; this machine
        (unpriced) for its other labels.
        """
        if label in self.hardware_prices:
            return self.hardware_prices[label]
        mine = label in self.this_machine
        if mine and self.book.prices[THIS_MACHINE].price is not None:
            return THIS_MACHINE
        low = label.lower()
        for name, p in self.book.vms().items():
            if any(m.lower() in low for m in p.match):
                return name
        return THIS_MACHINE if mine else None

    def entry_of(self, rec, default: str | None = None) -> str | None:
        """The entry a record's hardware is priced at; `default` when the record names no hardware."""
        return self.entry(record_label(rec)) if rec.hardware else default
