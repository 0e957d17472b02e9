"""airbench's pieces in the study: its net (whitening conv fitted to the training images, shift-only BatchNorm,
BatchNorm shifts at 64x the learning rate, a whitening bias that learns for the first epoch) and its lookahead (studylib.nets, train.setup, train.loop)."""
import pytest
import torch
from torch import nn

from studylib.data.loader import TensorBatches
from studylib.errors import ParameterError
from studylib.models import create_model, min_image_size
from studylib.train.loop import Lookahead, fit
from studylib.train.setup import build_optimizer, build_schedule


def test_the_whitening_conv_whitens_the_patches_it_was_fitted_on():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.9, 0.8], [0.0, 0.4, 0.3], [0.0, 0.0, 0.2]])   # correlated channels
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16)).cumsum(-1) * 10   # and neighbours
    # (variances far above the fit's eps of 5e-4, which damps directions of smaller variance)
    net = create_model("airbench93", 10)
    net.fit_whitening(images)
    out = nn.functional.conv2d(images, net.whiten.weight[:12])        # the 12 eigenvector filters, no bias
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.02)                # whitened: unit variance, uncorrelated
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])  # and their negatives
    assert not net.whiten.weight.requires_grad


def test_batchnorm_learns_shifts_only_and_they_train_64x_faster_with_the_same_decay():
    net = create_model("airbench94", 10)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.weight.requires_grad and m.bias.requires_grad for m in bns)
    assert all(m.eps == 1e-12 and m.momentum == 0.4 for m in bns)
    opt = build_optimizer(net, "sgd", lr=0.1, weight_decay=1e-3)
    by_lr = {g["lr"]: g for g in opt.param_groups}
    shifts = {id(m.bias) for m in bns}
    assert {id(p) for p in by_lr[0.1 * 64]["params"]} == shifts
    assert by_lr[0.1 * 64]["weight_decay"] == 1e-3 / 64 and by_lr[0.1]["weight_decay"] == 1e-3
    assert net.classifier.weight in by_lr[0.1]["params"]
    schedule = build_schedule(opt, "onecycle", 20)
    for _ in range(7):
        opt.step()
        schedule.step()
    assert by_lr[0.1 * 64]["lr"] == 64 * by_lr[0.1]["lr"]                 # the schedule keeps the ratio


def test_airbench_takes_small_images_and_starts_as_identity_convs():
    net = create_model("airbench93", 3)
    assert net(torch.randn(2, 3, min_image_size("airbench93"), min_image_size("airbench93"))).shape == (2, 3)
    conv = net.features[1]
    assert torch.equal(conv.weight[:24, :, 1, 1], torch.eye(24))


def test_an_airbench_name_with_widths_builds_those_widths_and_a_bad_one_is_refused():
    net = create_model("airbench_32_160_192", 10)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 160, 160, 192, 192]
    assert net.classifier.in_features == 192
    published = [c.out_channels for c in create_model("airbench93", 10).features if isinstance(c, nn.Conv2d)]
    assert published[::2] == [64, 128, 128]
    for bad in ("airbench_0_192_192", "airbench_32_192", "airbench_32_192_192_1"):
        with pytest.raises(ParameterError, match="airbench_<w1>_<w2>_<w3>"):
            create_model(bad, 10)


def test_lookahead_resets_the_weights_to_their_moving_average_every_five_steps():
    model = nn.Linear(2, 1, bias=False)
    start = model.weight.detach().clone()
    hook = Lookahead(model, total_steps=100)
    seen = []
    for step in range(10):
        with torch.no_grad():
            model.weight += 1.0
        before = model.weight.detach().clone()
        hook(step)
        seen.append((before, model.weight.detach().clone()))
    for i, (before, after) in enumerate(seen):
        if (i + 1) % 5:
            assert torch.equal(before, after)                     # between updates the weights are their own
    decay = 0.95 ** 5 * (5 / 100) ** 3
    assert torch.allclose(seen[4][1], start + (1 - decay) * 5)    # step 5: the average moved most of the way
    last = Lookahead(model, total_steps=1)
    with torch.no_grad():
        model.weight += 3.0
    last(0)                                                        # the last step: the weights become the average
    assert torch.allclose(model.weight, last.average["weight"]) and not torch.allclose(model.weight, seen[-1][1] + 3)


def test_the_whitening_bias_learns_for_the_first_epoch_then_stops():
    """The whitening bias learns in the first epoch only (airbench: 3); the loop tells the net each epoch's end."""
    torch.manual_seed(0)
    net = create_model("airbench93", 3)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    data = TensorBatches(images, torch.arange(16) % 3, 8, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True)
    optimizer = build_optimizer(net, "sgd", lr=0.05, weight_decay=0)
    after = []   # (whitening bias, whether it still learns) after each epoch
    fit(net, data, data, epochs=3, optimizer=optimizer, schedule=None, loss_fn=nn.CrossEntropyLoss(), device="cpu",
        progress=False, on_epoch=lambda _: after.append((net.whiten.bias.detach().clone(), net.whiten.bias.requires_grad)))
    start = torch.zeros_like(after[0][0])
    moved = [not torch.equal(b, prev) for (b, _), prev in zip(after, [start] + [b for b, _ in after])]
    assert moved == [True, False, False]
    assert [learns for _, learns in after] == [False, False, False]
    assert all(p.requires_grad for p in net.features.parameters() if p.dim() == 4)   # the convs go on learning
