"""One model factory for torchvision, timm, reference study 003's small VGG family and a fast CIFAR net.

`create_model(name, num_classes, pretrained)` is the public interface: the name alone picks
the library. The classification head is replaced for `num_classes`; with finetune="head" the
backbone is frozen (no gradients, BatchNorm layers held in eval mode) and only the new head trains
(a linear layer, or two fully connected layers as in reference study 004). Every model names its
head (`head_name`), so the backbone's weights can come from another run's checkpoint
(`load_backbone`) and the optimizer can give backbone and head learning rates of their own.
"""
from __future__ import annotations

import re
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from studylib.errors import ParameterError, PretrainedWeightsUnavailable
from studylib.nets import AirbenchNet, FastVGG, SmallVGG
from studylib.paths import check_name

# Reference study 003: "VGG layers" of two 3x3 convs and a 2x2 max-pool, widths 32, 64, 128,
# followed by two dense layers; ablations add BatchNorm and dropout.
VGG_PATTERN = re.compile(r"^smallvgg(?P<blocks>[123])(?P<bn>_bn)?(?P<dropout>_dropout)?$")
VGG_NAMES = [f"smallvgg{b}{bn}{do}" for b in (1, 2, 3) for bn in ("", "_bn") for do in ("", "_dropout")]
# The headline CIFAR-10 net (airbench's shape): fastvgg64 has convs of 64/256/256, fastvgg32 half that width.
FAST_PATTERN = re.compile(r"^fastvgg(?P<width>32|64)$")
# Keller Jordan's airbench nets as published (github.com/KellerJordan/cifar10-airbench): block widths of
# airbench93 (93% on CIFAR-10 in its recipe) and airbench94.
AIRBENCH_WIDTHS = {"airbench93": (64, 128, 128), "airbench94": (64, 256, 256)}
# airbench's net at other block widths, named by them: airbench_32_192_192 (the CIFAR-10 headline's) has
# convs of 32, 192 and 192 filters.
AIRBENCH_PATTERN = re.compile(r"^airbench_(?P<w1>[1-9][0-9]{0,3})_(?P<w2>[1-9][0-9]{0,3})_(?P<w3>[1-9][0-9]{0,3})$")


def airbench_widths(name: str) -> tuple[int, int, int] | None:
    """The block widths of an airbench net's name (airbench93, airbench94, airbench_<w1>_<w2>_<w3>), else None."""
    if name in AIRBENCH_WIDTHS:
        return AIRBENCH_WIDTHS[name]
    m = AIRBENCH_PATTERN.match(name)
    return (int(m["w1"]), int(m["w2"]), int(m["w3"])) if m else None


@lru_cache(maxsize=1)
def torchvision_names() -> frozenset[str]:
    import torchvision  # lazy: seconds to import; only its own models need it
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@lru_cache(maxsize=1)
def timm_names() -> frozenset[str]:
    import timm  # lazy: seconds to import; only its own models need it
    return frozenset(timm.list_models())


def model_family(name: str) -> str:
    """'smallvgg', 'fastvgg', 'airbench', 'torchvision' or 'timm'; raises ParameterError for an unknown name."""
    check_name("model", name)   # it names the run's folder and notebook: a timm tag is no path, no markup
    if VGG_PATTERN.match(name):
        return "smallvgg"
    if FAST_PATTERN.match(name):
        return "fastvgg"
    if airbench_widths(name):
        return "airbench"
    if name in torchvision_names():
        return "torchvision"
    base = name.split(".")[0]
    if base in timm_names():
        return "timm"
    raise ParameterError("model", name, "a torchvision classification model (e.g. shufflenet_v2_x1_0), "
                         f"a timm model (e.g. tiny_vit_5m_224) or one of {', '.join(VGG_NAMES[:1] + VGG_NAMES[-1:])} "
                         "(smallvgg<1-3>[_bn][_dropout]), fastvgg32, fastvgg64, airbench93, airbench94 or "
                         "airbench_<w1>_<w2>_<w3> (block widths, e.g. airbench_32_192_192)")


def min_image_size(name: str) -> int:
    """The smallest input the model's downsampling can take."""
    m = VGG_PATTERN.match(name)
    if m:
        return 2 ** int(m["blocks"])
    if FAST_PATTERN.match(name):
        return 8
    if airbench_widths(name):
        return 9    # 2x2 whitening, then three 2x2 max-pools
    return 32


def fixed_image_size(name: str) -> int | None:
    """Image size a timm model is built for when it cannot take another (vision transformers)."""
    if model_family(name) != "timm":
        return None
    import timm  # lazy: seconds to import; only its own models need it
    cfg = timm.get_pretrained_cfg(name.split(".")[0]) if hasattr(timm, "get_pretrained_cfg") else None
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        return cfg.input_size[-1]
    return None


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear, str]:
    """The last linear layer: its parent, its attribute there, the layer and its qualified name."""
    found = None
    for prefix, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear):
                found = (module, child_name, child, f"{prefix}.{child_name}" if prefix else child_name)
    if found is None:
        raise ValueError("model has no linear classification layer to replace")
    return found


def make_head(in_features: int, num_classes: int, head: str) -> nn.Module:
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    # Study 004: two fully connected layers on top of the frozen backbone.
    return nn.Sequential(nn.Linear(in_features, 256), nn.ReLU(inplace=True), nn.Dropout(0.2),
                         nn.Linear(256, num_classes))


def replace_head(model: nn.Module, num_classes: int, head: str = "linear") -> nn.Module:
    """Swap the last linear layer for a fresh head with `num_classes` outputs; returns the head."""
    parent, attr, last, _ = _last_linear(model)
    new = make_head(last.in_features, num_classes, head)
    setattr(parent, attr, new)
    return new


def _torchvision_pretrained(name: str):
    import torchvision  # lazy: seconds to import; only its own models need it
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_model(name, weights=weights)
    except Exception as err:  # network errors, missing file: say where the file goes
        hub = torch.hub.get_dir()
        filename = weights.url.rsplit("/", 1)[-1]
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for model '{name}' are not in the torch hub cache '{hub}/checkpoints' "
            f"and could not be downloaded ({type(err).__name__}: {err}); fetch {weights.url} into "
            f"'{hub}/checkpoints/{filename}' (or set TORCH_HOME), or set pretrained=False") from err


def _timm_model(name: str, num_classes: int, pretrained: bool, image_size: int | None):
    import timm  # lazy: seconds to import; only its own models need it
    kwargs = {}
    if image_size and fixed_image_size(name) and fixed_image_size(name) != image_size:
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        from huggingface_hub.constants import HF_HUB_CACHE  # lazy: only to name the cache in an error
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for timm model '{name}' are not in the Hugging Face cache '{HF_HUB_CACHE}' "
            f"and could not be downloaded ({type(err).__name__}: {err}); on a connected machine run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy that cache "
            "here (or set HF_HOME), or set pretrained=False") from err


def create_model(name: str, num_classes: int, pretrained: bool = False, finetune: str = "all",
                 head: str = "linear", image_size: int | None = None) -> nn.Module:
    """Build `name` with a `num_classes` head.

    finetune="all" trains every layer; "head" freezes the backbone and trains a new head
    ("linear", or "mlp": two fully connected layers).
    """
    family = model_family(name)
    if family in ("smallvgg", "fastvgg", "airbench") and pretrained:
        raise ParameterError("pretrained", pretrained, f"False for '{name}', which has no published weights")
    if family == "smallvgg":
        m = VGG_PATTERN.match(name)
        model = SmallVGG(num_classes, blocks=int(m["blocks"]), batchnorm=bool(m["bn"]), dropout=bool(m["dropout"]),
                         image_size=image_size or 32)
    elif family == "fastvgg":
        model = FastVGG(num_classes, width=int(FAST_PATTERN.match(name)["width"]))
    elif family == "airbench":
        model = AirbenchNet(num_classes, airbench_widths(name))
    elif family == "torchvision":
        import torchvision  # lazy: seconds to import; only its own models need it
        model = _torchvision_pretrained(name) if pretrained else torchvision.models.get_model(name, num_classes=num_classes)
    else:
        model = _timm_model(name, num_classes, pretrained, image_size)

    if not pretrained and family != "airbench":   # airbench's BatchNorm has its own momentum
        set_batchnorm_momentum(model, FROM_SCRATCH_BN_MOMENTUM)
        if name.startswith("mnasnet"):
            small_head_init(model.classifier[-1])
    model.studylib_head = _last_linear(model)[3]   # the head's place: the last linear layer, or what replaces it
    needs_new_head = (family == "torchvision" and pretrained) or finetune == "head" or head != "linear"
    if needs_new_head:
        replace_head(model, num_classes, head)
    if finetune == "head":
        freeze_backbone(model)
    return model


def head_name(model: nn.Module) -> str:
    """The qualified name of the model's classification head (set by create_model)."""
    return model.studylib_head


def is_head(model: nn.Module, key: str) -> bool:
    """Whether a state-dict key or parameter name belongs to the classification head."""
    return key == head_name(model) or key.startswith(head_name(model) + ".")


class FrozenBatchNorm:
    """Mixin for the BatchNorm layers of a frozen backbone: they stay in eval mode when the model is put in
    train mode, so they normalise with their running statistics and never update them."""

    def train(self, mode: bool = True):
        return super().train(False)


@lru_cache(maxsize=None)
def _frozen(cls: type) -> type:
    return type(f"Frozen{cls.__name__}", (FrozenBatchNorm, cls), {})


def freeze_backbone(model: nn.Module) -> None:
    """No gradients outside the head, and the backbone's BatchNorm layers held in eval mode."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_head(model, name))
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not is_head(model, name):
            m.__class__ = _frozen(type(m))
            m.train(False)


def load_backbone(model: nn.Module, state: dict) -> None:
    """Copy every weight but the head's from `state` (another run's checkpoint of the same architecture);
    the head keeps its fresh weights. Raises ValueError naming the first weight that does not fit."""
    own = {k: v for k, v in model.state_dict().items() if not is_head(model, k)}
    theirs = {k: v for k, v in state.items() if not is_head(model, k)}
    for key in sorted(set(own) | set(theirs)):
        if key not in theirs or key not in own:
            raise ValueError(f"weight '{key}' is {'missing from' if key not in theirs else 'extra in'} the checkpoint")
        if own[key].shape != theirs[key].shape:
            raise ValueError(f"weight '{key}' has shape {list(theirs[key].shape)} in the checkpoint and "
                             f"{list(own[key].shape)} in this model")
    model.load_state_dict(theirs, strict=False)   # what is left out is the head's


# torchvision builds mobilenet_v3 with BatchNorm momentum 0.01 and mnasnet with 0.0003, tuned for
# ImageNet-length schedules. Trained from scratch for a few hundred steps, their running statistics
# never converge and eval-mode accuracy stays at chance, so from-scratch models use PyTorch's
# default 0.1. Pretrained models keep the library's value (reference study 002's setup).
FROM_SCRATCH_BN_MOMENTUM = 0.1


def small_head_init(linear: nn.Linear) -> None:
    """N(0, 0.01) weights and zero bias, as torchvision initialises mobilenet_v3's head.

    torchvision's MNASNet draws its classifier with kaiming_uniform(mode="fan_out"): with 1000
    ImageNet classes that is small, but with 10 the weights are 10x larger, the initial logits have
    a standard deviation of about 6 and the first epochs' loss is 7-10 (ln 10 = 2.3 is chance); at the
    quick study's settings mnasnet0_5 never recovered (test top-1 0.16-0.20).
    """
    nn.init.normal_(linear.weight, 0, 0.01)
    nn.init.zeros_(linear.bias)


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def size_mb(model: nn.Module) -> float:
    """Size of the state dict (parameters and buffers) in MB (10^6 bytes), as study 002 reported it."""
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return n / 1e6


def gmacs(model: nn.Module, image_size: int) -> float:
    """Multiply-accumulates per image (10^9) at `image_size`, counted by torch.utils.flop_counter."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
