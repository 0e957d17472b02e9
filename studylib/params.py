"""Every stage's parameters: one base class, shared field types, one validation sentence.

`StageParams` is the base of TrainParams here and of each stage's params class
(stages/data_prep.py, stages/tune.py, stages/deploy.py, stages/cost/params.py).
`from_mapping(d)` returns the validated parameters or raises ParameterError with one sentence:
the parameter, the bad value and what is allowed; an unknown name is refused with the nearest known
one. `from_namespace(globals())` reads a notebook's parameters out of its globals: the class's fields,
and every other global that is plain data (what papermill can inject), so `papermill -p epoch 3` is
refused before any work instead of ignored.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from studylib.data.registry import check_root, dataset_spec
from studylib.errors import ParameterError, check_no_secret
from studylib.models import create_model, fixed_image_size, load_backbone, min_image_size, model_family
from studylib.paths import NAME, project_root, runs_dir


def _check(test, allowed: str):
    def check(value, info: ValidationInfo):
        if not test(value):
            raise ParameterError(info.field_name, value, allowed)
        return value
    return AfterValidator(check)


# Field types shared by every params class: each raises the one-sentence error naming its field.
PositiveInt = Annotated[int, _check(lambda v: v > 0, "a positive integer")]
NonNegativeInt = Annotated[int, _check(lambda v: v >= 0, "zero or more")]
PositiveFloat = Annotated[float, _check(lambda v: v > 0, "a positive number")]
NonNegativeFloat = Annotated[float, _check(lambda v: v >= 0, "zero or more")]
Fraction = Annotated[float, _check(lambda v: 0 < v < 1, "between 0 and 1")]


def _switch(value, info: ValidationInfo):
    if value is True or value is False or value == "auto":
        return value
    raise ParameterError(info.field_name, value, "true, false or 'auto'")


# amp and channels_last: on, off, or "auto" (studylib.train.speed resolves it per model from the bench)
SpeedSwitch = Annotated[Union[bool, Literal["auto"]], BeforeValidator(_switch)]

def pretrained_allowed() -> str:
    return ("false, true (ImageNet weights) or a run of this study: a run id with a folder in "
            f"{runs_dir()}, or a path to a run folder, holding record.json and model.pt")


def _pretrained(value, info: ValidationInfo):
    if value is True or value is False or (isinstance(value, str) and value.strip() == value and value):
        return value
    raise ParameterError(info.field_name, value, pretrained_allowed())


# pretrained: false, true (ImageNet weights) or a run of this study whose backbone weights start this run
Pretrained = Annotated[Union[bool, str], BeforeValidator(_pretrained)]


def source_run_dir(pretrained: str) -> Path:
    """The run folder a `pretrained` string names: a path to a run folder, or a run id under runs_dir();
    refused in one sentence when neither holds record.json and model.pt."""
    path = Path(pretrained).expanduser()
    candidates = [path] if path.is_absolute() else [path, project_root() / path]   # notebooks run in book/
    if NAME.fullmatch(pretrained):
        candidates.insert(0, runs_dir() / pretrained)
    for folder in candidates:
        if (folder / "record.json").is_file() and (folder / "model.pt").is_file():
            return folder
    raise ParameterError("pretrained", pretrained, pretrained_allowed())


def source_record(pretrained: str) -> dict:
    """The record.json of the run a `pretrained` string names (see source_run_dir)."""
    return json.loads((source_run_dir(pretrained) / "record.json").read_text())


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown names refused, one sentence per error."""
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    stage: ClassVar[str] = ""
    secret: ClassVar[tuple[str, ...]] = ()       # fields whose value is never echoed (only its type)
    allowed: ClassVar[dict[str, str]] = {}       # the "allowed" part of the sentence, where pydantic's is unclear

    @classmethod
    def from_mapping(cls, values: dict):
        return validate_mapping(cls, values, cls.stage, cls.allowed, cls.secret)

    @classmethod
    def from_namespace(cls, namespace: dict):
        """The parameters in a notebook's globals: its fields, and any injected name it does not know
        (refused by from_mapping, naming the nearest field)."""
        return cls.from_mapping({k: v for k, v in namespace.items() if k in cls.model_fields or injected(k, v)})


class ReportParams(StageParams):
    """Parameters of the report notebooks (results, decision, methods, study003): the study they read."""
    stage: ClassVar[str] = "report"

    study: str = "quick"


class TrainParams(StageParams):
    """Parameters of train.ipynb: one model on one dataset."""
    stage: ClassVar[str] = "train"

    dataset: str = "clothing10"
    root: str = ""                       # data root; "" means data/<dataset>
    model: str = "shufflenet_v2_x1_0"
    pretrained: Pretrained = False
    finetune: Literal["all", "head"] = "all"
    head: Literal["linear", "mlp"] = "linear"
    backbone_lr_factor: PositiveFloat = 1.0
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 1e-2
    optimizer: Literal["adam", "adamw", "sgd", "muon"] = "adamw"   # muon: Muon for conv filters, SGD for the rest
    muon_lr: PositiveFloat = 0.24        # Muon's learning rate for conv filters (optimizer muon only)
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["constant", "cosine", "onecycle", "linear"] = "onecycle"
    label_smoothing: float = 0.1
    image_size: PositiveInt = 64
    augment: bool = True
    flip: Literal["random", "alternate"] = "random"   # with augment: random per image, or airbench's alternating flip
    early_stopping: NonNegativeInt = 0              # patience in epochs on val top-1; 0 means off
    tta: Literal[False, True, "flip_translate"] = False  # test-time views: true averages each image and its mirror;
    # flip_translate adds the two one-pixel shifts of both (airbench's six views; validation uses them in the last
    # epoch, the images alone in the others)
    low_res_epochs: NonNegativeInt = 0   # with augment: the first N epochs train on random low_res_size crops
    low_res_size: PositiveInt = 24       # (progressive resizing: 24-pixel steps of the 32-pixel headline cost half)
    lookahead: bool = False              # airbench's lookahead: every 5 steps the weights reset to their moving average
    seed: int = 0
    device: str = "auto"
    amp: SpeedSwitch = "auto"            # bf16 autocast (CPU and CUDA); "auto": what `studylib bench` found fastest
    channels_last: SpeedSwitch = "auto"  # channels_last memory format of model and batches; "auto" as amp
    compile: bool = False                # torch.compile the model
    train_limit: NonNegativeInt = 0                 # use at most this many training images; 0 means all
    val_fraction: Fraction = 0.1            # for datasets without a validation split
    targets: list[float] = [0.5, 0.6, 0.7, 0.8, 0.9]  # val top-1 targets for time-to-accuracy
    profile: bool = False                # torch.profiler summary of a few steps
    output_dir: str = ""                 # "" means runs/<run id>

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing(cls, v):
        if not 0 <= v < 1:
            raise ParameterError("label_smoothing", v, "in [0, 1)")
        return v

    @field_validator("train_limit")
    @classmethod
    def _train_limit(cls, v):
        if v == 1:
            raise ParameterError("train_limit", v, "0 (every training image) or at least 2 (BatchNorm needs two "
                                 "images a batch)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            if v.startswith("cuda"):
                if not torch.cuda.is_available():
                    raise ParameterError("device", v, "'auto' or 'cpu' on this machine, which has no CUDA device")
            return v
        raise ParameterError("device", v, "'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v):
        dataset_spec(v)  # an unknown name is the registry's ParameterError
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v):
        model_family(v)
        return v

    @classmethod
    def from_mapping(cls, values: dict, check_source: bool = True):
        """As StageParams.from_mapping; check_source=False accepts a `pretrained` run that does not exist
        yet (a grid cell whose source cell has not run): train_run checks it again before any work."""
        return validate_mapping(cls, values, cls.stage, cls.allowed, cls.secret, context={"check_source": check_source})

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo):
        if self.pretrained is False and self.finetune == "head":
            raise ParameterError("finetune", self.finetune, "'all' when pretrained is false (a frozen random backbone: "
                                 "nothing to fine-tune)")
        if self.pretrained is False and self.backbone_lr_factor != 1:
            raise ParameterError("backbone_lr_factor", self.backbone_lr_factor, "1 when pretrained is false "
                                 "(random backbone weights: nothing to fine-tune)")
        smallest = min_image_size(self.model)
        if self.image_size < smallest:
            raise ParameterError("image_size", self.image_size, f"at least {smallest} for model '{self.model}'")
        fixed = fixed_image_size(self.model)
        if fixed and self.pretrained is True and self.image_size != fixed:
            raise ParameterError("image_size", self.image_size, f"{fixed} for pretrained '{self.model}', which is built for that size")
        if self.low_res_epochs:
            if not self.augment:
                raise ParameterError("low_res_epochs", self.low_res_epochs, "0 when augment is false (its crops are "
                                     "an augmentation)")
            if self.low_res_epochs >= self.epochs:
                raise ParameterError("low_res_epochs", self.low_res_epochs, f"fewer than epochs ({self.epochs}), so "
                                     "that the last epochs train at the full image size")
            if not smallest <= self.low_res_size < self.image_size:
                raise ParameterError("low_res_size", self.low_res_size, f"at least {smallest} for model '{self.model}' "
                                     f"and under image_size ({self.image_size})")
        check_root(self.dataset, self.root)  # a root where one is needed, an existing folder where one must be
        if isinstance(self.pretrained, str) and (info.context or {}).get("check_source", True):
            self.check_source()
        return self

    def check_source(self) -> dict:
        """The record of the `pretrained` run, refused in one sentence when it is missing, trained another model
        or holds weights that do not fit this run's model (a layer of another shape)."""
        record = source_record(self.pretrained)
        theirs = f"pretrained run {record.get('run_id')} trained {record.get('model')}"
        if record.get("model") != self.model:
            raise ParameterError("pretrained", self.pretrained,
                                 f"a run of model '{self.model}' ({theirs}; this run trains {self.model})")
        state = torch.load(source_run_dir(self.pretrained) / "model.pt", map_location="cpu", weights_only=True)
        try:
            load_backbone(create_model(self.model, record["num_classes"], False, "all", self.head,
                                       image_size=self.image_size), state)
        except ValueError as err:
            raise ParameterError("pretrained", self.pretrained, f"a run whose weights fit this run's model ({theirs} "
                                 f"at {record.get('image_size')} px; this run trains {self.model} at {self.image_size} "
                                 f"px: {err})") from None
        return record

    def run_params(self) -> dict:
        """The parameters that define the run (what the run id hashes): everything but where outputs go."""
        return self.model_dump(exclude={"output_dir"})


# What papermill can inject (`-p`, `-y`, `-f`): plain data. IPython's own globals (In, Out, _i1, ...) and
# constants a notebook imports (UPPER_CASE, e.g. SPLITS) are left out.
PLAIN_DATA = (bool, int, float, str, list, tuple, dict, type(None))
IPYTHON_GLOBALS = frozenset({"In", "Out"})


def injected(name: str, value) -> bool:
    """Whether a notebook global could be a parameter papermill injected: plain data under a public,
    not upper-case name."""
    return (not name.startswith("_") and not name.isupper() and name not in IPYTHON_GLOBALS
            and isinstance(value, PLAIN_DATA))


def unknown_allowed(name: str, known, stage: str) -> str:
    """The "allowed" part of the sentence for an unknown parameter: the nearest known name, then all of them."""
    nearest = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    near = f"the nearest is '{nearest[0]}'; " if nearest else ""
    return f"one of the {stage} parameters ({near}all: {', '.join(sorted(known))})"


def validate_mapping(cls, values: dict, stage: str, allowed: dict | None = None, secret: tuple = (),
                     context: dict | None = None):
    """Build the pydantic model `cls` from `values`, or raise one ParameterError sentence:
    an unknown key, or the first invalid value with what is allowed.

    allowed: the sentence's "allowed" part for some fields, where pydantic's would be unclear;
    secret: fields whose value is never echoed (only its type is named), e.g. storage credentials;
    context: passed to the validators (pydantic's validation context).
    """
    fields = set(cls.model_fields)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ParameterError(unknown[0], values[unknown[0]], unknown_allowed(unknown[0], fields, stage))
    check_no_secret("", values)   # a secret is never a parameter: it would reach the record and the notebook
    try:
        return cls.model_validate(values, context=context)
    except ValidationError as err:
        first = err.errors()[0]
        ctx_err = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ParameterError):
            raise ctx_err from None
        name = str(first["loc"][0]) if first["loc"] else "parameters"
        shown = values.get(name, first.get("input"))
        if name in secret:
            shown = type(shown).__name__
        raise ParameterError(name, shown, (allowed or {}).get(name) or _allowed(first)) from None


def _allowed(error: dict) -> str:
    kind = error.get("type", "")
    if kind == "literal_error":
        return "one of " + error["msg"].split("Input should be ", 1)[-1]
    if kind.startswith("int"):
        return "an integer"
    if kind.startswith("float"):
        return "a number"
    if kind.startswith("bool"):
        return "true or false"
    return error.get("msg", "valid")
