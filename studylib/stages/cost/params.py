"""The cost notebook's parameters: which collected study to price, and with which prices."""
from __future__ import annotations

from typing import ClassVar, Optional

from studylib.errors import ParameterError
from studylib.params import StageParams
from studylib.paths import results_dir
from studylib.record import params_hash


class CostParams(StageParams):
    """Parameters of cost.ipynb."""
    stage: ClassVar[str] = "cost"
    allowed: ClassVar[dict[str, str]] = {
        "study": "a study name", "prices": "a path to a prices YAML file",
        "this_machine_price": "a number, zero or more, or None",
        "this_machine_hardware": "a list of hardware labels",
        "hardware_prices": "a mapping of hardware label to price entry name",
        "cost_run_id": "a run id (text)"}

    study: str = "quick"
    prices: str = "params/prices.yaml"
    this_machine_price: Optional[float] = None   # per hour, in prices.yaml's currency for this machine
    this_machine_hardware: list[str] = []        # hardware labels priced as this machine; [] = this host's
    hardware_prices: dict[str, str] = {}         # hardware label -> prices.yaml vm entry
    cost_run_id: str = ""                        # the record's run id; "" means cost-<study>-<params hash>

    @classmethod
    def from_mapping(cls, values: dict) -> "CostParams":
        """The validated parameters; the study must be one `studylib collect` has made."""
        params = super().from_mapping(values)
        here = results_dir()
        if not params.study or not (here / params.study).is_dir():
            found = sorted(p.name for p in here.iterdir() if p.is_dir()) if here.is_dir() else []
            raise ParameterError("study", params.study, "a collected study under " + str(here)
                                 + (f" (one of {', '.join(found)})" if found else "; run `studylib collect` first"))
        return params

    def run_id(self) -> str:
        """The cost record's id: the grid's cell id when it passes one, else cost-<study>-<hash of the parameters>."""
        return self.cost_run_id or f"cost-{self.study}-{params_hash(self.model_dump(exclude={'cost_run_id'}))}"
