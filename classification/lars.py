"""LARS (layer-wise adaptive rate scaling), the linear probe's optimizer in MAE (from MoCo v3).

For each parameter with more than one dimension, the gradient plus weight decay ``u = g + wd p``
is rescaled by the trust ratio ``eta ||p|| / ||u||`` (1 where either norm is zero); parameters
with ``ndim <= 1`` (biases, norm weights) get neither weight decay nor the rescaling. Then SGD
momentum without dampening: ``mu = momentum mu + u``, ``p -= lr mu``. Same rule as MAE's
``util/lars.py`` (trust coefficient 0.001, momentum 0.9, no Nesterov); per-group ``lr`` is set
by the schedule each iteration (``lr_scale`` 1).
"""
from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """See the module docstring."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * p_norm / u_norm
                    trust = torch.where((p_norm > 0) & (u_norm > 0), ratio,
                                        torch.ones_like(p_norm))
                    update = update * trust
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss
