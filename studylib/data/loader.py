"""Batches from in-memory uint8 tensors, augmented as tensors (airbench's data path).

The whole split sits on the training device as uint8. A batch is an index into it, a random
crop and horizontal flip done as one gather on the uint8 pixels, then a cast and a
normalisation in place, in the run's memory format (NCHW, or channels_last when the run trains
in it, on a CPU as on a GPU). No worker processes, no per-image Python, and on a GPU no
host-device copy or synchronisation: the random numbers come from a generator on the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int,
                     flip: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
    """Per-image random crop (reflect padding `pad`) and horizontal flip of a B x C x H x W batch.

    Works on any dtype (the loader calls it on uint8, a quarter of the bytes of float32). The
    crop and the flip are one gather: for image i, output pixel (r, c) reads padded pixel
    (r + dy_i, c + dx_i), with c mirrored when image i is flipped. `flip`: which images to
    mirror (B booleans); None draws each with probability 1/2. `size`: the crops' side, H by
    default (the translation of airbench); smaller, a size x size window anywhere in the padded image.
    """
    b, c, h, w = x.shape
    size = size or h
    dev = x.device
    if flip is None:
        flip = torch.rand(b, generator=generator, device=generator.device).to(dev) < 0.5
    else:
        flip = flip.to(dev)
    cols = torch.arange(size, device=dev).expand(b, size)
    cols = torch.where(flip[:, None], size - 1 - cols, cols)
    if pad <= 0 and size == h:
        return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    offsets = torch.randint(0, h + 2 * pad - size + 1, (b, 2), generator=generator, device=generator.device).to(dev)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad > 0 else x
    width = w + 2 * pad
    rows = torch.arange(size, device=dev)[None, :] + offsets[:, :1]         # b x size
    cols = cols + offsets[:, 1:]                                            # b x size
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, size * size)
    return padded.flatten(2).gather(2, flat.expand(b, c, size * size)).view(b, c, size, size)


class TensorBatches:
    """Iterate (images, labels) batches over uint8 tensors.

    images: N x 3 x S x S uint8 (moved to `device` once); mean/std: per-channel floats.
    With shuffle, the order comes from `seed` and the epoch number, so runs repeat exactly
    (on CPU; a GPU draws its own random numbers, repeatable on that GPU).
    flip (with augment): "random" mirrors each image with probability 1/2 every epoch; "alternate" is
    airbench's alternating flip: a random half of the images (drawn once from `seed`) is mirrored in
    even epochs and the other half in odd ones, so every image is seen both ways every two epochs.
    low_res_epochs (with augment): the first that many passes yield random low_res_size x low_res_size windows
    of the images (no padding) instead of full-size crops (progressive resizing: on the CIFAR-10 headline's net a
    step on 28 of 32 pixels costs about three quarters, on 24 about half).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, mean, std,
                 device: str = "cpu", shuffle: bool = False, augment: bool = False, seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False, flip: str = "random",
                 low_res_epochs: int = 0, low_res_size: int = 0):
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
        self.flip = flip
        self.low_res_epochs, self.low_res_size = (low_res_epochs, low_res_size) if augment else (0, 0)
        if flip == "alternate":
            g = torch.Generator(device=self.images.device).manual_seed(self.seed * 100_003 - 1)
            self.flip_even = torch.rand(len(self.labels), generator=g, device=self.images.device) < 0.5
        elif flip != "random":
            raise ValueError(f"flip must be 'random' or 'alternate', not {flip!r}")

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The size of each batch of one pass, in order (the last one may be smaller)."""
        n, b = len(self.labels), self.batch_size
        return [min(b, n - k * b) for k in range(len(self))]

    def __iter__(self):
        g = torch.Generator(device=self.images.device).manual_seed(self.seed * 100_003 + self.epoch)
        flips = None
        if self.flip == "alternate":
            flips = self.flip_even if self.epoch % 2 == 0 else ~self.flip_even
        size = self.low_res_size if self.epoch < self.low_res_epochs else None
        self.epoch += 1
        n = len(self.labels)
        order = torch.randperm(n, generator=g, device=self.images.device) if self.shuffle else None
        for k in range(len(self)):
            lo, hi = k * self.batch_size, min(n, (k + 1) * self.batch_size)
            idx = order[lo:hi] if order is not None else torch.arange(lo, hi, device=self.images.device)
            x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if self.augment:
                # a low-res crop is already a random window of the image: no padding to translate it further
                x = random_crop_flip(x, g, 0 if size else self.pad,
                                     None if flips is None else flips.index_select(0, idx), size)
            # one new float tensor, already in the run's memory format (channels_last: N x H x W x C in
            # memory); normalised in place, which keeps that layout. The uint8 split is never written.
            x = x.to(torch.float32, memory_format=self.memory_format, copy=True).sub_(self.mean).div_(self.std)
            yield x, y
