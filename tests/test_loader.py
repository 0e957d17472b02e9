"""The data path: the one-gather crop and flip equals the per-image definition; batches repeat exactly."""
import pytest
import torch
import torch.nn.functional as F

from studylib.data.loader import TensorBatches, random_crop_flip


def reference_crop_flip(x, seed, pad, size=None):
    """The definition, one image at a time: reflect-pad, crop a size x size window (the image's size by default)
    at a random offset, flip half the images."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = x.shape
    size = size or h
    flip = torch.rand(b, generator=g) < 0.5
    offsets = (torch.randint(0, h + 2 * pad - size + 1, (b, 2), generator=g) if pad or size < h
               else torch.zeros(b, 2, dtype=torch.long))
    padded = F.pad(x.float(), (pad,) * 4, mode="reflect").to(x.dtype) if pad else x
    out = []
    for i in range(b):
        dy, dx = offsets[i].tolist()
        img = padded[i, :, dy:dy + size, dx:dx + size]
        out.append(img.flip(-1) if flip[i] else img)
    return torch.stack(out)


def test_crop_flip_matches_the_per_image_definition():
    x = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    for pad in (0, 1, 3):
        got = random_crop_flip(x, torch.Generator().manual_seed(7), pad)
        assert got.dtype == torch.uint8 and got.shape == x.shape
        assert torch.equal(got, reference_crop_flip(x, 7, pad))
    # float input gives the same pixels
    got = random_crop_flip(x.float(), torch.Generator().manual_seed(7), 2)
    assert torch.equal(got, reference_crop_flip(x, 7, 2).float())
    # smaller crops: a window anywhere in the padded image, with or without padding
    for pad, size in ((2, 12), (0, 10)):
        got = random_crop_flip(x, torch.Generator().manual_seed(7), pad, size=size)
        assert got.shape == (24, 3, size, size) and torch.equal(got, reference_crop_flip(x, 7, pad, size))


def test_low_res_epochs_train_on_smaller_crops_then_on_the_whole_images():
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    train = TensorBatches(images, torch.arange(40), 8, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, augment=True,
                          channels_last=True, low_res_epochs=2, low_res_size=12)
    epochs = [list(train) for _ in range(3)]
    assert [{tuple(x.shape[2:]) for x, _ in e} for e in epochs] == [{(12, 12)}, {(12, 12)}, {(16, 16)}]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for e in epochs for x, _ in e)
    # evaluation batches (no augmentation) always see the whole images
    val = TensorBatches(images, torch.arange(40), 8, mean=[0.5] * 3, std=[0.25] * 3, low_res_epochs=2, low_res_size=12)
    assert {tuple(x.shape[2:]) for x, _ in val} == {(16, 16)}


def test_batches_are_normalised_and_repeat_with_the_seed():
    images = torch.randint(0, 256, (50, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(50) % 5
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]

    def epoch(**kw):
        tb = TensorBatches(images, labels, 16, mean=mean, std=std, **kw)
        return [(x.clone(), y.clone()) for x, y in tb]

    plain = epoch()
    assert [len(y) for _, y in plain] == [16, 16, 16, 2]
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    assert torch.equal(torch.cat([x for x, _ in plain]), (images.float() - m) / s)
    assert torch.equal(torch.cat([y for _, y in plain]), labels)

    a, b = epoch(shuffle=True, augment=True, seed=3), epoch(shuffle=True, augment=True, seed=3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    order = torch.cat([y for _, y in a])
    assert sorted(order.tolist()) == sorted(labels.tolist()) and not torch.equal(order, labels)
    assert TensorBatches(images, labels, 16, mean=mean, std=std).batch_sizes() == [16, 16, 16, 2]


def flipped_per_epoch(flip, epochs=4, n=40):
    """For each epoch, which images (by id) the loader mirrored. Each image's pixels rise from left to right,
    so after a crop of at most 1 pixel the middle columns still rise unless the image was flipped."""
    images = (torch.arange(16) * 8).view(1, 1, 1, 16).expand(n, 3, 16, 16).to(torch.uint8).contiguous()
    ids = torch.arange(n)
    tb = TensorBatches(images, ids, 8, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, augment=True, seed=5,
                       flip=flip)
    result = []
    for _ in range(epochs):
        flipped = torch.zeros(n, dtype=torch.bool)
        for x, y in tb:
            flipped[y] = x[:, 0, 8, 9] < x[:, 0, 8, 7]
        result.append(flipped)
    return result


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    epochs = flipped_per_epoch("alternate")
    assert 10 < int(epochs[0].sum()) < 30                      # a random half in the first epoch
    for before, after in zip(epochs, epochs[1:]):
        assert torch.equal(after, ~before)                      # then each image the other way round
    assert all(torch.equal(a, b) for a, b in zip(epochs, flipped_per_epoch("alternate")))  # repeats with the seed
    # random flips draw anew each epoch: some images keep their orientation from one epoch to the next
    randomly = flipped_per_epoch("random")
    assert any(bool((a == b).any()) for a, b in zip(randomly, randomly[1:]))


def test_an_unknown_flip_is_refused():
    with pytest.raises(ValueError, match="flip"):
        TensorBatches(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4), 2, mean=[0] * 3, std=[1] * 3,
                      flip="sometimes")
