"""Batches from in-memory uint8 tensors, augmented as tensors (airbench's data path).

The whole split sits on the training device as uint8. A batch is an index into it, a cast,
an optional random crop and horizontal flip done as tensor ops, and a normalisation.
No worker processes, no per-image Python.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Per-image random crop (reflect padding `pad`) and horizontal flip of a B x C x S x S batch."""
    b, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dev = x.device
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[bi, ci, rows, cols]
    flip = (torch.rand(b, generator=generator, device="cpu") < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class TensorBatches:
    """Iterate (images, labels) batches over uint8 tensors.

    images: N x 3 x S x S uint8 (moved to `device` once); mean/std: per-channel floats.
    With shuffle, the order comes from `seed` and the epoch number, so runs repeat exactly.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, mean, std,
                 device: str = "cpu", shuffle: bool = False, augment: bool = False, seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment, seed, drop_last
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.pad = max(1, images.shape[-1] // 16)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        n = len(self.labels)
        order = torch.randperm(n, generator=g).to(self.device) if self.shuffle else None
        for k in range(len(self)):
            sl = slice(k * self.batch_size, min(n, (k + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            x = self.images[idx].float()
            if self.augment:
                x = random_crop_flip(x, g, self.pad)
            x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield x, self.labels[idx]
