"""The study's own networks, built here rather than taken from a library: reference study 003's VGG,
a fast VGG in airbench's shape (`fastvgg32`/`fastvgg64`), and Keller Jordan's airbench nets as published
(`airbench93`/`airbench94`) or at other block widths (`airbench_32_192_192`). `studylib.models` names them and
builds them with the library models.
"""
from __future__ import annotations

import torch
from torch import nn


class SmallVGG(nn.Module):
    """Study 003's CIFAR VGG: 1-3 blocks of (conv-relu[-bn]) x2 + max-pool [+ dropout], then flatten and
    2 dense layers (128 units, then the classes), as 003 built it in Keras.

    Flattening ties the first dense layer to the image size: 128 x 4 x 4 inputs for 3 blocks at 32 px.
    """

    def __init__(self, num_classes: int, blocks: int = 3, batchnorm: bool = False, dropout: bool = False,
                 widths: tuple[int, ...] = (32, 64, 128), hidden: int = 128, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(blocks):
            out = widths[i]
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, out, 3, padding=1, bias=not batchnorm), nn.ReLU(inplace=True)]
                if batchnorm:
                    layers.append(nn.BatchNorm2d(out))
                in_ch = out
            layers.append(nn.MaxPool2d(2))
            if dropout:
                layers.append(nn.Dropout(0.2 + 0.1 * i))
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** blocks
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(in_ch * side * side, hidden), nn.ReLU(inplace=True)]
        if batchnorm:
            head.append(nn.BatchNorm1d(hidden))
        if dropout:
            head.append(nn.Dropout(0.5))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.BatchNorm2d(c_out), nn.GELU()]


class FastVGG(nn.Module):
    """A fast CIFAR-10 net after airbench (Keller Jordan's): a conv stem, then three blocks of
    conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU, global max-pooling and a
    linear classifier whose logits are scaled down (1/9, as airbench does, so that early training
    is not driven by a few large logits). Widths (w, 4w, 4w) for w = 32 or 64."""

    def __init__(self, num_classes: int, width: int = 64):
        super().__init__()
        w = (width, 4 * width, 4 * width)
        self.features = nn.Sequential(*_conv_bn(3, 24 if width == 64 else 16),
                                      *_conv_bn(24 if width == 64 else 16, w[0], pool=True), *_conv_bn(w[0], w[0]),
                                      *_conv_bn(w[0], w[1], pool=True), *_conv_bn(w[1], w[1]),
                                      *_conv_bn(w[1], w[2], pool=True), *_conv_bn(w[2], w[2]),
                                      nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(w[2], num_classes, bias=False)
        self.scale = 1 / 9

    def forward(self, x):
        return self.classifier(self.features(x)) * self.scale


class _BiasOnlyBatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: a fixed scale of 1 (only the shift learns), eps 1e-12, running statistics that
    follow the batches quickly (PyTorch momentum 0.4)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


def _dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 conv whose first c_in filters start as the identity (airbench's init), the rest as PyTorch's."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


class AirbenchNet(nn.Module):
    """airbench's CIFAR-10 net: a frozen 2x2 patch-whitening conv (24 filters: the training patches'
    eigenvectors and their negatives, `fit_whitening`), three blocks of conv -> max-pool -> BatchNorm -> GELU ->
    conv -> BatchNorm -> GELU with shift-only BatchNorm, global max-pooling and a linear head whose logits
    are scaled by 1/9. `lr_factor` names what its recipe trains at another learning rate (BatchNorm shifts
    at 64x); `epoch_finished` stops the whitening bias after the first epoch (airbench: after 3 of its 10)."""

    WHITEN = 24   # 2 x 3 channels x 2 x 2 pixels
    # airbench lets the bias learn for 3 epochs; on this CPU 1 epoch made the headline's 12 epochs 8 s faster
    # (epochs 2 and 3 at 46 s instead of 50) with the same test top-1 (seed 0: 90.12%, both)
    WHITEN_BIAS_EPOCHS = 1

    def __init__(self, num_classes: int, widths: tuple[int, int, int]):
        super().__init__()
        self.whiten = nn.Conv2d(3, self.WHITEN, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        layers: list[nn.Module] = []
        c_in = self.WHITEN
        for w in widths:
            layers += [_dirac_conv(c_in, w), nn.MaxPool2d(2), _BiasOnlyBatchNorm(w), nn.GELU(),
                       _dirac_conv(w, w), _BiasOnlyBatchNorm(w), nn.GELU()]
            c_in = w
        self.features = nn.Sequential(nn.GELU(), *layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x):
        return self.classifier(self.features(self.whiten(x))) / 9

    def epoch_finished(self, epoch: int) -> None:
        """Called by the training loop after each epoch. After WHITEN_BIAS_EPOCHS the whitening bias stops
        learning: nothing before the first 3x3 conv then needs a gradient, and every later backward pass
        skips that conv's input gradient (about a twelfth of airbench93's step, 8% of airbench_32_192_192's)."""
        if epoch >= self.WHITEN_BIAS_EPOCHS:
            self.whiten.bias.requires_grad_(False)

    @torch.no_grad()
    def fit_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalised training images (N x 3 x H x W): the 2x2 patches'
        covariance eigenvectors, each scaled by 1/sqrt(its eigenvalue + eps), and their negatives."""
        x = images.float().contiguous()
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors.T / torch.sqrt(values.clamp_min(0) + eps)[:, None]).flip(0).reshape(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    @staticmethod
    def lr_factor(name: str, optimizer: str = "sgd") -> float:
        """The recipe's learning-rate factor for a parameter. With SGD (airbench94): 64 for BatchNorm
        shifts, 1 for the rest. With Muon on the filters (airbench94_muon): 16 for every shift (BatchNorm's
        and the whitening conv's), 1 for the head: airbench's 0.053 and 0.67 per summed loss, the head's
        restated for this net's logits / 9 instead of its logits / width with a unit-std head."""
        if not name.endswith(".bias"):
            return 1.0
        if optimizer == "muon":
            return 16.0
        return 1.0 if name.startswith("whiten") else 64.0
