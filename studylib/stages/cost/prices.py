"""The price book: params/prices.yaml read and validated, each hourly price with its source and date.

The first bad field raises one ParameterError naming the entry and the field; the user may set this
machine's price (and currency), validated the same way.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from studylib.errors import ParameterError
from studylib.paths import project_root
from studylib.util import read_yaml_file

THIS_MACHINE = "this machine"
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CNY", "INR", "CAD", "AUD", "CHF")
UNITS = ("hour", "node-hour")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()   # the value a missing field is shown as in the error sentence


class Price(BaseModel):
    """One hourly price, with where it came from."""
    model_config = ConfigDict(extra="forbid")
    provider: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    gpu: Optional[str]
    kind: Literal["vm", "automl"]
    price: Optional[float] = Field(ge=0, allow_inf_nan=False)   # None: not priced (this machine until the user sets it)
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
    """Every price entry by name, and reference study 000's published rows."""
    prices: dict[str, Price]
    published: list[PublishedRow] = field(default_factory=list)
    published_source: str = ""
    origin: str = "prices.yaml"

    def vms(self) -> dict[str, Price]:
        return {k: p for k, p in self.prices.items() if p.kind == "vm"}

    def price_of(self, entry: str | None) -> tuple[float | None, str | None]:
        """An entry's hourly price and currency; (None, None) for no entry or an entry with no price."""
        if entry is None or entry not in self.prices or self.prices[entry].price is None:
            return None, None
        p = self.prices[entry]
        return p.price, p.currency

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
    data = read_yaml_file(p, "prices", "an existing YAML file of hourly prices")
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
