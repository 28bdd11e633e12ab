"""The optimizers: torch.optim's names, arguments and defaults; the update
rules as ``../shared/ALGORITHMS.md`` (and docs/algorithms.md) write them.

Each class only names its rule and its defaults; the machinery is in
:class:`fusedopt.optimizer.Optimizer` and the math in ``csrc/kernels.cpp``.
"""

from __future__ import annotations

from typing import Any, Iterable

from .optimizer import Optimizer, Rule

__all__ = ["Momentum", "SGD", "Adadelta", "Adam", "AdamW"]


class Momentum(Optimizer):
    """Heavy-ball momentum, the course's form::

        v <- momentum * v - lr * g
        w <- w + v

    State: ``velocity``. With a constant lr this is ``SGD(momentum=...)``
    with ``velocity = -lr * momentum_buffer``.
    """

    rule = Rule.named("momentum")

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.9):
        super().__init__(params, dict(lr=lr, momentum=momentum))


class SGD(Optimizer):
    """SGD exactly as ``torch.optim.SGD``::

        g <- -g                          if maximize
        g <- g + weight_decay * w
        b <- g                           on the first step
        b <- momentum * b + (1 - dampening) * g   afterwards
        g <- g + momentum * b  if nesterov, else  g <- b
        w <- w - lr * g

    State: ``momentum_buffer`` (only when momentum != 0).
    """

    rule = Rule.named("sgd")

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ):
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                 nesterov=nesterov, maximize=maximize),
        )


class Adadelta(Optimizer):
    """Adadelta as ``torch.optim.Adadelta`` (Zeiler 2012), ``scale="updates"``::

        g   <- g + weight_decay * w          (after g <- -g if maximize)
        Eg  <- rho * Eg + (1 - rho) * g^2
        dx  <- sqrt(Edx + eps) / sqrt(Eg + eps) * g
        Edx <- rho * Edx + (1 - rho) * dx^2
        w   <- w - lr * dx

    or the course's variant, ``scale="weights"``, which tracks squared
    weights instead of squared updates (``gamma = 1 - rho``)::

        Sg <- rho * Sg + (1 - rho) * g^2
        Sw <- rho * Sw + (1 - rho) * w^2     (w before this update)
        w  <- w - lr * sqrt((Sw + eps) / (Sg + eps)) * g

    State: ``square_avg`` and ``acc_delta`` (updates) or ``square_weight_avg`` (weights).
    """

    rule = Rule.named("adadelta")

    def __init__(
        self,
        params: Iterable,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        scale: str = "updates",
    ):
        super().__init__(
            params,
            dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, scale=scale),
        )


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (AMSGrad and AdamW's decoupled decay included)::

        g    <- g + weight_decay * w             (coupled; after g <- -g if maximize)
        w    <- (1 - lr * weight_decay) * w      (decoupled instead, AdamW)
        m    <- beta1 * m + (1 - beta1) * g
        v    <- beta2 * v + (1 - beta2) * g^2
        vmax <- max(vmax, v)                     (amsgrad; used in place of v below)
        w    <- w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The course's Adam is this rule with ``betas = (1 - beta, 1 - gamma)``.
    State: ``exp_avg``, ``exp_avg_sq``, and ``max_exp_avg_sq`` with amsgrad.
    """

    rule = Rule.named("adam")

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                 maximize=maximize, decoupled_weight_decay=decoupled_weight_decay),
        )

    def _normalized(self, group: dict[str, Any]) -> dict[str, Any]:
        if isinstance(group.get("betas"), list):  # a JSON round trip turns tuples into lists
            group["betas"] = tuple(group["betas"])
        return group


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW`` (weight_decay 1e-2)."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
