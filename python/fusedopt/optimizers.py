"""The optimizers: torch.optim's names, arguments and defaults; the update
rules as docs/algorithms.md writes them.

Each class only names its rule and its defaults; the machinery is in
:class:`fusedopt.optimizer.Optimizer` and the math in ``csrc/kernels.cpp``.
Every class also takes the keyword options of
:class:`~fusedopt.optimizer.Optimizer`: ``nonfinite="apply" | "skip" | "raise"``,
what a step does when a gradient holds a NaN or an infinity, and the
storage options ``state_dtype``, ``master_weights``, ``kahan_sum``,
``rounding``, ``seed``, ``state_bits``, ``block_size`` and ``min_8bit_size``
(docs/precision.md).
"""

from __future__ import annotations

from typing import Any, Iterable

from . import _core
from .optimizer import Optimizer

__all__ = ["Momentum", "SGD", "Adadelta", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax",
           "Lion"]  # one class per rule of the core
# The names bitsandbytes and torchao users know: rule classes whose state is
# 8-bit by default (state_bits=8; every rule takes state_bits, docs/precision.md).
EIGHT_BIT = ["Adam8bit", "AdamW8bit", "Lion8bit", "SGD8bit"]


class Momentum(Optimizer):
    """Heavy-ball momentum, the course's form::

        v <- momentum * v - lr * g
        w <- w + v

    State: ``velocity``. With a constant lr this is ``SGD(momentum=...)``
    with ``velocity = -lr * momentum_buffer``.
    """

    rule = _core.momentum

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.9, **options: Any):
        super().__init__(params, dict(lr=lr, momentum=momentum), **options)


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

    rule = _core.sgd

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
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                 nesterov=nesterov, maximize=maximize),
            **options,
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

    rule = _core.adadelta

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
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize, scale=scale),
            **options,
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

    rule = _core.adam

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
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                 maximize=maximize, decoupled_weight_decay=decoupled_weight_decay),
            **options,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW`` (weight_decay 1e-2).

    As torch's, it stays decoupled whatever it loads: ``load_state_dict`` of
    an Adam's state_dict keeps ``decoupled_weight_decay=True``.
    """

    fixed_hyperparameters = {"decoupled_weight_decay": True}

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
        **options: Any,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, **options)


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop`` (Hinton's lecture 6e; centered: Graves 2013)::

        g    <- g + weight_decay * w             (after g <- -g if maximize)
        v    <- alpha * v + (1 - alpha) * g^2
        gbar <- alpha * gbar + (1 - alpha) * g   (centered)
        avg  <- sqrt(v - gbar^2) + eps           (centered; else sqrt(v) + eps)
        b    <- momentum * b + g / avg           (momentum > 0)
        w    <- w - lr * b                       (momentum > 0; else w - lr * g / avg)

    State: ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    rule = _core.rmsprop

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                 centered=centered, maximize=maximize),
            **options,
        )


class Adagrad(Optimizer):
    """Adagrad as ``torch.optim.Adagrad`` (Duchi et al. 2011)::

        g    <- g + weight_decay * w             (after g <- -g if maximize)
        lr_t  = lr / (1 + (t - 1) * lr_decay)
        s    <- s + g^2
        w    <- w - lr_t * g / (sqrt(s) + eps)

    State: ``sum``, starting at ``initial_accumulator_value`` (per group:
    torch uses the constructor's value for every group).
    """

    rule = _core.adagrad

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        *,
        maximize: bool = False,
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                 initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize),
            **options,
        )


class NAdam(Optimizer):
    """NAdam as ``torch.optim.NAdam`` (Dozat 2016, Adam with Nesterov momentum)::

        g    <- g + weight_decay * w             (coupled; after g <- -g if maximize)
        w    <- (1 - lr * weight_decay) * w      (decoupled_weight_decay instead)
        mu_t  = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
        P_t   = mu_1 * ... * mu_t                (state "mu_product", a float)
        m    <- beta1 * m + (1 - beta1) * g
        v    <- beta2 * v + (1 - beta2) * g^2
        d     = sqrt(v / (1 - beta2^t)) + eps
        w    <- w - lr * (1 - mu_t) / (1 - P_t) * g / d
                  - lr * mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d

    State: ``exp_avg``, ``exp_avg_sq`` and ``mu_product`` (a Python float, 1.0 at first).
    """

    rule = _core.nadam

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                 decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
            **options,
        )


class RAdam(Optimizer):
    """RAdam as ``torch.optim.RAdam`` (Liu et al. 2019, rectified Adam)::

        g      <- g + weight_decay * w           (coupled; after g <- -g if maximize)
        w      <- (1 - lr * weight_decay) * w    (decoupled_weight_decay instead)
        m      <- beta1 * m + (1 - beta1) * g
        v      <- beta2 * v + (1 - beta2) * g^2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t   = rho_inf - 2 t beta2^t / (1 - beta2^t)
        if rho_t > 5:   (decided once per step and tensor)
            r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            w  <- w - lr / (1 - beta1^t) * sqrt(1 - beta2^t) * r_t * m / (sqrt(v) + eps)
        else:
            w  <- w - lr / (1 - beta1^t) * m

    State: ``exp_avg``, ``exp_avg_sq``.
    """

    rule = _core.radam

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        maximize: bool = False,
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
            **options,
        )


class Adamax(Optimizer):
    """Adamax as ``torch.optim.Adamax`` (Kingma & Ba 2015, the infinity-norm Adam)::

        g <- g + weight_decay * w                (after g <- -g if maximize)
        m <- beta1 * m + (1 - beta1) * g
        u <- max(beta2 * u, |g| + eps)
        w <- w - lr / (1 - beta1^t) * m / u

    State: ``exp_avg``, ``exp_inf``.
    """

    rule = _core.adamax

    def __init__(
        self,
        params: Iterable,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
            **options,
        )


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")::

        c <- sign(beta1 * m + (1 - beta1) * g)   (after g <- -g if maximize; sign(0) = 0)
        w <- w * (1 - lr * weight_decay) - lr * c
        m <- beta2 * m + (1 - beta2) * g

    Every coordinate moves by exactly lr (or not at all), so Lion wants a
    learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger.
    State: ``exp_avg``. Not in torch.optim.
    """

    rule = _core.lion

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        **options: Any,
    ):
        super().__init__(
            params,
            dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize),
            **options,
        )



# ------------------------------------------------------------ 8-bit presets

class Adam8bit(Adam):
    """Adam with 8-bit block-quantized state by default (bitsandbytes' name):
    ``Adam(..., state_bits=8)``. Each state array of a param with at least
    ``min_8bit_size`` elements is uint8 codes plus a float32 scale per block
    (``"<key>_absmax"``); smaller params keep float32 state (docs/precision.md)."""

    def __init__(self, params: Iterable, *args: Any, state_bits: int = 8, **kwargs: Any):
        super().__init__(params, *args, state_bits=state_bits, **kwargs)


class AdamW8bit(AdamW):
    """AdamW with 8-bit state by default: ``AdamW(..., state_bits=8)`` (see Adam8bit)."""

    def __init__(self, params: Iterable, *args: Any, state_bits: int = 8, **kwargs: Any):
        super().__init__(params, *args, state_bits=state_bits, **kwargs)


class Lion8bit(Lion):
    """Lion with 8-bit state by default: ``Lion(..., state_bits=8)`` (see Adam8bit)."""

    def __init__(self, params: Iterable, *args: Any, state_bits: int = 8, **kwargs: Any):
        super().__init__(params, *args, state_bits=state_bits, **kwargs)


class SGD8bit(SGD):
    """SGD with an 8-bit momentum buffer by default: ``SGD(..., state_bits=8)``
    (see Adam8bit; without momentum there is no state to quantize)."""

    def __init__(self, params: Iterable, *args: Any, state_bits: int = 8, **kwargs: Any):
        super().__init__(params, *args, state_bits=state_bits, **kwargs)
