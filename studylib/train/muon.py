"""Muon for conv filters, as airbench uses it (Keller Jordan's airbench94_muon), with SGD for the rest.

Muon keeps a Nesterov momentum of each filter's gradient, flattens it to a matrix (out channels x the
rest) and replaces it by an approximately orthogonal matrix of the same shape (a few Newton-Schulz
iterations): every direction of the update gets about the same size. Before each step the filter is
rescaled to a fixed norm (sqrt of its number of output channels), so the learning rate sets the
update's size relative to the weights and no weight decay is needed.
PyTorch's own `torch.optim.Muon` takes 2-D parameters only and neither renormalises nor flattens conv
filters, so the study carries this variant.

`MuonSGD` is one optimizer over two kinds of parameter group: groups with `muon=True` step as above,
the others as SGD with Nesterov momentum and weight decay (biases, BatchNorm shifts, the linear head).
One optimizer means one schedule over all groups, as for the study's other optimizers.
"""
from __future__ import annotations

import torch

# The quintic's coefficients from airbench: chosen for a steep slope at zero, so three iterations
# bring every singular value near 1 (between about 0.5 and 1.5, which trains as well as exactly 1).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalise(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """A matrix near the orthogonal factor of g (U V^T of its SVD), by Newton-Schulz iterations in bf16."""
    a, b, c = NEWTON_SCHULZ
    x = g.bfloat16()
    x = x / (x.norm() + eps)                     # the largest singular value at most 1
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class MuonSGD(torch.optim.Optimizer):
    """Muon (momentum 0.6, Nesterov) for groups marked muon=True, SGD (Nesterov momentum 0.9, weight
    decay) for the others. Each group's `lr` is its own, so a schedule scales both kinds alike."""

    def __init__(self, groups: list[dict], muon_momentum: float = 0.6, sgd_momentum: float = 0.9):
        for g in groups:
            g.setdefault("muon", False)
            g.setdefault("momentum", muon_momentum if g["muon"] else sgd_momentum)
        super().__init__(groups, {"lr": 1e-3, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["muon"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g)
                g = g.add(buf, alpha=group["momentum"])          # Nesterov
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm())
                    g = orthogonalise(g.reshape(len(g), -1)).view_as(p).to(p.dtype)
                p.add_(g, alpha=-group["lr"])
        return loss
