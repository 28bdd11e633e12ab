# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The benchmark's plain compiled loop: each rule as one pass over one tensor.

No SIMD pragmas, no threads, built with plain -O2 for the baseline CPU (see
cython_loop.py). It shows what fusing the update into one pass buys on its
own; fusedopt's SIMD targets and threads add the rest.

Every line evaluates in the order python/fusedopt/reference.py evaluates it,
in the array's precision (the double scalars are rounded to it first, as
NumPy does with a Python float), so the result is the reference's element by
element.
"""

from cython cimport floating
from libc.math cimport fabs, fabsf, sqrt, sqrtf


cdef inline floating root(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating absolute(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating maximum(floating a, floating b) noexcept nogil:
    """max(a, b), NaN if either is NaN, as np.maximum. The NaN test apart,
    so that the compiler makes a max instruction of the comparison rather
    than a branch (mispredicted on random data)."""
    cdef floating larger = b if a < b else a
    return b if b != b else larger


cdef inline floating sign(floating x) noexcept nogil:
    """-1, 0 or 1, NaN for NaN; zero of either sign gives +0 (np.sign(x) + 0.0).
    C's usual (x > 0) - (x < 0), which compiles without a branch: on random
    signs a branch would be mispredicted every other element."""
    if x != x:
        return x
    return <floating>((x > 0) - (x < 0))


def momentum(floating[::1] w, const floating[::1] g, floating[::1] v, double lr, double momentum):
    cdef floating lr_ = <floating>lr, mu = <floating>momentum
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            v[i] = mu * v[i] - lr_ * g[i]       # v <- momentum v - lr g
            w[i] = w[i] + v[i]                   # w <- w + v


def sgd(floating[::1] w, const floating[::1] g, double lr, double weight_decay, bint maximize):
    """SGD without momentum."""
    cdef floating lr_ = <floating>lr, wd = <floating>weight_decay, grad
    cdef bint decay = weight_decay != 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if decay:
                grad = grad + wd * w[i]                       # g <- g + wd w
            w[i] = w[i] - lr_ * grad                          # w <- w - lr g


def sgd_momentum(floating[::1] w, const floating[::1] g, floating[::1] b, double lr, double momentum,
                 double dampening, double weight_decay, bint nesterov, bint maximize, bint first_step):
    cdef floating lr_ = <floating>lr, mu = <floating>momentum, wd = <floating>weight_decay
    cdef floating one_minus_dampening = <floating>(1.0 - dampening), grad
    cdef bint decay = weight_decay != 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if decay:
                grad = grad + wd * w[i]                       # g <- g + wd w
            if first_step:
                b[i] = grad                                   # b <- g on the first step
            else:
                b[i] = mu * b[i] + one_minus_dampening * grad  # b <- mu b + (1 - d) g
            if nesterov:
                grad = grad + mu * b[i]                       # g <- g + mu b
            else:
                grad = b[i]                                   # g <- b
            w[i] = w[i] - lr_ * grad                          # w <- w - lr g


def adadelta(floating[::1] w, const floating[::1] g, floating[::1] square_avg, floating[::1] scale_avg,
             double lr, double rho, double eps, double weight_decay, bint maximize, bint scale_by_weights):
    """scale_avg is acc_delta (Zeiler), or square_weight_avg with scale_by_weights (the course)."""
    cdef floating lr_ = <floating>lr, rho_ = <floating>rho, one_minus_rho = <floating>(1.0 - rho)
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, grad, dx
    cdef bint decay = weight_decay != 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if decay:
                grad = grad + wd * w[i]                       # g <- g + wd w
            square_avg[i] = rho_ * square_avg[i] + one_minus_rho * (grad * grad)  # Eg <- rho Eg + (1-rho) g^2
            if scale_by_weights:
                scale_avg[i] = rho_ * scale_avg[i] + one_minus_rho * (w[i] * w[i])  # Sw <- rho Sw + (1-rho) w^2
                w[i] = w[i] - lr_ * root((scale_avg[i] + eps_) / (square_avg[i] + eps_)) * grad
            else:
                dx = root(scale_avg[i] + eps_) / root(square_avg[i] + eps_) * grad  # dx <- sqrt(Edx+eps)/sqrt(Eg+eps) g
                scale_avg[i] = rho_ * scale_avg[i] + one_minus_rho * (dx * dx)    # Edx <- rho Edx + (1-rho) dx^2
                w[i] = w[i] - lr_ * dx                                            # w <- w - lr dx


def adam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v, floating[::1] v_max,
         double beta1, double beta2, double eps, double weight_decay, double decay_factor,
         double step_size, double bias_correction2_sqrt, bint maximize, bint amsgrad):
    """v_max is read and written only with amsgrad (pass v otherwise).
    weight_decay is the coupled (L2) decay, decay_factor = 1 - lr wd the
    decoupled one (AdamW); step_size = lr / (1 - beta1^t)."""
    cdef floating b1 = <floating>beta1, one_minus_b1 = <floating>(1.0 - beta1)
    cdef floating b2 = <floating>beta2, one_minus_b2 = <floating>(1.0 - beta2)
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, decay = <floating>decay_factor
    cdef floating size = <floating>step_size, bc2_sqrt = <floating>bias_correction2_sqrt
    cdef floating grad, param, second_moment
    cdef bint coupled = weight_decay != 0, decoupled = decay_factor != 1.0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if coupled:
                grad = grad + wd * w[i]                       # L2: g <- g + wd w
            param = decay * w[i] if decoupled else w[i]       # AdamW: w <- (1 - lr wd) w
            m[i] = b1 * m[i] + one_minus_b1 * grad            # m <- b1 m + (1-b1) g
            v[i] = b2 * v[i] + one_minus_b2 * (grad * grad)   # v <- b2 v + (1-b2) g^2
            second_moment = v[i]
            if amsgrad:
                v_max[i] = maximum(v_max[i], v[i])            # vmax <- max(vmax, v)
                second_moment = v_max[i]
            w[i] = param - size * m[i] / (root(second_moment) / bc2_sqrt + eps_)
                                         # w <- w - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)


def rmsprop(floating[::1] w, const floating[::1] g, floating[::1] square_avg, floating[::1] b,
            floating[::1] grad_avg, double lr, double alpha, double eps, double weight_decay, double momentum,
            bint maximize, bint use_momentum, bint centered):
    """b is read and written only with use_momentum, grad_avg only when
    centered (pass square_avg otherwise)."""
    cdef floating lr_ = <floating>lr, alpha_ = <floating>alpha, one_minus_alpha = <floating>(1.0 - alpha)
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, mu = <floating>momentum
    cdef floating grad, mean_square, avg
    cdef bint decay = weight_decay != 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if decay:
                grad = grad + wd * w[i]                       # g <- g + wd w
            square_avg[i] = alpha_ * square_avg[i] + one_minus_alpha * (grad * grad)  # v <- a v + (1-a) g^2
            mean_square = square_avg[i]
            if centered:
                grad_avg[i] = alpha_ * grad_avg[i] + one_minus_alpha * grad   # gbar <- a gbar + (1-a) g
                mean_square = mean_square - grad_avg[i] * grad_avg[i]         # v - gbar^2
            avg = root(mean_square) + eps_                    # avg <- sqrt(v [- gbar^2]) + eps
            if use_momentum:
                b[i] = mu * b[i] + grad / avg                 # b <- mu b + g / avg
                w[i] = w[i] - lr_ * b[i]                      # w <- w - lr b
            else:
                w[i] = w[i] - lr_ * (grad / avg)              # w <- w - lr g / avg


def adagrad(floating[::1] w, const floating[::1] g, floating[::1] accumulator, double step_size, double eps,
            double weight_decay, bint maximize):
    """step_size = lr / (1 + (t - 1) lr_decay)."""
    cdef floating size = <floating>step_size, eps_ = <floating>eps, wd = <floating>weight_decay, grad
    cdef bint decay = weight_decay != 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if decay:
                grad = grad + wd * w[i]                       # g <- g + wd w
            accumulator[i] = accumulator[i] + grad * grad     # s <- s + g^2
            w[i] = w[i] - size * (grad / (root(accumulator[i]) + eps_))  # w <- w - lr_t g / (sqrt(s) + eps)


def nadam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v, double beta1, double beta2,
          double eps, double weight_decay, double decay_factor, double bias_correction2, double grad_step,
          double momentum_step, bint maximize):
    """weight_decay is the coupled decay, decay_factor = 1 - lr wd the
    decoupled one; grad_step and momentum_step are NAdam's two step sizes."""
    cdef floating b1 = <floating>beta1, one_minus_b1 = <floating>(1.0 - beta1)
    cdef floating b2 = <floating>beta2, one_minus_b2 = <floating>(1.0 - beta2)
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, decay = <floating>decay_factor
    cdef floating bc2 = <floating>bias_correction2, gstep = <floating>grad_step, mstep = <floating>momentum_step
    cdef floating grad, param, denom
    cdef bint coupled = weight_decay != 0, decoupled = decay_factor != 1.0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if coupled:
                grad = grad + wd * w[i]                       # L2: g <- g + wd w
            param = decay * w[i] if decoupled else w[i]       # decoupled: w <- (1 - lr wd) w
            m[i] = b1 * m[i] + one_minus_b1 * grad            # m <- b1 m + (1-b1) g
            v[i] = b2 * v[i] + one_minus_b2 * (grad * grad)   # v <- b2 v + (1-b2) g^2
            denom = root(v[i] / bc2) + eps_                   # d <- sqrt(v / (1-b2^t)) + eps
            w[i] = param - gstep * (grad / denom) - mstep * (m[i] / denom)
                                         # w <- w - lr (1-mu_t)/(1-P_t) g/d - lr mu_t+1/(1-P_t+1) m/d


def radam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v, double beta1, double beta2,
          double eps, double weight_decay, double decay_factor, double step_size, bint maximize, bint rectified):
    """step_size = lr / (1 - b1^t), times sqrt(1 - b2^t) r_t when rectified."""
    cdef floating b1 = <floating>beta1, one_minus_b1 = <floating>(1.0 - beta1)
    cdef floating b2 = <floating>beta2, one_minus_b2 = <floating>(1.0 - beta2)
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, decay = <floating>decay_factor
    cdef floating size = <floating>step_size, grad, param
    cdef bint coupled = weight_decay != 0, decoupled = decay_factor != 1.0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if coupled:
                grad = grad + wd * w[i]                       # L2: g <- g + wd w
            param = decay * w[i] if decoupled else w[i]       # decoupled: w <- (1 - lr wd) w
            m[i] = b1 * m[i] + one_minus_b1 * grad            # m <- b1 m + (1-b1) g
            v[i] = b2 * v[i] + one_minus_b2 * (grad * grad)   # v <- b2 v + (1-b2) g^2
            if rectified:
                w[i] = param - size * (m[i] / (root(v[i]) + eps_))  # w <- w - step_size m / (sqrt(v) + eps)
            else:
                w[i] = param - size * m[i]                    # w <- w - lr/(1-b1^t) m


def adamax(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] u, double beta1, double beta2,
           double eps, double weight_decay, double step_size, bint maximize):
    """step_size = lr / (1 - b1^t)."""
    cdef floating b1 = <floating>beta1, one_minus_b1 = <floating>(1.0 - beta1), b2 = <floating>beta2
    cdef floating eps_ = <floating>eps, wd = <floating>weight_decay, size = <floating>step_size, grad
    cdef bint decay = weight_decay != 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            if decay:
                grad = grad + wd * w[i]                       # g <- g + wd w
            m[i] = b1 * m[i] + one_minus_b1 * grad            # m <- b1 m + (1-b1) g
            u[i] = maximum(b2 * u[i], absolute(grad) + eps_)  # u <- max(b2 u, |g| + eps)
            w[i] = w[i] - size * (m[i] / u[i])                # w <- w - lr/(1-b1^t) m / u


def lion(floating[::1] w, const floating[::1] g, floating[::1] m, double lr, double beta1, double beta2,
         double decay_factor, bint maximize):
    """decay_factor = 1 - lr wd."""
    cdef floating lr_ = <floating>lr, b1 = <floating>beta1, one_minus_b1 = <floating>(1.0 - beta1)
    cdef floating b2 = <floating>beta2, one_minus_b2 = <floating>(1.0 - beta2), decay = <floating>decay_factor
    cdef floating grad, update
    cdef Py_ssize_t i
    with nogil:
        for i in range(w.shape[0]):
            grad = -g[i] if maximize else g[i]                # maximize: g <- -g
            update = sign(b1 * m[i] + one_minus_b1 * grad)    # c <- sign(b1 m + (1-b1) g)
            w[i] = w[i] * decay - lr_ * update                # w <- w (1 - lr wd) - lr c
            m[i] = b2 * m[i] + one_minus_b2 * grad            # m <- b2 m + (1-b2) g
