"""Muon for conv filters with SGD for the rest (studylib.train.muon), as build_optimizer("muon") sets it up,
and the linear schedule airbench94_muon uses."""
import pytest
import torch
from torch import nn

from studylib.models import create_model
from studylib.train.muon import MuonSGD, orthogonalise
from studylib.train.setup import build_optimizer, build_schedule


def test_orthogonalise_brings_every_singular_value_near_one():
    torch.manual_seed(0)
    for shape in [(16, 72), (72, 16)]:                        # wide and tall
        scales = torch.logspace(-1.5, 0, min(shape)) * 7     # singular values over a decade and a half
        u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape)))
        v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape)))
        g = u @ torch.diag(scales) @ v.T
        out = orthogonalise(g).float()
        assert out.shape == g.shape
        s = torch.linalg.svdvals(out)
        assert s.min() > 0.5 and s.max() < 1.5                # airbench's three steps: about 0.5 to 1.5
        # the same singular vectors: out is u' s' v'^T with g's u and v
        assert torch.allclose(u.T @ out @ v, torch.diag(torch.diagonal(u.T @ out @ v)), atol=0.05)


def test_a_muon_step_renormalises_the_filter_then_moves_it_by_an_orthogonal_update():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4, 3, 3) * 5)
    opt = MuonSGD([{"params": [w], "lr": 0.1, "muon": True}])
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    rescaled = before * (8 ** 0.5 / before.norm())
    update = (rescaled - w.detach()).reshape(8, -1) / 0.1
    # Nesterov at momentum 0.6 on the first step: the orthogonalised (1 + 0.6) x gradient
    expected = orthogonalise((w.grad * 1.6).reshape(8, -1)).float()
    assert torch.allclose(update, expected, atol=1e-2)


def test_the_other_groups_step_as_pytorchs_nesterov_sgd_with_weight_decay():
    torch.manual_seed(0)
    ours, theirs = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5))
    with torch.no_grad():
        theirs.copy_(ours)
    a = MuonSGD([{"params": [ours], "lr": 0.3, "weight_decay": 0.01}])
    b = torch.optim.SGD([theirs], lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.01)
    for _ in range(4):
        g = torch.randn(5)
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_build_optimizer_gives_the_filters_to_muon_and_the_shifts_16x_the_head():
    net = create_model("airbench93", 10)
    opt = build_optimizer(net, "muon", lr=2.0, weight_decay=1e-3, muon_lr=0.24)
    assert isinstance(opt, MuonSGD)
    muon = [g for g in opt.param_groups if g["muon"]]
    filters = {id(p) for p in net.parameters() if p.ndim == 4 and p.requires_grad}
    assert len(muon) == 1 and {id(p) for p in muon[0]["params"]} == filters and muon[0]["lr"] == 0.24
    by_lr = {g["lr"]: g for g in opt.param_groups if not g["muon"]}
    shifts = {id(p) for n, p in net.named_parameters() if n.endswith(".bias") and p.requires_grad}
    assert {id(p) for p in by_lr[2.0 * 16]["params"]} == shifts          # BatchNorm's and the whitening conv's
    assert [id(p) for p in by_lr[2.0]["params"]] == [id(net.classifier.weight)]
    assert by_lr[2.0 * 16]["weight_decay"] == 1e-3 / 16


def test_the_linear_schedule_falls_from_each_groups_peak_to_zero_and_onecycle_leaves_muons_momenta():
    net = create_model("airbench93", 10)
    opt = build_optimizer(net, "muon", lr=2.0, weight_decay=0.0, muon_lr=0.24)
    schedule = build_schedule(opt, "linear", 10)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step()
    assert sorted(lrs[0]) == [0.24, 2.0, 32.0] and lrs[0][-1] == 0.24    # the muon group last
    assert all(abs(step[2] - 0.24 * (1 - i / 10)) < 1e-9 for i, step in enumerate(lrs))
    assert all(g["lr"] == 0 for g in opt.param_groups)
    opt = build_optimizer(net, "muon", lr=2.0, weight_decay=0.0, muon_lr=0.24)
    schedule = build_schedule(opt, "onecycle", 10)
    for _ in range(3):
        opt.step()
        schedule.step()
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9, 0.6]


def test_backbone_filters_take_the_backbone_lr_factor_under_muon():
    net = create_model("smallvgg3_bn", 10)
    opt = build_optimizer(net, "muon", lr=0.02, weight_decay=0.0, backbone_lr_factor=0.1, muon_lr=0.2)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["lr"] == pytest.approx(0.02)        # every conv is the backbone's
    assert {id(p) for p in muon[0]["params"]} == {id(p) for p in net.parameters() if p.ndim == 4}
    assert sorted(g["lr"] for g in opt.param_groups if not g["muon"]) == pytest.approx([0.002, 0.02])
