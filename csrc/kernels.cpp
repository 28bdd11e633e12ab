// The update rules as elementwise loops: the one source of truth for the math.
//
// CMake compiles this file once per SIMD target with -DFUSEDOPT_TARGET=<name>
// and that target's flags (-mavx2 -mfma, -mavx512f ..., or none for the
// baseline). Everything lives in namespace fusedopt::<target> and, inside it,
// an anonymous namespace, so no function of one target can ever be linked in
// place of another's. The only thing exported is the target's KernelTable.
//
// The loops are written the way docs/algorithms.md writes the math and left for
// the compiler to vectorise. Intrinsics appear only where the compiler does
// not find the code: the bulk 16-bit conversions, the 8-bit encoder, and the
// one-pass kernels, which run a rule's element function (Adam's) over an
// explicit vector type. The build turns FMA contraction off, so the vector
// body and the scalar tail round identically and the result does not depend
// on how the driver splits an array between threads (the one explicit fused
// multiply-add, in Divisor<FloatVector>, is an exact division).
// The reference (python/fusedopt/reference.py) evaluates each line in the
// same order.
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>  // the 16-bit conversions, the 8-bit codec and the one-pass kernels
#endif

#include "kernel_types.hpp"

#ifndef FUSEDOPT_TARGET
#error "compile with -DFUSEDOPT_TARGET=<target name>"
#endif
#define FUSEDOPT_STRINGIFY_(x) #x
#define FUSEDOPT_STRINGIFY(x) FUSEDOPT_STRINGIFY_(x)

namespace fusedopt {
namespace FUSEDOPT_TARGET {
namespace {

using std::int64_t;

// Builtins rather than <cmath>: an inline library function instantiated here
// could be merged by the linker with another target's copy.
inline float square_root(float x) { return __builtin_sqrtf(x); }
inline double square_root(double x) { return __builtin_sqrt(x); }
inline float absolute(float x) { return __builtin_fabsf(x); }
inline double absolute(double x) { return __builtin_fabs(x); }
inline double power(double x, double p) { return __builtin_pow(x, p); }

// max(a, b) that returns NaN when either is NaN, as np.maximum and
// torch.maximum do (a plain a < b ? b : a drops a NaN in b).
template <class T>
inline T maximum(T a, T b) { return (a < b || b != b) ? b : a; }

// -1, 0 or 1 (and NaN for NaN, as np.sign); zero of either sign gives +0.
// Written as selects so that the loop vectorises on every target.
template <class T>
inline T sign(T x) {
  T s = x > T(0) ? T(1) : T(0);
  s = x < T(0) ? T(-1) : s;
  return x != x ? x : s;
}

// ---------------------------------------------------------------- Momentum
// The course's heavy ball. Streams: w, g, velocity.
template <class T>
void momentum_loop(const MomentumScalars& s, T* __restrict w, const T* __restrict g,
                   T* __restrict v, int64_t begin, int64_t end) {
  const T lr = T(s.lr), momentum = T(s.momentum);
  for (int64_t i = begin; i < end; ++i) {
    v[i] = momentum * v[i] - lr * g[i];  // v <- gamma * v - lr * g
    w[i] = w[i] + v[i];                  // w <- w + v
  }
}

template <class T>
void momentum(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  momentum_loop(*static_cast<const MomentumScalars*>(scalars), static_cast<T*>(streams[0]),
                static_cast<const T*>(streams[1]), static_cast<T*>(streams[2]), begin, end);
}

// --------------------------------------------------------------------- SGD
// torch.optim.SGD. Streams: w, g, momentum_buffer (only with momentum).
template <class T, bool kUseMomentum>
void sgd_loop(const SgdScalars& s, T* __restrict w, const T* __restrict g, T* __restrict b,
              int64_t begin, int64_t end) {
  const T lr = T(s.lr), momentum = T(s.momentum), one_minus_dampening = T(1.0 - s.dampening);
  const T weight_decay = T(s.weight_decay), grad_sign = T(s.grad_sign);
  const bool decay = s.weight_decay != 0.0, first = s.first_step, nesterov = s.nesterov;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                            // maximize: g <- -g
    grad = decay ? grad + weight_decay * w[i] : grad;     // g <- g + wd * w
    if constexpr (kUseMomentum) {
      b[i] = first ? grad                                 // b <- g on the first step
                   : momentum * b[i] + one_minus_dampening * grad;  // b <- mu b + (1-d) g
      grad = nesterov ? grad + momentum * b[i] : b[i];    // g <- g + mu b, or g <- b
    }
    w[i] = w[i] - lr * grad;                              // w <- w - lr * g
  }
}

template <class T>
void sgd(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const SgdScalars*>(scalars);
  auto* w = static_cast<T*>(streams[0]);
  auto* g = static_cast<const T*>(streams[1]);
  auto* b = static_cast<T*>(streams[2]);
  if (s.use_momentum)
    sgd_loop<T, true>(s, w, g, b, begin, end);
  else
    sgd_loop<T, false>(s, w, g, b, begin, end);
}

// ---------------------------------------------------------------- Adadelta
// torch.optim.Adadelta (Zeiler): streams w, g, square_avg, acc_delta.
// The course's variant: streams w, g, square_avg, square_weight_avg.
template <class T, bool kScaleByWeights>
void adadelta_loop(const AdadeltaScalars& s, T* __restrict w, const T* __restrict g,
                   T* __restrict square_avg, T* __restrict scale_avg, int64_t begin,
                   int64_t end) {
  const T lr = T(s.lr), rho = T(s.rho), one_minus_rho = T(1.0 - s.rho), eps = T(s.eps);
  const T weight_decay = T(s.weight_decay), grad_sign = T(s.grad_sign);
  const bool decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                       // maximize: g <- -g
    grad = decay ? grad + weight_decay * w[i] : grad;                // g <- g + wd * w
    square_avg[i] = rho * square_avg[i] + one_minus_rho * (grad * grad);  // Eg <- rho Eg + (1-rho) g^2
    if constexpr (kScaleByWeights) {
      scale_avg[i] = rho * scale_avg[i] + one_minus_rho * (w[i] * w[i]);  // Sw <- rho Sw + (1-rho) w^2
      w[i] = w[i] - lr * square_root((scale_avg[i] + eps) / (square_avg[i] + eps)) * grad;
                                                    // w <- w - lr sqrt((Sw+eps)/(Sg+eps)) g
    } else {
      const T dx = square_root(scale_avg[i] + eps) / square_root(square_avg[i] + eps) * grad;
                                                    // dx <- sqrt(Edx+eps) / sqrt(Eg+eps) g
      scale_avg[i] = rho * scale_avg[i] + one_minus_rho * (dx * dx);  // Edx <- rho Edx + (1-rho) dx^2
      w[i] = w[i] - lr * dx;                                          // w <- w - lr dx
    }
  }
}

template <class T>
void adadelta(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const AdadeltaScalars*>(scalars);
  auto* w = static_cast<T*>(streams[0]);
  auto* g = static_cast<const T*>(streams[1]);
  auto* square_avg = static_cast<T*>(streams[2]);
  auto* scale_avg = static_cast<T*>(streams[3]);
  if (s.scale_by_weights)
    adadelta_loop<T, true>(s, w, g, square_avg, scale_avg, begin, end);
  else
    adadelta_loop<T, false>(s, w, g, square_avg, scale_avg, begin, end);
}

// A divisor that stays the same for a whole step (Adam's sqrt(1 - beta2^t)).
// The scalar loops divide by it; the one-pass kernels divide without the
// divider unit, bitwise the same (Divisor<FloatVector> below).
template <class T>
struct Divisor {
  T value;
  explicit Divisor(double divisor) : value(T(divisor)) {}
};
template <class T>
inline T operator/(T x, const Divisor<T>& d) { return x / d.value; }

// -------------------------------------------------------------------- Adam
// torch.optim.Adam / AdamW. Streams: w, g, exp_avg, exp_avg_sq, and
// max_exp_avg_sq with amsgrad. The update of one element is written once,
// over a lane type T: a float or double for the compiler-vectorised loop,
// or a vector of floats for the one-pass kernels (below), which so compute
// exactly what this loop does.
template <class T>
struct AdamConstants {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor;
  T step_size, grad_sign;
  Divisor<T> bias_correction2_sqrt;
  bool coupled_decay, maximize, decoupled_decay;
  explicit AdamConstants(const AdamScalars& s)
      : beta1(T(s.beta1)), one_minus_beta1(T(1.0 - s.beta1)), beta2(T(s.beta2)),
        one_minus_beta2(T(1.0 - s.beta2)), eps(T(s.eps)), weight_decay(T(s.weight_decay)),
        decay_factor(T(s.decay_factor)), step_size(T(s.step_size)), grad_sign(T(s.grad_sign)),
        bias_correction2_sqrt(s.bias_correction2_sqrt),
        coupled_decay(s.weight_decay != 0.0), maximize(s.grad_sign != 1.0), decoupled_decay(s.decay_factor != 1.0) {}
};

// Updates m, v (and v_max with amsgrad) in place and returns the new w.
// Always inlined: the one-pass kernel calls it at three places, and GCC then
// made it a call that passes the vectors through memory.
template <class T, bool kAmsgrad>
inline __attribute__((always_inline)) T adam_element(const AdamConstants<T>& k, T w, T g, T& m, T& v, T& v_max) {
  T grad = k.maximize ? k.grad_sign * g : g;                   // maximize: g <- -g
  grad = k.coupled_decay ? grad + k.weight_decay * w : grad;    // L2: g <- g + wd * w
  const T param = k.decoupled_decay ? k.decay_factor * w : w;   // AdamW: w <- (1 - lr wd) w
  m = k.beta1 * m + k.one_minus_beta1 * grad;                   // m <- b1 m + (1-b1) g
  v = k.beta2 * v + k.one_minus_beta2 * (grad * grad);          // v <- b2 v + (1-b2) g^2
  T second_moment = v;
  if constexpr (kAmsgrad) {
    v_max = maximum(v_max, v);                                  // vmax <- max(vmax, v)
    second_moment = v_max;
  }
  return param - k.step_size * m / (square_root(second_moment) / k.bias_correction2_sqrt + k.eps);
                                   // w <- w - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)
}

template <class T, bool kAmsgrad>
void adam_loop(const AdamScalars& s, T* __restrict w, const T* __restrict g, T* __restrict m,
               T* __restrict v, T* __restrict v_max, int64_t begin, int64_t end) {
  const AdamConstants<T> k(s);
  for (int64_t i = begin; i < end; ++i) {
    T m_i = m[i], v_i = v[i], v_max_i = kAmsgrad ? v_max[i] : T(0);
    w[i] = adam_element<T, kAmsgrad>(k, w[i], g[i], m_i, v_i, v_max_i);
    m[i] = m_i;
    v[i] = v_i;
    if constexpr (kAmsgrad) v_max[i] = v_max_i;
  }
}

template <class T>
void adam(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const AdamScalars*>(scalars);
  auto* w = static_cast<T*>(streams[0]);
  auto* g = static_cast<const T*>(streams[1]);
  auto* m = static_cast<T*>(streams[2]);
  auto* v = static_cast<T*>(streams[3]);
  auto* v_max = static_cast<T*>(streams[4]);
  if (s.amsgrad)
    adam_loop<T, true>(s, w, g, m, v, v_max, begin, end);
  else
    adam_loop<T, false>(s, w, g, m, v, v_max, begin, end);
}

// ----------------------------------------------------------------- RMSprop
// torch.optim.RMSprop. Streams: w, g, square_avg, then momentum_buffer (with
// momentum), then grad_avg (centered).
template <class T, bool kMomentum, bool kCentered>
void rmsprop_loop(const RmspropScalars& s, T* __restrict w, const T* __restrict g,
                  T* __restrict square_avg, T* __restrict b, T* __restrict grad_avg,
                  int64_t begin, int64_t end) {
  const T lr = T(s.lr), alpha = T(s.alpha), one_minus_alpha = T(1.0 - s.alpha), eps = T(s.eps);
  const T weight_decay = T(s.weight_decay), momentum = T(s.momentum), grad_sign = T(s.grad_sign);
  const bool decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                   // maximize: g <- -g
    grad = decay ? grad + weight_decay * w[i] : grad;            // g <- g + wd * w
    square_avg[i] = alpha * square_avg[i] + one_minus_alpha * (grad * grad);
                                                                 // v <- a v + (1-a) g^2
    T mean_square = square_avg[i];
    if constexpr (kCentered) {
      grad_avg[i] = alpha * grad_avg[i] + one_minus_alpha * grad;  // gbar <- a gbar + (1-a) g
      mean_square = mean_square - grad_avg[i] * grad_avg[i];      // v - gbar^2
    }
    const T avg = square_root(mean_square) + eps;                // avg <- sqrt(v [- gbar^2]) + eps
    if constexpr (kMomentum) {
      b[i] = momentum * b[i] + grad / avg;                       // b <- mu b + g / avg
      w[i] = w[i] - lr * b[i];                                   // w <- w - lr b
    } else {
      w[i] = w[i] - lr * (grad / avg);                           // w <- w - lr g / avg
    }
  }
}

template <class T>
void rmsprop(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const RmspropScalars*>(scalars);
  auto* w = static_cast<T*>(streams[0]);
  auto* g = static_cast<const T*>(streams[1]);
  auto* square_avg = static_cast<T*>(streams[2]);
  int next = 3;  // the optional streams follow in the order the rule names them
  auto* b = s.use_momentum ? static_cast<T*>(streams[next++]) : nullptr;
  auto* grad_avg = s.centered ? static_cast<T*>(streams[next++]) : nullptr;
  if (s.use_momentum && s.centered)
    rmsprop_loop<T, true, true>(s, w, g, square_avg, b, grad_avg, begin, end);
  else if (s.use_momentum)
    rmsprop_loop<T, true, false>(s, w, g, square_avg, b, grad_avg, begin, end);
  else if (s.centered)
    rmsprop_loop<T, false, true>(s, w, g, square_avg, b, grad_avg, begin, end);
  else
    rmsprop_loop<T, false, false>(s, w, g, square_avg, b, grad_avg, begin, end);
}

// ----------------------------------------------------------------- Adagrad
// torch.optim.Adagrad. Streams: w, g, sum.
template <class T>
void adagrad(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const AdagradScalars*>(scalars);
  T* __restrict w = static_cast<T*>(streams[0]);
  const T* __restrict g = static_cast<const T*>(streams[1]);
  T* __restrict sum = static_cast<T*>(streams[2]);
  const T step_size = T(s.step_size), eps = T(s.eps), weight_decay = T(s.weight_decay);
  const T grad_sign = T(s.grad_sign);
  const bool decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                // maximize: g <- -g
    grad = decay ? grad + weight_decay * w[i] : grad;         // g <- g + wd * w
    sum[i] = sum[i] + grad * grad;                            // s <- s + g^2
    const T std = square_root(sum[i]) + eps;                  // sqrt(s) + eps
    w[i] = w[i] - step_size * (grad / std);                   // w <- w - lr_t g / (sqrt(s) + eps)
  }
}

// ------------------------------------------------------------------- NAdam
// torch.optim.NAdam (Dozat 2016, with torch's momentum schedule mu_t).
// Streams: w, g, exp_avg, exp_avg_sq. The running product of the mu_t is a
// scalar state, advanced by rules.cpp; only its consequences arrive here.
template <class T>
void nadam(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const NadamScalars*>(scalars);
  T* __restrict w = static_cast<T*>(streams[0]);
  const T* __restrict g = static_cast<const T*>(streams[1]);
  T* __restrict m = static_cast<T*>(streams[2]);
  T* __restrict v = static_cast<T*>(streams[3]);
  const T beta1 = T(s.beta1), one_minus_beta1 = T(1.0 - s.beta1);
  const T beta2 = T(s.beta2), one_minus_beta2 = T(1.0 - s.beta2);
  const T eps = T(s.eps), weight_decay = T(s.weight_decay), decay_factor = T(s.decay_factor);
  const T bias_correction2 = T(s.bias_correction2), grad_step = T(s.grad_step);
  const T momentum_step = T(s.momentum_step), grad_sign = T(s.grad_sign);
  const bool coupled_decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                  // maximize: g <- -g
    grad = coupled_decay ? grad + weight_decay * w[i] : grad;   // L2: g <- g + wd * w
    const T param = decay_factor * w[i];                        // decoupled: w <- (1 - lr wd) w
    m[i] = beta1 * m[i] + one_minus_beta1 * grad;               // m <- b1 m + (1-b1) g
    v[i] = beta2 * v[i] + one_minus_beta2 * (grad * grad);      // v <- b2 v + (1-b2) g^2
    const T denom = square_root(v[i] / bias_correction2) + eps; // sqrt(v / (1-b2^t)) + eps
    w[i] = param - grad_step * (grad / denom)                   // w <- w - lr (1-mu_t)/(1-P_t) g / denom
                 - momentum_step * (m[i] / denom);              //        - lr mu_t+1/(1-P_t+1) m / denom
  }
}

// ------------------------------------------------------------------- RAdam
// torch.optim.RAdam (Liu et al. 2019). Streams: w, g, exp_avg, exp_avg_sq.
// Whether the variance is rectified this step is decided once per tensor.
template <class T, bool kRectified>
void radam_loop(const RadamScalars& s, T* __restrict w, const T* __restrict g, T* __restrict m,
                T* __restrict v, int64_t begin, int64_t end) {
  const T beta1 = T(s.beta1), one_minus_beta1 = T(1.0 - s.beta1);
  const T beta2 = T(s.beta2), one_minus_beta2 = T(1.0 - s.beta2);
  const T eps = T(s.eps), weight_decay = T(s.weight_decay), decay_factor = T(s.decay_factor);
  const T step_size = T(s.step_size), grad_sign = T(s.grad_sign);
  const bool coupled_decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                  // maximize: g <- -g
    grad = coupled_decay ? grad + weight_decay * w[i] : grad;   // L2: g <- g + wd * w
    const T param = decay_factor * w[i];                        // decoupled: w <- (1 - lr wd) w
    m[i] = beta1 * m[i] + one_minus_beta1 * grad;               // m <- b1 m + (1-b1) g
    v[i] = beta2 * v[i] + one_minus_beta2 * (grad * grad);      // v <- b2 v + (1-b2) g^2
    if constexpr (kRectified)
      w[i] = param - step_size * (m[i] / (square_root(v[i]) + eps));
                          // w <- w - lr/(1-b1^t) sqrt(1-b2^t) r_t m / (sqrt(v) + eps)
    else
      w[i] = param - step_size * m[i];                          // w <- w - lr/(1-b1^t) m
  }
}

template <class T>
void radam(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const RadamScalars*>(scalars);
  auto* w = static_cast<T*>(streams[0]);
  auto* g = static_cast<const T*>(streams[1]);
  auto* m = static_cast<T*>(streams[2]);
  auto* v = static_cast<T*>(streams[3]);
  if (s.rectified)
    radam_loop<T, true>(s, w, g, m, v, begin, end);
  else
    radam_loop<T, false>(s, w, g, m, v, begin, end);
}

// ------------------------------------------------------------------ Adamax
// torch.optim.Adamax (Kingma & Ba, section 7.1). Streams: w, g, exp_avg, exp_inf.
template <class T>
void adamax(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const AdamaxScalars*>(scalars);
  T* __restrict w = static_cast<T*>(streams[0]);
  const T* __restrict g = static_cast<const T*>(streams[1]);
  T* __restrict m = static_cast<T*>(streams[2]);
  T* __restrict u = static_cast<T*>(streams[3]);
  const T beta1 = T(s.beta1), one_minus_beta1 = T(1.0 - s.beta1), beta2 = T(s.beta2);
  const T eps = T(s.eps), weight_decay = T(s.weight_decay), step_size = T(s.step_size);
  const T grad_sign = T(s.grad_sign);
  const bool decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                  // maximize: g <- -g
    grad = decay ? grad + weight_decay * w[i] : grad;           // g <- g + wd * w
    m[i] = beta1 * m[i] + one_minus_beta1 * grad;               // m <- b1 m + (1-b1) g
    u[i] = maximum(beta2 * u[i], absolute(grad) + eps);         // u <- max(b2 u, |g| + eps)
    w[i] = w[i] - step_size * (m[i] / u[i]);                    // w <- w - lr/(1-b1^t) m / u
  }
}

// -------------------------------------------------------------------- Lion
// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").
// Streams: w, g, exp_avg.
template <class T>
void lion(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const LionScalars*>(scalars);
  T* __restrict w = static_cast<T*>(streams[0]);
  const T* __restrict g = static_cast<const T*>(streams[1]);
  T* __restrict m = static_cast<T*>(streams[2]);
  const T lr = T(s.lr), beta1 = T(s.beta1), one_minus_beta1 = T(1.0 - s.beta1);
  const T beta2 = T(s.beta2), one_minus_beta2 = T(1.0 - s.beta2);
  const T decay_factor = T(s.decay_factor), grad_sign = T(s.grad_sign);
  for (int64_t i = begin; i < end; ++i) {
    const T grad = grad_sign * g[i];                                  // maximize: g <- -g
    const T update = sign(beta1 * m[i] + one_minus_beta1 * grad);     // c <- sign(b1 m + (1-b1) g)
    w[i] = w[i] * decay_factor - lr * update;                         // w <- w (1 - lr wd) - lr c
    m[i] = beta2 * m[i] + one_minus_beta2 * grad;                     // m <- b2 m + (1-b2) g
  }
}

// ------------------------------------------------------- 16-bit storage
// bfloat16 and float16 elements as their raw bits, converted with integer
// arithmetic (and float additions that are exact), written as selects so
// that the loops vectorise on every target and give the same bits on all.
// Round to nearest even, as NumPy, ml_dtypes and torch convert; NaN and
// overflow as NumPy and ml_dtypes do (docs/precision.md).

inline std::uint32_t bits_of(float x) { return __builtin_bit_cast(std::uint32_t, x); }
inline float float_of(std::uint32_t u) { return __builtin_bit_cast(float, u); }

// bfloat16 is the top half of a float32.
inline float bf16_load(std::uint16_t h) { return float_of(std::uint32_t(h) << 16); }

inline std::uint16_t bf16_nearest(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // ties to even
  const std::uint32_t quiet_nan = ((u >> 16) & 0x8000u) | 0x7FC0u;      // the sign kept, as ml_dtypes
  return static_cast<std::uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

// float16: exponent 5 bits (bias 15), mantissa 10 bits. NaN keeps the top
// of its payload and stays a NaN; subnormals are exact.
inline float f16_load(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t magnitude = std::uint32_t(h & 0x7FFFu) << 13;  // exponent and mantissa, aligned
  const std::uint32_t exponent = magnitude & 0x0F800000u;
  const std::uint32_t normal = magnitude + ((127u - 15u) << 23);
  const std::uint32_t special = magnitude + ((255u - 31u) << 23);  // inf and NaN: all-ones exponent
  // A subnormal half is m * 2^-24: scale m's bits into a float and subtract the implicit one (exact).
  const std::uint32_t subnormal = bits_of(float_of(magnitude + (113u << 23)) - float_of(113u << 23));
  const std::uint32_t out = exponent == 0x0F800000u ? special : exponent == 0 ? subnormal : normal;
  return float_of(sign | out);
}

inline std::uint16_t f16_nearest(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7FFFFFFFu;
  // Normal halves: rebias the exponent, round the 13 dropped bits to nearest even.
  const std::uint32_t normal = (a - ((127u - 15u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  // Subnormal halves (and zero): adding 0.5 puts the half's bits at the bottom of
  // the float's mantissa, and the float addition rounds them to nearest even.
  const std::uint32_t subnormal = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
  const std::uint32_t nan = 0x7C00u | (a >> 13 & 0x3FFu) | ((a & 0x7FE000u) == 0 ? 1u : 0u);
  std::uint32_t out = a < 0x38800000u ? subnormal : normal;
  out = a >= 0x47800000u ? 0x7C00u : out;  // 65536 and above: infinity (rounding reaches it below)
  out = a > 0x7F800000u ? nan : out;
  return static_cast<std::uint16_t>(sign | out);
}

// Counter-based random bits for stochastic rounding: a hash of the tensor's
// key (seed, step, the param's position) and the element's index, so every
// thread count, tile, SIMD lane and shard draws the same bits (murmur3's
// finaliser, twice). The reference computes the same in NumPy.
// Over a std::uint32_t, or a vector of them (the one-pass kernels' lanes).
template <class U>
inline U mix32(U x) {
  x = x ^ (x >> 16);
  x = x * U(0x85EBCA6Bu);
  x = x ^ (x >> 13);
  x = x * U(0xC2B2AE35u);
  x = x ^ (x >> 16);
  return x;
}

// The two rounds, from the index's low half (a uint32 or a vector of them,
// one per element) and `high`: the high halves of the index and the key,
// xored. Elements whose indices share their high half share `high`, which
// is how the vector loops draw many at once.
template <class U>
inline U random16_of(U low_index, std::uint32_t low_key, std::uint32_t high) {
  return mix32(mix32(low_index ^ U(low_key)) ^ U(high)) >> 16;
}
inline std::uint32_t high_of(std::uint64_t key, std::uint64_t index) {
  return static_cast<std::uint32_t>(index >> 32) ^ static_cast<std::uint32_t>(key >> 32);
}

inline std::uint32_t random16(std::uint64_t key, std::int64_t index) {
  const auto i = static_cast<std::uint64_t>(index);
  return random16_of(static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(key), high_of(key, i));
}

// Stochastic rounding to bfloat16: add 16 random bits below the kept half
// and truncate, so x rounds up with probability (dropped bits) / 2^16, exactly
// its distance to the lower neighbour. NaN as round-to-nearest.
inline std::uint16_t bf16_stochastic(float x, std::uint32_t random) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t rounded = (u + random) >> 16;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? bf16_nearest(x) : static_cast<std::uint16_t>(rounded);
}

// Stochastic rounding to float16: truncate |x| to the half below it, then
// step up one ulp with probability (what the truncation dropped) / (the ulp),
// compared at 16 bits: exact for normal halves (an ulp is 13 dropped bits),
// within 2^-16 of an ulp below 2^-14. Beyond the largest half, NaN and
// infinity as round-to-nearest.
inline std::uint16_t f16_stochastic(float x, std::uint32_t random) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  const std::uint32_t e = a >> 23;  // the float's biased exponent
  // A normal half keeps the float's top 10 mantissa bits and drops 13.
  const std::uint32_t normal_kept = (a - ((127u - 15u) << 23)) >> 13;
  const std::uint32_t normal_scaled = (a & 0x1FFFu) << 3;
  // Below 2^-14 the half counts units of 2^-24: |x| / 2^-24 = mantissa / 2^drop.
  const std::uint32_t mantissa = e == 0 ? a : (a & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t drop = 126u - (e == 0 ? 1u : e);       // >= 14 when e < 113
  const std::uint32_t shift = drop > 31u ? 31u : drop;        // mantissa < 2^24: 31 drops it all
  const std::uint32_t sub_kept = mantissa >> shift;
  const std::uint32_t sub_dropped = mantissa & ((1u << shift) - 1u);
  const std::uint32_t down = drop - 16u > 31u ? 31u : drop - 16u;  // drop >= 16 here
  const std::uint32_t sub_scaled = drop >= 16u ? sub_dropped >> down : sub_dropped << (16u - drop);
  const bool is_normal = e >= 113u;
  const std::uint32_t kept = is_normal ? normal_kept : sub_kept;
  const std::uint32_t scaled = is_normal ? normal_scaled : sub_scaled;
  const std::uint32_t out = ((u >> 16) & 0x8000u) | (kept + (scaled > random ? 1u : 0u));
  return static_cast<std::uint16_t>(a >= 0x47800000u ? f16_nearest(x) : out);
}

// The bulk conversions, which the staged kernel runs on every tile. Where the
// target has vector instructions for them (F16C for float16; integer vector
// code for bfloat16, since the compiler's own vectorisation of bf16_nearest
// spends twice the instructions), a vector of lanes is converted at once;
// a vector holding a NaN is redone by the scalar functions above, because
// F16C quiets signalling NaNs where NumPy and ml_dtypes keep them. Every
// other value converts exactly as the scalar code does, so every target
// gives the same bits (tests/test_precision.py checks every 16-bit pattern
// and 2.2 million float32 patterns on every target).
// Sixteen elements per step on both vector targets: one AVX-512 vector or
// two AVX2 vectors, so that AVX2 packs and checks for NaN once per sixteen.
#if defined(__AVX512F__)
constexpr int64_t kConvertBlock = 16;
inline __mmask16 nan_lanes(__m512 x) { return _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); }
inline bool any_nan(__m512 x) { return nan_lanes(x) != 0; }
#if defined(__AVX512BF16__)
// The BF16 conversion rounds to nearest even as bf16_nearest does, but
// flushes float32 subnormals to zero and keeps NaN payloads (checked on all
// 2^32 patterns): lanes holding either go to the scalar code.
inline __m256i bf16_narrow(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }
inline __mmask16 bf16_scalar_lanes(__m512 x) { return _mm512_fpclass_ps_mask(x, 0x81 | 0x20); }  // NaN, subnormal
inline __mmask16 bf16_unstorable_lanes(__m512 x) { return _mm512_fpclass_ps_mask(x, 0x20); }     // subnormal
#else
// bf16_nearest without its NaN case, (u + 0x7FFF + lsb) >> 16, in 32-bit lanes, packed to 16 bits.
inline __m256i bf16_narrow(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_cvtepi32_epi16(
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16));
}
inline __mmask16 bf16_scalar_lanes(__m512 x) { return nan_lanes(x); }
inline __mmask16 bf16_unstorable_lanes(__m512) { return 0; }
#endif
inline __mmask16 no_lanes(__m512) { return 0; }
#elif defined(__AVX2__) && defined(__F16C__)
constexpr int64_t kConvertBlock = 16;
inline bool any_nan(__m256 a, __m256 b) {
  return _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q), _mm256_cmp_ps(b, b, _CMP_UNORD_Q))) != 0;
}
inline __m256i bf16_round(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
}
#else
constexpr int64_t kConvertBlock = 0;  // scalar code only
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__))
constexpr int kNearestEven = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#endif

// Elements [0, blocks * kConvertBlock) go through `vector(i)` a block at a
// time, which returns false to leave its block to `scalar`; the rest go
// through `scalar` alone.
template <class Vector, class Scalar>
inline void convert_loop(int64_t count, [[maybe_unused]] Vector vector, Scalar scalar) {
  int64_t i = 0;
  if constexpr (kConvertBlock > 0) {
    for (; i + kConvertBlock <= count; i += kConvertBlock)
      if (!vector(i))
        for (int64_t k = i; k < i + kConvertBlock; ++k) scalar(k);
  }
  for (; i < count; ++i) scalar(i);
}

void bf16_to_float32(const void* src, float* __restrict dst, int64_t count) {
  // Exact by construction (a shift), and the compiler vectorises it well.
  const auto* __restrict h = static_cast<const std::uint16_t*>(src);
  for (int64_t i = 0; i < count; ++i) dst[i] = bf16_load(h[i]);
}

void f16_to_float32(const void* src, float* __restrict dst, int64_t count) {
  const auto* __restrict h = static_cast<const std::uint16_t*>(src);
  convert_loop(
      count,
      [&]([[maybe_unused]] int64_t i) {
#if defined(__AVX512F__)
        const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i)));
        if (any_nan(x)) return false;
        _mm512_storeu_ps(dst + i, x);
#elif defined(__AVX2__) && defined(__F16C__)
        const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i)));
        const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i + 8)));
        if (any_nan(lo, hi)) return false;
        _mm256_storeu_ps(dst + i, lo);
        _mm256_storeu_ps(dst + i + 8, hi);
#endif
        return true;
      },
      [&](int64_t i) { dst[i] = f16_load(h[i]); });
}

// Stores of float32 into a 16-bit format, sixteen at a time: `narrow` turns
// sixteen floats (one AVX-512 vector, or two AVX2 halves) into sixteen 16-bit
// values; a block holding a NaN goes to `scalar`, element by element.
// On AVX-512 `scalar_lanes` says which lanes the vector conversion gets wrong.
template <class Narrow, class ScalarLanes, class Scalar>
void store_16bit(const float* __restrict src, void* dst, int64_t count, [[maybe_unused]] Narrow narrow,
                 [[maybe_unused]] ScalarLanes scalar_lanes, Scalar scalar) {
  auto* __restrict h = static_cast<std::uint16_t*>(dst);
  convert_loop(
      count,
      [&]([[maybe_unused]] int64_t i) {
#if defined(__AVX512F__)
        const __m512 x = _mm512_loadu_ps(src + i);
        if (scalar_lanes(x) != 0) return false;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i), narrow(x));
#elif defined(__AVX2__) && defined(__F16C__)
        const __m256 lo = _mm256_loadu_ps(src + i), hi = _mm256_loadu_ps(src + i + 8);
        if (any_nan(lo, hi)) return false;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i), narrow(lo, hi));
#endif
        return true;
      },
      [&](int64_t i) { h[i] = scalar(src[i]); });
}

void float32_to_bf16(const float* __restrict src, void* dst, int64_t count) {
#if defined(__AVX512F__)
  const auto narrow = bf16_narrow;
  const auto scalar_lanes = bf16_scalar_lanes;
#elif defined(__AVX2__) && defined(__F16C__)
  // packus interleaves the 128-bit halves of its operands; permute puts them back in order.
  const auto narrow = [](__m256 lo, __m256 hi) {
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round(lo), bf16_round(hi)), 0xD8);
  };
  const auto scalar_lanes = nullptr;
#else
  const auto narrow = nullptr;
  const auto scalar_lanes = nullptr;
#endif
  store_16bit(src, dst, count, narrow, scalar_lanes, bf16_nearest);
}

void float32_to_f16(const float* __restrict src, void* dst, int64_t count) {
#if defined(__AVX512F__)
  const auto narrow = [](__m512 x) { return _mm512_cvtps_ph(x, kNearestEven); };
  const auto scalar_lanes = nan_lanes;
#elif defined(__AVX2__) && defined(__F16C__)
  const auto narrow = [](__m256 lo, __m256 hi) {
    return _mm256_set_m128i(_mm256_cvtps_ph(hi, kNearestEven), _mm256_cvtps_ph(lo, kNearestEven));
  };
  const auto scalar_lanes = nullptr;
#else
  const auto narrow = nullptr;
  const auto scalar_lanes = nullptr;
#endif
  store_16bit(src, dst, count, narrow, scalar_lanes, f16_nearest);
}

void float32_to_float32(const float* __restrict src, void* dst, int64_t count) {
  float* __restrict out = static_cast<float*>(dst);
  for (int64_t i = 0; i < count; ++i) out[i] = src[i];
}

void float32_from_float32(const void* src, float* __restrict dst, int64_t count) {
  const float* __restrict in = static_cast<const float*>(src);
  for (int64_t i = 0; i < count; ++i) dst[i] = in[i];
}

void float64_to_float32(const void* src, float* __restrict dst, int64_t count) {
  const double* __restrict in = static_cast<const double*>(src);
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<float>(in[i]);
}

void float32_to_float64(const float* __restrict src, void* dst, int64_t count) {
  double* __restrict out = static_cast<double*>(dst);
  for (int64_t i = 0; i < count; ++i) out[i] = src[i];
}

// ------------------------------------------------------- 8-bit state
// Block-wise quantization (kernel_types.hpp, QuantMap). Encoding is exact:
// the nearest code of x (ties to the larger code) is the number of
// thresholds <= x. The bucket of x's top 16 bits holds at most one
// threshold (quantize.cpp checks this when it builds the map), so that
// number is the bucket's count below it plus one comparison of the low 16
// bits: one 32-bit table load and no branch per element.

// x: a value divided by its block's absmax, so |x| <= 1.
inline std::uint32_t quant_encode(const std::int32_t* __restrict buckets, float x) {
  const std::uint32_t u = bits_of(x);
  // The exponent and top mantissa bits, clamped to [the first bucket, 1.0] (|x| > 1 cannot occur).
  constexpr std::uint32_t kFirst = std::uint32_t(kQuantLowestExponent - 1) << kQuantBucketMantissaBits;
  constexpr std::uint32_t kOne = 127u << kQuantBucketMantissaBits;
  const std::uint32_t top = (u & 0x7FFFFFFFu) >> 16;
  const std::uint32_t clamped = top < kFirst ? kFirst : top > kOne ? kOne : top;
  const std::uint32_t bucket = clamped - kFirst;
  const std::int32_t entry = buckets[bucket + (u >> 31) * std::uint32_t(kQuantBucketsPerSign)];
  const auto low = static_cast<std::int32_t>(u & 0xFFFFu);
  const std::int32_t key = (u >> 31) != 0 ? -low : low;
  return static_cast<std::uint32_t>((entry & 0xFF) + (key >= (entry >> 8) ? 1 : 0));
}

// The loops take their arrays as __restrict parameters of functions that are
// not inlined: uint8 codes may alias anything (the tables included), and GCC
// drops restrict once a function is inlined, leaving the lookups unvectorised.
inline std::uint32_t largest_magnitude_bits(const float* __restrict x, int64_t n) {
  std::uint32_t largest = 0;  // |x| as bits: for non-negative floats the integer order is the float order
  for (int64_t i = 0; i < n; ++i) {
    const std::uint32_t a = bits_of(x[i]) & 0x7FFFFFFFu;
    largest = a > largest ? a : largest;
  }
  return largest;
}

// The vector encoders: quant_encode's integer steps on vector lanes, so every
// target gives the same bits. AVX-512 gathers the sixteen bucket entries
// (quantize 0.67 -> 0.51 ns per element on one thread; Xeon, 2026-12-03;
// docs/precision.md has the whole step). AVX2 works eight lanes at a time,
// its bucket lookups scalar loads, but fed from memory: a first pass stores
// each element's bucket as 16 bits, a second reads them four to a 64-bit
// word, loads the four entries and finishes in vector lanes. That was faster
// than moving lanes to registers one by one (GCC's own vectorisation of
// quant_encode) or an AVX2 gather (slower still).
#if defined(__AVX2__) && !defined(__AVX512F__)
constexpr int64_t kCodecBlock = 32;   // elements per vector step: four vectors packed into 32 codes
constexpr int64_t kCodecChunk = 256;  // elements whose buckets the first pass stores for the second
static_assert(2 * kQuantBucketsPerSign <= 65536, "a bucket index must fit in 16 bits");

// The table entries of the four 16-bit bucket indices in `word`.
inline __m128i look_up4(const std::int32_t* __restrict table, std::uint64_t word) {
  return _mm_setr_epi32(table[word & 0xFFFFu], table[(word >> 16) & 0xFFFFu], table[(word >> 32) & 0xFFFFu],
                        table[word >> 48]);
}
#endif

__attribute__((noinline)) void encode_block(const std::int32_t* __restrict buckets, const float* __restrict x,
                                            float divisor, bool scaled, std::uint8_t* __restrict codes, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  // quant_encode on sixteen lanes, the bucket entries gathered (the table,
  // 26 KB, stays in L1).
  constexpr int kFirst = (kQuantLowestExponent - 1) << kQuantBucketMantissaBits;
  constexpr int kOne = 127 << kQuantBucketMantissaBits;
  const __m512 d = _mm512_set1_ps(divisor);
  const __m512i keep = _mm512_set1_epi32(scaled ? -1 : 0);  // not scaled: encode +0
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_and_si512(_mm512_castps_si512(_mm512_div_ps(_mm512_loadu_ps(x + i), d)), keep);
    const __m512i top = _mm512_srli_epi32(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), 16);
    const __m512i clamped = _mm512_min_epi32(_mm512_max_epi32(top, _mm512_set1_epi32(kFirst)), _mm512_set1_epi32(kOne));
    const __m512i negative = _mm512_srai_epi32(u, 31);  // all ones for x < 0
    const __m512i bucket = _mm512_add_epi32(_mm512_sub_epi32(clamped, _mm512_set1_epi32(kFirst)),
                                            _mm512_and_si512(negative, _mm512_set1_epi32(kQuantBucketsPerSign)));
    const __m512i entry = _mm512_i32gather_epi32(bucket, buckets, 4);
    const __m512i low = _mm512_and_si512(u, _mm512_set1_epi32(0xFFFF));
    const __m512i key = _mm512_sub_epi32(_mm512_xor_si512(low, negative), negative);  // -low for x < 0
    const __mmask16 above = _mm512_cmpge_epi32_mask(key, _mm512_srai_epi32(entry, 8));  // key >= threshold
    const __m512i first = _mm512_and_si512(entry, _mm512_set1_epi32(0xFF));
    const __m512i code = _mm512_mask_add_epi32(first, above, first, _mm512_set1_epi32(1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(code));
  }
#elif defined(__AVX2__)
  constexpr int kFirst = (kQuantLowestExponent - 1) << kQuantBucketMantissaBits;
  constexpr int kOne = 127 << kQuantBucketMantissaBits;
  const __m256 d = _mm256_set1_ps(divisor);
  const __m256 keep = _mm256_castsi256_ps(_mm256_set1_epi32(scaled ? -1 : 0));  // not scaled: encode +0
  alignas(32) std::uint32_t bits[kCodecChunk];
  alignas(32) std::uint16_t index[kCodecChunk];
  for (; i + kCodecBlock <= n;) {
    const int64_t m = (n - i < kCodecChunk ? n - i : kCodecChunk) / kCodecBlock * kCodecBlock;
    // Pass 1: x / absmax, and its bucket (quant_encode's first lines).
    const auto bucket8 = [&](int64_t j) {
      const __m256i u = _mm256_castps_si256(_mm256_and_ps(_mm256_div_ps(_mm256_loadu_ps(x + i + j), d), keep));
      _mm256_store_si256(reinterpret_cast<__m256i*>(bits + j), u);
      const __m256i top = _mm256_srli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), 16);
      const __m256i clamped =
          _mm256_min_epi32(_mm256_max_epi32(top, _mm256_set1_epi32(kFirst)), _mm256_set1_epi32(kOne));
      const __m256i negative = _mm256_srai_epi32(u, 31);  // all ones for x < 0
      return _mm256_add_epi32(_mm256_sub_epi32(clamped, _mm256_set1_epi32(kFirst)),
                              _mm256_and_si256(negative, _mm256_set1_epi32(kQuantBucketsPerSign)));
    };
    for (int64_t j = 0; j < m; j += 16) {
      // packus works within 128-bit halves; the permute puts the four quarters back in order
      const __m256i words = _mm256_permute4x64_epi64(_mm256_packus_epi32(bucket8(j), bucket8(j + 8)), 0xD8);
      _mm256_store_si256(reinterpret_cast<__m256i*>(index + j), words);
    }
    // Pass 2: first + (key >= threshold), with key = +-low16(x); 32 codes per store.
    const auto code8 = [&](int64_t j) {
      std::uint64_t low_words, high_words;
      __builtin_memcpy(&low_words, index + j, 8);
      __builtin_memcpy(&high_words, index + j + 4, 8);
      const __m256i entry = _mm256_set_m128i(look_up4(buckets, high_words), look_up4(buckets, low_words));
      const __m256i u = _mm256_load_si256(reinterpret_cast<const __m256i*>(bits + j));
      const __m256i negative = _mm256_srai_epi32(u, 31);
      const __m256i low = _mm256_and_si256(u, _mm256_set1_epi32(0xFFFF));
      const __m256i key = _mm256_sub_epi32(_mm256_xor_si256(low, negative), negative);  // -low for x < 0
      const __m256i below = _mm256_cmpgt_epi32(_mm256_srai_epi32(entry, 8), key);       // key < threshold
      return _mm256_add_epi32(_mm256_and_si256(entry, _mm256_set1_epi32(0xFF)),
                              _mm256_add_epi32(_mm256_set1_epi32(1), below));
    };
    for (int64_t j = 0; j < m; j += kCodecBlock) {
      // packs work within 128-bit halves: the bytes come out as dwords 0 4 1 5 2 6 3 7
      const __m256i packed = _mm256_packus_epi16(_mm256_packus_epi32(code8(j), code8(j + 8)),
                                                 _mm256_packus_epi32(code8(j + 16), code8(j + 24)));
      const __m256i ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i + j), ordered);
    }
    i += m;
  }
#endif
  for (; i < n; ++i) {  // the scalar targets, and the tail of a tensor's last block
    const float normalized = x[i] / divisor;  // x / absmax
    codes[i] = static_cast<std::uint8_t>(quant_encode(buckets, scaled ? normalized : 0.0f));
  }
}

__attribute__((noinline)) void decode_block(const float* __restrict table, const std::uint8_t* __restrict codes,
                                            float scale, float* __restrict out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  // Sixteen codes at once, looked up in registers: each two-table permute
  // picks from 32 of the 256 values by the index's low five bits, and three
  // rounds of blends by bits 5, 6 and 7 keep the right one. A gather was as
  // fast on the Xeon but is twice as slow as plain loads on AMD's cores.
  __m512 part[kQuantCodes / 16];
  for (int k = 0; k < kQuantCodes / 16; ++k) part[k] = _mm512_loadu_ps(table + 16 * k);
  const __m512 s = _mm512_set1_ps(scale);
  for (; i + 16 <= n; i += 16) {
    const __m512i index = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
    __m512 pick[8];
    for (int k = 0; k < 8; ++k) pick[k] = _mm512_permutex2var_ps(part[2 * k], index, part[2 * k + 1]);
    for (int bit = 5, count = 8; bit < 8; ++bit, count /= 2) {
      const __mmask16 upper = _mm512_test_epi32_mask(index, _mm512_set1_epi32(1 << bit));
      for (int k = 0; k < count / 2; ++k) pick[k] = _mm512_mask_blend_ps(upper, pick[2 * k], pick[2 * k + 1]);
    }
    _mm512_storeu_ps(out + i, _mm512_mul_ps(pick[0], s));
  }
#endif
  for (; i < n; ++i) out[i] = table[codes[i]] * scale;  // code * absmax
}

// One block: its absmax (NaN when it holds a NaN or an infinity, so that the
// whole block decodes to NaN), then each element's code of x / absmax. A
// block of zeros, or a NaN block, gets the code of 0 everywhere.
inline void quantize_block(const QuantMap& map, const float* x, std::uint8_t* codes, float* absmax, int64_t n) {
  const std::uint32_t largest = largest_magnitude_bits(x, n);
  const float scale = largest >= 0x7F800000u ? __builtin_nanf("") : float_of(largest);
  *absmax = scale;
  const bool scaled = scale > 0.0f;  // false for 0 and NaN
  encode_block(map.buckets, x, scaled ? scale : 1.0f, scaled, codes, n);
}

// values[0, count) into codes and absmax, blocks starting at 0.
void quantize(const QuantMap* map, const float* values, std::uint8_t* codes, float* absmax, int64_t count,
              int64_t block_size) {
  for (int64_t lo = 0, b = 0; lo < count; lo += block_size, ++b)
    quantize_block(*map, values + lo, codes + lo, absmax + b, count - lo < block_size ? count - lo : block_size);
}

void dequantize(const QuantMap* map, const std::uint8_t* codes, const float* absmax, float* values, int64_t count,
                int64_t block_size) {
  for (int64_t lo = 0, b = 0; lo < count; lo += block_size, ++b)
    decode_block(map->codes, codes + lo, absmax[b], values + lo, count - lo < block_size ? count - lo : block_size);
}

// ------------------------------------------------- the one-pass 16-bit kernels
// Where a rule's element function is written over a lane type (Adam's
// adam_element), its steps need not go through float32 tiles: a vector of
// each stream is converted in registers, updated by the same element
// function on a vector of floats, and stored back, in one pass. The
// arithmetic is lane-wise IEEE, so each lane is exactly the scalar loop's;
// the stores round as the bulk conversions do. A block with a result the
// vector store cannot take (a NaN: its payload and the scalar converters'
// NaN rules; with the BF16 conversion, a float32 subnormal) is redone by the
// scalar element function, as is the tail. The vector is FloatVector, sixteen
// AVX-512 lanes. The other targets stage: on AVX2, eight-lane one-pass
// kernels were slower than the tiles (Adam, a 2-core Zen 4, 2026-12-02:
// float32 1.6-2.4x, bfloat16 params with float32 state 1.2-1.3x), and on
// every target the compiler's own float32 Adam loop beats the one-pass body
// (8-25% on AVX-512 there), so an unstaged float32 Adam step runs that loop
// (architecture.md, "One pass for 16-bit Adam").
// A rule's one-pass kernel: its scalars, the grad's unscaling and the
// param's rounding, and the task's streams.
struct OnePassOptions {
  bool scale_grad = false;        // divide the grad by grad_scale
  double grad_scale = 1.0;
  std::uint64_t random_key = 0;   // stochastic rounding of the param: as StagedScalars
  std::int64_t random_offset = 0;
  void* kahan_compensation = nullptr;  // Kahan summation of the param: as StagedScalars
};
using OnePassKernel = void (*)(const void* rule_scalars, const OnePassOptions& options, void* const* streams,
                               int64_t begin, int64_t end);

#if defined(__AVX512F__)
#define FUSEDOPT_ONE_PASS 1

// Sixteen float32 lanes with the scalar operators; LaneMask has a bit per lane.
using Native = __m512;
using LaneMask = __mmask16;
constexpr int64_t kVectorLanes = 16;
inline LaneMask less(Native a, Native b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline LaneMask at_least(Native a, Native b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
inline Native select(LaneMask take_b, Native a, Native b) { return _mm512_mask_blend_ps(take_b, a, b); }
using Bits16 = __m256i;  // sixteen 16-bit values
inline Bits16 load_bits16(const std::uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void store_bits16(std::uint16_t* p, Bits16 x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x); }
inline Native widen_bf16(Bits16 h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline Native widen_f16(Bits16 h) { return _mm512_cvtph_ps(h); }
inline Bits16 narrow_f16(Native x) { return _mm512_cvtps_ph(x, kNearestEven); }
using NativeInt = __m512i;
inline NativeInt lane_index() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
inline Bits16 low_halves(NativeInt a) { return _mm512_cvtepi32_epi16(a); }  // each lane < 2^16
inline Native set1(float x) { return _mm512_set1_ps(x); }
inline Native add(Native a, Native b) { return _mm512_add_ps(a, b); }
inline Native sub(Native a, Native b) { return _mm512_sub_ps(a, b); }
inline Native mul(Native a, Native b) { return _mm512_mul_ps(a, b); }
inline Native div(Native a, Native b) { return _mm512_div_ps(a, b); }
inline Native sqrt_lanes(Native a) { return _mm512_sqrt_ps(a); }
inline Native mul_add(Native a, Native b, Native c) { return _mm512_fmadd_ps(a, b, c); }       // a b + c
inline Native neg_mul_add(Native a, Native b, Native c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline Native load_floats(const float* p) { return _mm512_loadu_ps(p); }
inline void store_floats(float* p, Native x) { _mm512_storeu_ps(p, x); }
inline NativeInt bits_of_lanes(Native x) { return _mm512_castps_si512(x); }
inline NativeInt xor_lanes(NativeInt a, NativeInt b) { return _mm512_xor_si512(a, b); }
inline NativeInt shift_right_lanes(NativeInt a, int n) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(n)); }

// Unsigned 32-bit lanes with the operators mix32 uses.
struct UInt32Vector {
  NativeInt v;
  explicit UInt32Vector(NativeInt x) : v(x) {}
  explicit UInt32Vector(std::uint32_t x) : v(_mm512_set1_epi32(static_cast<int>(x))) {}
};
inline UInt32Vector operator^(UInt32Vector a, UInt32Vector b) { return UInt32Vector(xor_lanes(a.v, b.v)); }
inline UInt32Vector operator>>(UInt32Vector a, int n) { return UInt32Vector(shift_right_lanes(a.v, n)); }
inline UInt32Vector operator*(UInt32Vector a, UInt32Vector b) { return UInt32Vector(_mm512_mullo_epi32(a.v, b.v)); }
inline UInt32Vector operator+(UInt32Vector a, UInt32Vector b) { return UInt32Vector(_mm512_add_epi32(a.v, b.v)); }
constexpr LaneMask kAllLanes = static_cast<LaneMask>((1u << kVectorLanes) - 1);

struct FloatVector {
  Native v;
  FloatVector() = default;
  explicit FloatVector(Native x) : v(x) {}
  explicit FloatVector(double x) : v(set1(static_cast<float>(x))) {}  // as T(x) for T = float
};
inline FloatVector operator+(FloatVector a, FloatVector b) { return FloatVector(add(a.v, b.v)); }
inline FloatVector operator-(FloatVector a, FloatVector b) { return FloatVector(sub(a.v, b.v)); }
inline FloatVector operator*(FloatVector a, FloatVector b) { return FloatVector(mul(a.v, b.v)); }
inline FloatVector operator/(FloatVector a, FloatVector b) { return FloatVector(div(a.v, b.v)); }
inline FloatVector square_root(FloatVector x) { return FloatVector(sqrt_lanes(x.v)); }
inline FloatVector maximum(FloatVector a, FloatVector b) {  // (a < b || b != b) ? b : a
  return FloatVector(select(less(a.v, b.v) | nan_lanes(b.v), a.v, b.v));
}

// x / c for a c fixed for the step, correctly rounded without a division:
// with y = 1/c rounded to nearest, q = x y is within two ulps of x / c; one
// correction q + (x - c q) y (fused, the remainder exact) makes q faithful,
// and a second returns exactly the rounded quotient (Markstein's theorem:
// y within half an ulp of 1/c, q faithful). That needs no underflow in the
// remainders and no overflow: c in [2^-20, 1] (else the step divides) and
// x in [2^-40, 2^64), which holds every square root of a finite positive
// float from 2^-80 on. Other lanes (0, inf, NaN, tiny x) divide.
// tests/test_precision.py checks it against NumPy on every target.
template <>
struct Divisor<FloatVector> {
  Native value, reciprocal;
  bool multiply;  // c is in the range where the corrected product is exact
  bool identity;  // c is 1: Adam's sqrt(1 - beta2^t) from t of about 16,600 (beta2 0.999) on
  explicit Divisor(double divisor) {
    const float c = static_cast<float>(divisor);
    value = set1(c);
    reciprocal = set1(1.0f / c);
    multiply = c >= 0x1p-20f && c <= 1.0f;
    identity = c == 1.0f;
  }
};
inline FloatVector operator/(FloatVector x, const Divisor<FloatVector>& d) {
  if (d.identity && nan_lanes(x.v) == 0) return x;  // x / 1 is x, but for the quieting of a signalling NaN
  if (!d.multiply) return FloatVector(div(x.v, d.value));
  const Native c = d.value, y = d.reciprocal;
  const Native q0 = mul(x.v, y);
  const Native q1 = mul_add(neg_mul_add(c, q0, x.v), y, q0);  // faithful
  const Native q2 = mul_add(neg_mul_add(c, q1, x.v), y, q1);  // rounded to nearest
  const LaneMask in_range = at_least(x.v, set1(0x1p-40f)) & less(x.v, set1(0x1p64f));
  if (in_range == kAllLanes) return FloatVector(q2);
  return FloatVector(select(static_cast<LaneMask>(~in_range & kAllLanes), q2, div(x.v, c)));
}

// How a stream's elements are stored: one element or a vector, to and from
// float32. `scalar_lanes` are the lanes a vector store would get wrong or
// whose NaN the vector arithmetic may not have made as the scalar code does:
// a block with any is redone by the scalar code. `unstorable_lanes` are those
// of them that are not NaN (float32 subnormals into bfloat16 with the BF16
// instruction, which flushes them).
struct Float32Storage {
  static constexpr int kItemSize = 4;
  explicit Float32Storage(const OnePassOptions&) {}
  static float load(const void* base, int64_t i) { return static_cast<const float*>(base)[i]; }
  static void store(void* base, int64_t i, float x) { static_cast<float*>(base)[i] = x; }
  static FloatVector load_vector(const void* base, int64_t i) {
    return FloatVector(load_floats(static_cast<const float*>(base) + i));
  }
  static void store_vector(void* base, int64_t i, FloatVector x) { store_floats(static_cast<float*>(base) + i, x.v); }
  static LaneMask scalar_lanes(FloatVector x) { return nan_lanes(x.v); }
  static LaneMask unstorable_lanes(FloatVector) { return 0; }
  static void prefetch_companion(int64_t) {}  // a stream the store reads besides the param: none
};

template <float (*kLoad)(std::uint16_t), std::uint16_t (*kStore)(float), Native (*kWiden)(Bits16),
          Bits16 (*kNarrow)(Native), LaneMask (*kScalarLanes)(Native), LaneMask (*kUnstorableLanes)(Native)>
struct Storage16 {
  static constexpr int kItemSize = 2;
  explicit Storage16(const OnePassOptions&) {}
  static float load(const void* base, int64_t i) { return kLoad(static_cast<const std::uint16_t*>(base)[i]); }
  static void store(void* base, int64_t i, float x) { static_cast<std::uint16_t*>(base)[i] = kStore(x); }
  static FloatVector load_vector(const void* base, int64_t i) {
    return FloatVector(kWiden(load_bits16(static_cast<const std::uint16_t*>(base) + i)));
  }
  static void store_vector(void* base, int64_t i, FloatVector x) {
    store_bits16(static_cast<std::uint16_t*>(base) + i, kNarrow(x.v));
  }
  static LaneMask scalar_lanes(FloatVector x) { return kScalarLanes(x.v); }
  static LaneMask unstorable_lanes(FloatVector x) { return kUnstorableLanes(x.v); }
  static Bits16 narrowed(FloatVector x) { return kNarrow(x.v); }  // what store_vector writes
  static FloatVector widened(Bits16 h) { return FloatVector(kWiden(h)); }
  static void prefetch_companion(int64_t) {}
};
// bfloat16 loads are exact (the bits shifted to the top half). F16C quiets
// signalling NaNs on load; a NaN input gives a NaN result, and that block
// is redone by the scalar code, which keeps NumPy's bits.
using Bfloat16Storage =
    Storage16<bf16_load, bf16_nearest, widen_bf16, bf16_narrow, bf16_scalar_lanes, bf16_unstorable_lanes>;
using Float16Storage = Storage16<f16_load, f16_nearest, widen_f16, narrow_f16, nan_lanes, no_lanes>;

// Thirty-two bfloat16 values as two vectors of floats, for steps whose
// streams are all bfloat16. The unpacks put each value in the top half of a
// float lane (exact), in the order {0-3, 8-11, 16-19, 24-27} for `low` and
// {4-7, 12-15, 20-23, 28-31} for `high`; the element function is lane-wise,
// so the order does not matter as long as the store undoes it. That is one
// shuffle per sixteen values loaded instead of a widen and a shift, and one
// conversion of both vectors (and a permute) per thirty-two stored. All-bf16
// Adam steps took 0.93-0.97 times as long as with sixteen lanes at a time
// (Xeon, 2 threads, 1e5-1e7 elements, 2026-12-03): the divider, which the
// pairs do not relieve, is the other half of the limit (architecture.md).
struct Bfloat16Pair {
  FloatVector low, high;
};
inline Bfloat16Pair load_bf16_pair(const void* base, int64_t i) {
  const __m512i x = _mm512_loadu_si512(static_cast<const std::uint16_t*>(base) + i), zero = _mm512_setzero_si512();
  return {FloatVector(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, x))),
          FloatVector(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, x)))};
}
inline void store_bf16_pair(void* base, int64_t i, FloatVector low, FloatVector high) {
#if defined(__AVX512BF16__)
  // low's sixteen rounded values, then high's: 64-bit groups of four, put back in place.
  const __m512i words = (__m512i)_mm512_cvtne2ps_pbh(high.v, low.v);
  const __m512i in_place = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7), words);
#else
  // bf16_narrow's rounding in 32-bit lanes; the pack works per 128 bits, as the unpacks did.
  const auto rounded = [](FloatVector x) {
    const __m512i u = _mm512_castps_si512(x.v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  };
  const __m512i in_place = _mm512_packus_epi32(rounded(low), rounded(high));
#endif
  _mm512_storeu_si512(static_cast<std::uint16_t*>(base) + i, in_place);
}

// bf16_stochastic and f16_stochastic on sixteen lanes of x (not NaN: those
// blocks go to the scalar code), each half in the low bits of its 32-bit
// lane: the scalar functions' integer steps, each branch a blend.
inline NativeInt bf16_stochastic_lanes(Native x, UInt32Vector random) {
  return ((UInt32Vector(bits_of_lanes(x)) + random) >> 16).v;
}
// f16_stochastic's comparison of the dropped bits with the random ones, done
// as arithmetic. A normal half's 13 dropped bits m round up when m > r / 8
// (16 bits against 13), that is when m + (0x1FFF - r / 8) carries into the
// kept bits. Below 2^-14, |x| 2^24 (exact) holds the half's units and, below
// the point, the fraction that the comparison takes at 16 bits. Equal to
// f16_stochastic for every float32 but NaN (checked for all 2^31 magnitudes).
inline NativeInt f16_stochastic_lanes(Native x, UInt32Vector random) {
  const auto all = [](std::uint32_t c) { return _mm512_set1_epi32(static_cast<int>(c)); };
  const __m512i u = bits_of_lanes(x);
  const __m512i a = _mm512_and_si512(u, all(0x7FFFFFFFu));
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 16), all(0x8000u));
  const __m512i carry_in = _mm512_sub_epi32(all(0x1FFFu), _mm512_srli_epi32(random.v, 3));
  const __m512i normal = _mm512_srli_epi32(_mm512_add_epi32(_mm512_sub_epi32(a, all((127u - 15u) << 23)), carry_in), 13);
  const __m512 units = _mm512_mul_ps(_mm512_castsi512_ps(a), set1(0x1p24f));
  const __m512i whole = _mm512_cvttps_epi32(units);
  const __m512i fraction = _mm512_cvttps_epi32(mul(sub(units, _mm512_cvtepi32_ps(whole)), set1(0x1p16f)));
  const __m512i below = _mm512_mask_add_epi32(whole, _mm512_cmpgt_epu32_mask(fraction, random.v), whole, all(1u));
  const __mmask16 is_normal = _mm512_cmpge_epu32_mask(a, all(113u << 23));
  const __m512i out = _mm512_or_si512(sign, _mm512_mask_blend_epi32(is_normal, below, normal));
  const __mmask16 beyond = _mm512_cmpge_epu32_mask(a, all(0x47800000u));  // as round-to-nearest
  if (beyond == 0) return out;
  return _mm512_mask_blend_epi32(beyond, out, _mm512_cvtepu16_epi32(narrow_f16(x)));
}

// A 16-bit param stored with stochastic rounding (kRound, kRoundLanes) with
// the random bits random16 draws for the element's index in its param
// (random_offset: the index of the stream's first element), a lane each.
template <class Base, std::uint16_t (*kRound)(float, std::uint32_t), NativeInt (*kRoundLanes)(Native, UInt32Vector)>
struct StochasticStorage : Base {
  std::uint64_t key;
  std::int64_t first;
  explicit StochasticStorage(const OnePassOptions& o) : Base(o), key(o.random_key), first(o.random_offset) {}
  void store(void* base, int64_t i, float x) const {
    static_cast<std::uint16_t*>(base)[i] = kRound(x, random16(key, first + i));
  }
  // scalar_lanes (NaN) already sent NaN blocks to the scalar code.
  void store_vector(void* base, int64_t i, FloatVector x) const {
    const auto index = static_cast<std::uint64_t>(first + i);
    if ((index >> 32) != ((index + kVectorLanes - 1) >> 32)) {  // the lanes' indices differ in their high half
      alignas(64) float lanes[kVectorLanes];
      store_floats(lanes, x.v);
      for (int64_t l = 0; l < kVectorLanes; ++l) store(base, i + l, lanes[l]);
      return;
    }
    const UInt32Vector low = UInt32Vector(static_cast<std::uint32_t>(index)) + UInt32Vector(lane_index());
    const UInt32Vector random = random16_of(low, static_cast<std::uint32_t>(key), high_of(key, index));
    store_bits16(static_cast<std::uint16_t*>(base) + i, low_halves(kRoundLanes(x.v, random)));
  }
};
using Bfloat16StochasticStorage = StochasticStorage<Bfloat16Storage, bf16_stochastic, bf16_stochastic_lanes>;
using Float16StochasticStorage = StochasticStorage<Float16Storage, f16_stochastic, f16_stochastic_lanes>;

// A 16-bit param stored with Kahan summation: store_kahan's arithmetic on
// one element or a vector, with the compensation stream beside the param.
// A vector whose sum or compensation the vector store would get wrong is
// stored lane by lane, before anything of it is written. The check of the
// compensation covers the sum's: a NaN sum makes it NaN, and a subnormal
// sum that the BF16 conversion flushes makes it that sum.
template <class Base>
struct KahanStorage : Base {
  void* compensation;
  explicit KahanStorage(const OnePassOptions& o) : Base(o), compensation(o.kahan_compensation) {}
  void store(void* base, int64_t i, float x) const {
    const float old = Base::load(base, i);
    const float carry = Base::load(compensation, i) + (x - old);  // y: the update plus what earlier stores dropped
    Base::store(base, i, old + carry);                             // w <- round(w + y)
    Base::store(compensation, i, carry - (Base::load(base, i) - old));  // what this store dropped
  }
  void store_vector(void* base, int64_t i, FloatVector x) const {
    const FloatVector old = Base::load_vector(base, i);
    const FloatVector carry = Base::load_vector(compensation, i) + (x - old);
    const Bits16 sum = Base::narrowed(old + carry);
    const FloatVector dropped = carry - (Base::widened(sum) - old);
    if (Base::scalar_lanes(dropped) != 0) {
      alignas(64) float lanes[kVectorLanes];
      store_floats(lanes, x.v);
      for (int64_t l = 0; l < kVectorLanes; ++l) store(base, i + l, lanes[l]);
      return;
    }
    store_bits16(static_cast<std::uint16_t*>(base) + i, sum);
    Base::store_vector(compensation, i, dropped);
  }
  void prefetch_companion(int64_t i) const {
    _mm_prefetch(static_cast<const char*>(compensation) + Base::kItemSize * i, _MM_HINT_T0);
  }
};

template <class Storage>
inline void prefetch(const void* base, int64_t i) {
  _mm_prefetch(static_cast<const char*>(base) + Storage::kItemSize * i, _MM_HINT_T0);
}

// The read streams are prefetched this far ahead (elements): the hardware
// prefetchers alone left a bf16 step at 1e7 elements 15% slower (AVX-512).
constexpr int64_t kPrefetchAhead = 512;

// Adam in one pass: w and g stored as Param, the state arrays as State.
template <class Param, class State, bool kAmsgrad>
void adam_one_pass(const void* rule_scalars, const OnePassOptions& options, void* const* streams, int64_t begin,
                   int64_t end) {
  const auto& scalars = *static_cast<const AdamScalars*>(rule_scalars);
  const AdamConstants<float> k(scalars);
  const AdamConstants<FloatVector> kv(scalars);
  const bool scale_grad = options.scale_grad;
  const float grad_scale = static_cast<float>(options.grad_scale);
  const FloatVector grad_scale_v(options.grad_scale);
  const Param param(options);
  const State state(options);
  void* const w = streams[0];
  const void* const g = streams[1];
  void* const m = streams[2];
  void* const v = streams[3];
  void* const v_max = streams[4];
  const auto element = [&](int64_t i) {
    float grad = param.load(g, i);
    if (scale_grad) grad = grad / grad_scale;  // g <- g / grad_scale (unscale)
    float m_i = state.load(m, i), v_i = state.load(v, i), v_max_i = kAmsgrad ? state.load(v_max, i) : 0.0f;
    param.store(w, i, adam_element<float, kAmsgrad>(k, param.load(w, i), grad, m_i, v_i, v_max_i));
    state.store(m, i, m_i);
    state.store(v, i, v_i);
    if constexpr (kAmsgrad) state.store(v_max, i, v_max_i);
  };
  // The element function on a vector: the new w; m, v and v_max in place;
  // `scalar` gains the lanes the vector stores cannot take. A NaN in m, v or
  // v_max makes that lane of w NaN (every path from them to w keeps a NaN:
  // a product, a square root, a division, the NaN-keeping maximum), so the
  // check of w finds it; of the state only what its store gets wrong without
  // a NaN needs a look. Not checking the state for NaN made an in-cache step
  // 13-15% faster (float16, and bf16 params with float32 state; Xeon).
  const auto update = [&](FloatVector w_i, FloatVector grad, FloatVector& m_i, FloatVector& v_i, FloatVector& v_max_i,
                          LaneMask& scalar) {
    if (scale_grad) grad = grad / grad_scale_v;
    const FloatVector w_new = adam_element<FloatVector, kAmsgrad>(kv, w_i, grad, m_i, v_i, v_max_i);
    scalar |= param.scalar_lanes(w_new) | state.unstorable_lanes(m_i) | state.unstorable_lanes(v_i) |
              (kAmsgrad ? state.unstorable_lanes(v_max_i) : 0);
    return w_new;
  };
  const auto prefetch_ahead = [&](int64_t i) {
    if (i + kPrefetchAhead < end) {  // never past the piece: that may be another thread's, or no memory at all
      prefetch<Param>(w, i + kPrefetchAhead);
      prefetch<Param>(g, i + kPrefetchAhead);
      prefetch<State>(m, i + kPrefetchAhead);
      prefetch<State>(v, i + kPrefetchAhead);
      if constexpr (kAmsgrad) prefetch<State>(v_max, i + kPrefetchAhead);
      param.prefetch_companion(i + kPrefetchAhead);
    }
  };
  int64_t i = begin;
  if constexpr (std::is_same_v<Param, Bfloat16Storage> && std::is_same_v<State, Bfloat16Storage>) {
    constexpr int64_t kPair = 2 * kVectorLanes;
    for (; i + kPair <= end; i += kPair) {
      prefetch_ahead(i);
      Bfloat16Pair m_i = load_bf16_pair(m, i), v_i = load_bf16_pair(v, i);
      Bfloat16Pair v_max_i = kAmsgrad ? load_bf16_pair(v_max, i) : Bfloat16Pair{FloatVector(0.0), FloatVector(0.0)};
      const Bfloat16Pair w_i = load_bf16_pair(w, i), grad = load_bf16_pair(g, i);
      LaneMask scalar = 0;
      const FloatVector w_low = update(w_i.low, grad.low, m_i.low, v_i.low, v_max_i.low, scalar);
      const FloatVector w_high = update(w_i.high, grad.high, m_i.high, v_i.high, v_max_i.high, scalar);
      if (scalar != 0) {
        for (int64_t j = i; j < i + kPair; ++j) element(j);
        continue;
      }
      store_bf16_pair(w, i, w_low, w_high);
      store_bf16_pair(m, i, m_i.low, m_i.high);
      store_bf16_pair(v, i, v_i.low, v_i.high);
      if constexpr (kAmsgrad) store_bf16_pair(v_max, i, v_max_i.low, v_max_i.high);
    }
  }
  for (; i + kVectorLanes <= end; i += kVectorLanes) {
    prefetch_ahead(i);
    const FloatVector grad = param.load_vector(g, i);
    FloatVector m_i = state.load_vector(m, i), v_i = state.load_vector(v, i);
    FloatVector v_max_i = kAmsgrad ? state.load_vector(v_max, i) : FloatVector(0.0);
    LaneMask scalar = 0;
    const FloatVector w_i = update(param.load_vector(w, i), grad, m_i, v_i, v_max_i, scalar);
    if (scalar != 0) {
      for (int64_t j = i; j < i + kVectorLanes; ++j) element(j);
      continue;
    }
    param.store_vector(w, i, w_i);
    state.store_vector(m, i, m_i);
    state.store_vector(v, i, v_i);
    if constexpr (kAmsgrad) state.store_vector(v_max, i, v_max_i);
  }
  for (; i < end; ++i) element(i);
}

// The instantiation of a one-pass kernel (Kernel<Param, State, kAmsgrad>::kernel) for the streams' formats.
template <template <class, class, bool> class Kernel, class Param, bool kAmsgrad>
OnePassKernel with_state(Dtype state) {
  switch (state) {
    case kFloat32: return Kernel<Param, Float32Storage, kAmsgrad>::kernel;
    case kBfloat16: return Kernel<Param, Bfloat16Storage, kAmsgrad>::kernel;
    case kFloat16: return Kernel<Param, Float16Storage, kAmsgrad>::kernel;
    default: return nullptr;
  }
}

template <template <class, class, bool> class Kernel, bool kAmsgrad>
OnePassKernel with_param(Dtype param, ParamStore store, Dtype state) {
  if (store == ParamStore::kStochastic) {
    switch (param) {
      case kBfloat16: return with_state<Kernel, Bfloat16StochasticStorage, kAmsgrad>(state);
      case kFloat16: return with_state<Kernel, Float16StochasticStorage, kAmsgrad>(state);
      default: return nullptr;
    }
  }
  if (store == ParamStore::kKahan) {
    switch (param) {
      case kBfloat16: return with_state<Kernel, KahanStorage<Bfloat16Storage>, kAmsgrad>(state);
      case kFloat16: return with_state<Kernel, KahanStorage<Float16Storage>, kAmsgrad>(state);
      default: return nullptr;
    }
  }
  switch (param) {
    case kFloat32: return with_state<Kernel, Float32Storage, kAmsgrad>(state);
    case kBfloat16: return with_state<Kernel, Bfloat16Storage, kAmsgrad>(state);
    case kFloat16: return with_state<Kernel, Float16Storage, kAmsgrad>(state);
    default: return nullptr;
  }
}

template <class Param, class State, bool kAmsgrad>
struct AdamOnePass {
  static constexpr OnePassKernel kernel = adam_one_pass<Param, State, kAmsgrad>;
};
#endif

void divide_by_step_constant(const float* x, double divisor, float* out, int64_t count) {
  const Divisor<float> scalar(divisor);
  int64_t i = 0;
#ifdef FUSEDOPT_ONE_PASS
  const Divisor<FloatVector> vector(divisor);
  for (; i + kVectorLanes <= count; i += kVectorLanes) store_floats(out + i, (FloatVector(load_floats(x + i)) / vector).v);
#endif
  for (; i < count; ++i) out[i] = x[i] / scalar;
}

// The one-pass kernel of a staged task, or nullptr where the task needs the
// tiles: a rule without an element function over vectors, 8-bit state,
// master weights, or
// state arrays of different formats.
inline OnePassKernel one_pass_kernel(const StagedScalars& s) {
#ifdef FUSEDOPT_ONE_PASS
  if (s.rule != kAdam || s.param_copy != nullptr) return nullptr;
  for (int k = 2; k < s.stream_count; ++k)
    if (s.quant_maps[k] != nullptr || s.dtypes[k] != s.dtypes[2]) return nullptr;
  if (s.dtypes[1] != s.dtypes[0]) return nullptr;
  return static_cast<const AdamScalars*>(s.scalars)->amsgrad
             ? with_param<AdamOnePass, true>(s.dtypes[0], s.param_store, s.dtypes[2])
             : with_param<AdamOnePass, false>(s.dtypes[0], s.param_store, s.dtypes[2]);
#else
  (void)s;
  return nullptr;
#endif
}

// The one-pass kernel that steps a task with 8-bit state a tile at a time
// (quantized_one_pass), or nullptr: 16-bit w and g in their formats, the
// decoded state as float32 tiles.
inline OnePassKernel quantized_one_pass_kernel(const StagedScalars& s) {
#ifdef FUSEDOPT_ONE_PASS
  // float32 params keep the compiler's loop, as without 8-bit state (architecture.md).
  if (s.rule != kAdam || s.param_copy != nullptr || s.dtypes[0] == kFloat32 || s.dtypes[1] != s.dtypes[0])
    return nullptr;
  for (int k = 2; k < s.stream_count; ++k)
    if (s.quant_maps[k] == nullptr) return nullptr;
  return static_cast<const AdamScalars*>(s.scalars)->amsgrad
             ? with_param<AdamOnePass, true>(s.dtypes[0], s.param_store, kFloat32)
             : with_param<AdamOnePass, false>(s.dtypes[0], s.param_store, kFloat32);
#else
  (void)s;
  return nullptr;
#endif
}

// ------------------------------------------------------ the staged kernel
// Runs a rule's kernel on streams stored in other formats than its compute
// type T (docs/architecture.md): tile by tile, each stream not stored as T
// is loaded into a tile, the kernel runs on the tiles, and the written
// streams are stored back. Elements are independent, so tiling changes no
// result: a staged step is exactly "load, the T step, store". With 8-bit
// state a tile is whole blocks (the piece starts on a block boundary):
// each block is decoded, updated and re-encoded with its new absmax.
constexpr int64_t kTile = 256;  // elements: a tile of every stream stays in L1

template <class T>
void load_tile(Dtype dtype, const void* stream, int64_t start, T* __restrict tile, int64_t n) {
  if constexpr (sizeof(T) == sizeof(double)) {
    const double* __restrict in = static_cast<const double*>(stream) + start;  // only float64 reaches here
    for (int64_t i = 0; i < n; ++i) tile[i] = in[i];
  } else {
    const auto* bytes = static_cast<const char*>(stream) + start * itemsize(dtype);
    switch (dtype) {
      case kBfloat16: return bf16_to_float32(bytes, tile, n);
      case kFloat16: return f16_to_float32(bytes, tile, n);
      default: return float32_from_float32(bytes, tile, n);
    }
  }
}

// Round to nearest even into `dtype` (only 16-bit formats are ever stored from a tile of floats).
inline void store_nearest(Dtype dtype, const float* __restrict tile, void* stream, int64_t start, int64_t n) {
  auto* bits = static_cast<std::uint16_t*>(stream) + start;
  if (dtype == kBfloat16)
    float32_to_bf16(tile, bits, n);
  else
    float32_to_f16(tile, bits, n);
}

// The random bits of elements [start, start + n) of a tensor, as random16
// draws them, in a loop that vectorises: the index's high half is the same
// for the whole tile but where a tile crosses a multiple of 2^32.
inline void random_bits(std::uint64_t key, int64_t start, std::uint32_t* __restrict out, int64_t n) {
  const auto first = static_cast<std::uint64_t>(start);
  if ((first >> 32) != ((first + static_cast<std::uint64_t>(n) - 1) >> 32)) {
    for (int64_t i = 0; i < n; ++i) out[i] = random16(key, start + i);
    return;
  }
  const auto low = static_cast<std::uint32_t>(first), low_key = static_cast<std::uint32_t>(key);
  const std::uint32_t high = high_of(key, first);
  for (int64_t i = 0; i < n; ++i) out[i] = random16_of(low + static_cast<std::uint32_t>(i), low_key, high);
}

// `first` is the element index of stream[0] in its param (0 but for a shard piece).
inline void store_stochastic(Dtype dtype, const float* __restrict tile, void* stream, int64_t start, int64_t n,
                             std::uint64_t key, int64_t first) {
  std::uint16_t* __restrict out = static_cast<std::uint16_t*>(stream) + start;
  alignas(64) std::uint32_t random[kTile];
  random_bits(key, first + start, random, n);
  if (dtype == kBfloat16) {
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_stochastic(tile[i], random[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = f16_stochastic(tile[i], random[i]);
  }
}

// Kahan-compensated store of the param (optimi's kahan_sum): with w the
// stored param and c the compensation, both in `dtype`, and w' the kernel's
// float result:
//   y <- c + (w' - w);  w <- round(w + y);  c <- round(y - (w_new - w))
// A pass per line over the tile, so that the conversions run in bulk.
inline void store_kahan(Dtype dtype, const float* __restrict updated, void* stream, void* compensation,
                        int64_t start, int64_t n) {
  void* w = static_cast<std::uint16_t*>(stream) + start;
  void* c = static_cast<std::uint16_t*>(compensation) + start;
  const bool bf16 = dtype == kBfloat16;
  const auto load = bf16 ? bf16_to_float32 : f16_to_float32;
  const auto store = bf16 ? float32_to_bf16 : float32_to_f16;
  alignas(64) float old[kTile], carry[kTile], sum[kTile];
  load(w, old, n);
  load(c, carry, n);
  for (int64_t i = 0; i < n; ++i) {
    carry[i] = carry[i] + (updated[i] - old[i]);  // y: the update plus what earlier stores dropped
    sum[i] = old[i] + carry[i];
  }
  store(sum, w, n);  // w <- round(w + y)
  load(w, sum, n);   // the value stored
  for (int64_t i = 0; i < n; ++i) carry[i] = carry[i] - (sum[i] - old[i]);  // what this store dropped
  store(carry, c, n);
}

// 8-bit state through a one-pass kernel: per tile of whole blocks, the state
// is decoded into float32 tiles, the kernel steps w and g where they lie
// (converted in registers) with the tiles as its state, and the tiles are
// encoded back. It spares the staged loop's tiles of w and g and runs the
// one pass's arithmetic (Divisor) on the rest.
inline void quantized_one_pass(const StagedScalars& s, OnePassKernel kernel, void* const* streams, int64_t begin,
                               int64_t end) {
  const int64_t block = s.block_size;
  const int64_t tile = block >= kTile ? block : kTile / block * block;
  alignas(64) float buffer[(kMaxStreams - 2) * kMaxQuantBlock];
  const auto at = [](void* stream, Dtype dtype, int64_t start) {
    return static_cast<void*>(static_cast<char*>(stream) + start * itemsize(dtype));
  };
  for (int64_t start = begin; start < end; start += tile) {
    const int64_t n = end - start < tile ? end - start : tile;
    void* operands[kMaxStreams] = {at(streams[0], s.dtypes[0], start), at(streams[1], s.dtypes[1], start)};
    for (int k = 2; k < s.stream_count; ++k) {
      operands[k] = buffer + (k - 2) * tile;
      dequantize(s.quant_maps[k], static_cast<const std::uint8_t*>(streams[k]) + start, s.absmax[k] + start / block,
                 static_cast<float*>(operands[k]), n, block);
    }
    OnePassOptions options{s.scale_grad, s.grad_scale, s.random_key, s.random_offset + start, nullptr};
    if (s.param_store == ParamStore::kKahan) options.kahan_compensation = at(s.kahan_compensation, s.dtypes[0], start);
    kernel(s.scalars, options, operands, 0, n);
    for (int k = 2; k < s.stream_count; ++k)
      quantize(s.quant_maps[k], static_cast<const float*>(operands[k]), static_cast<std::uint8_t*>(streams[k]) + start,
               s.absmax[k] + start / block, n, block);
  }
}

template <class T>
void staged(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const StagedScalars*>(scalars);
  constexpr Dtype kNative = sizeof(T) == sizeof(double) ? kFloat64 : kFloat32;
  if constexpr (kNative == kFloat32) {
    if (const OnePassKernel one_pass = one_pass_kernel(s)) {
      const OnePassOptions options{s.scale_grad, s.grad_scale, s.random_key, s.random_offset, s.kahan_compensation};
      return one_pass(s.scalars, options, streams, begin, end);
    }
    if (const OnePassKernel one_pass = quantized_one_pass_kernel(s)) return quantized_one_pass(s, one_pass, streams, begin, end);
  }
  // Room for a tile of the largest block in every stream (only float32
  // arithmetic has 8-bit state); the tiles lie `tile` elements apart, so
  // that short tiles stay close together in L1.
  constexpr int64_t kCapacity = kMaxQuantBlock * int64_t(sizeof(float)) / int64_t(sizeof(T));
  alignas(64) T buffer[kMaxStreams * kCapacity];
  T* tiles[kMaxStreams];
  void* operands[kMaxStreams] = {};
  bool in_tile[kMaxStreams] = {};
  bool quantized = false;
  for (int k = 0; k < s.stream_count; ++k) {
    in_tile[k] = s.dtypes[k] != kNative || (k == 1 && s.scale_grad) || s.quant_maps[k] != nullptr;
    quantized = quantized || s.quant_maps[k] != nullptr;
  }
  const int64_t block = s.block_size;
  const int64_t tile = !quantized ? kTile : block >= kTile ? block : kTile / block * block;
  for (int k = 0; k < kMaxStreams; ++k) tiles[k] = buffer + k * tile;
  const T grad_scale = T(s.grad_scale);
  for (int64_t start = begin; start < end; start += tile) {
    const int64_t n = end - start < tile ? end - start : tile;
    for (int k = 0; k < s.stream_count; ++k) {
      if (!in_tile[k]) {
        operands[k] = static_cast<T*>(streams[k]) + start;
        continue;
      }
      operands[k] = tiles[k];
      if constexpr (kNative == kFloat32) {
        if (s.quant_maps[k] != nullptr) {
          dequantize(s.quant_maps[k], static_cast<const std::uint8_t*>(streams[k]) + start, s.absmax[k] + start / block,
                     tiles[k], n, block);
          continue;
        }
      }
      load_tile(s.dtypes[k], streams[k], start, tiles[k], n);
    }
    if (s.scale_grad) {
      T* __restrict g = tiles[1];
      for (int64_t i = 0; i < n; ++i) g[i] = g[i] / grad_scale;  // g <- g / grad_scale (unscale)
    }
    s.kernel(s.scalars, operands, 0, n);
    if constexpr (kNative == kFloat32) {
      for (int k = 0; k < s.stream_count; ++k) {
        if (k == 1 || !in_tile[k]) continue;  // the grad is never written back
        if (s.quant_maps[k] != nullptr)
          quantize(s.quant_maps[k], tiles[k], static_cast<std::uint8_t*>(streams[k]) + start, s.absmax[k] + start / block,
                   n, block);
        else if (k > 0 || s.param_store == ParamStore::kNearest)
          store_nearest(s.dtypes[k], tiles[k], streams[k], start, n);
        else  // the remedies' buffers hold kTile elements; a tile of 8-bit blocks may be longer
          for (int64_t lo = 0; lo < n; lo += kTile) {
            const int64_t m = n - lo < kTile ? n - lo : kTile;
            if (s.param_store == ParamStore::kStochastic)
              store_stochastic(s.dtypes[k], tiles[k] + lo, streams[k], start + lo, m, s.random_key, s.random_offset);
            else
              store_kahan(s.dtypes[k], tiles[k] + lo, streams[k], s.kahan_compensation, start + lo, m);
          }
      }
      // Master weights: the param is the rounded master.
      if (s.param_copy != nullptr)
        store_nearest(s.param_copy_dtype, static_cast<const float*>(operands[0]), s.param_copy, start, n);
    }
  }
}

// -------------------------------------------------------------------- Roof
// The memory traffic of a rule with trivial arithmetic: every written stream
// gets the sum of the read-only streams added. Measures what the hardware
// allows for that rule's streams (benchmarks only).
template <class T, int kRead, int kWritten>
void roof_loop(void* const* streams, int64_t begin, int64_t end) {
  static_assert(kRead > kWritten && kRead <= kMaxStreams, "a roof reads at least one stream more than it writes");
  T* __restrict out[kWritten];
  const T* __restrict in[kRead - kWritten];
  for (int k = 0; k < kWritten; ++k) out[k] = static_cast<T*>(streams[k]);
  for (int k = kWritten; k < kRead; ++k) in[k - kWritten] = static_cast<const T*>(streams[k]);
  for (int64_t i = begin; i < end; ++i) {
    T sum = in[0][i];
    for (int k = 1; k < kRead - kWritten; ++k) sum = sum + in[k][i];
    for (int k = 0; k < kWritten; ++k) out[k][i] = out[k][i] + sum;
  }
}

template <class T>
void roof(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const RoofScalars*>(scalars);
  // The shapes of the rules' streams: plain SGD, momentum, Adam and Adadelta, AMSGrad.
  if (s.read == 2 && s.written == 1) return roof_loop<T, 2, 1>(streams, begin, end);
  if (s.read == 3 && s.written == 2) return roof_loop<T, 3, 2>(streams, begin, end);
  if (s.read == 4 && s.written == 3) return roof_loop<T, 4, 3>(streams, begin, end);
  if (s.read == 5 && s.written == 4) return roof_loop<T, 5, 4>(streams, begin, end);
}

// The roof of streams of mixed widths: per tile, the read-only streams are
// summed into 32-bit lanes, added to every updated stream and written to
// every stored one (wrapping to the stream's width). Integer adds of
// zero-extended elements: the traffic of the step, none of its arithmetic.
template <class U>
void add_into(const void* stream, int64_t start, std::uint32_t* __restrict sum, int64_t n) {
  const U* __restrict in = static_cast<const U*>(stream) + start;
  for (int64_t i = 0; i < n; ++i) sum[i] += static_cast<std::uint32_t>(in[i]);
}

template <class U>
void update_with(void* stream, int64_t start, const std::uint32_t* __restrict sum, int64_t n, bool keep) {
  U* __restrict out = static_cast<U*>(stream) + start;
  if (keep)
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<U>(out[i] + sum[i]);
  else
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<U>(sum[i]);
}

void bytes_roof(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  const auto& s = *static_cast<const BytesRoofScalars*>(scalars);
  alignas(64) std::uint32_t sum[kTile];
  for (int64_t start = begin; start < end; start += kTile) {
    const int64_t n = end - start < kTile ? end - start : kTile;
    for (int64_t i = 0; i < n; ++i) sum[i] = 0;
    for (int k = s.updated; k < s.updated + s.read; ++k) {
      switch (s.widths[k]) {
        case 1: add_into<std::uint8_t>(streams[k], start, sum, n); break;
        case 2: add_into<std::uint16_t>(streams[k], start, sum, n); break;
        case 4: add_into<std::uint32_t>(streams[k], start, sum, n); break;
        default: add_into<std::uint64_t>(streams[k], start, sum, n); break;
      }
    }
    for (int k = 0; k < s.updated + s.read + s.stored; ++k) {
      if (k >= s.updated && k < s.updated + s.read) continue;
      const bool keep = k < s.updated;
      switch (s.widths[k]) {
        case 1: update_with<std::uint8_t>(streams[k], start, sum, n, keep); break;
        case 2: update_with<std::uint16_t>(streams[k], start, sum, n, keep); break;
        case 4: update_with<std::uint32_t>(streams[k], start, sum, n, keep); break;
        default: update_with<std::uint64_t>(streams[k], start, sum, n, keep); break;
      }
    }
  }
}

// -------------------------------------------------------- gradient passes
// The non-finite guard and gradient clipping. A reduction over floats only
// vectorises if the compiler may reorder the sum, which -ffp-contract=off
// builds do not allow; so the loops below keep kLanes partial results in an
// explicit array, element i of a piece going to lane (i - begin) % kLanes,
// and combine the lanes in a fixed tree at the end. The compiler maps the
// lanes onto vector registers of any width, and the result depends only on
// (begin, end): the same on every target and for every thread count.
constexpr int kLanes = 8;  // sum_lanes below adds exactly eight

template <class Acc>
inline Acc sum_lanes(const Acc (&lane)[kLanes]) {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Chunks this long are checked between early exits.
constexpr int64_t kFiniteChunk = 4096;

// x - x is 0 for a finite x and NaN for NaN and +-Inf; a sum of those is 0
// exactly when every element is finite, whatever the order.
template <class T>
bool all_finite(const void* data, int64_t begin, int64_t end) {
  const T* __restrict x = static_cast<const T*>(data);
  for (int64_t chunk = begin; chunk < end; chunk += kFiniteChunk) {
    const int64_t chunk_end = end - chunk < kFiniteChunk ? end : chunk + kFiniteChunk;
    T lane[kLanes] = {};
    int64_t i = chunk;
    for (; i + kLanes <= chunk_end; i += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] = lane[l] + (x[i + l] - x[i + l]);
    for (int l = 0; i < chunk_end; ++i, ++l) lane[l] = lane[l] + (x[i] - x[i]);
    if (sum_lanes(lane) != T(0)) return false;
  }
  return true;
}

// A 16-bit float is a NaN or an infinity exactly when its exponent bits are
// all ones: bfloat16 0x7F80, float16 0x7C00.
template <std::uint16_t kExponentMask>
bool all_finite_bits(const void* data, int64_t begin, int64_t end) {
  const std::uint16_t* __restrict x = static_cast<const std::uint16_t*>(data);
  for (int64_t chunk = begin; chunk < end; chunk += kFiniteChunk) {
    const int64_t chunk_end = end - chunk < kFiniteChunk ? end : chunk + kFiniteChunk;
    std::uint32_t bad = 0;
    for (int64_t i = chunk; i < chunk_end; ++i) bad |= (x[i] & kExponentMask) == kExponentMask;
    if (bad) return false;
  }
  return true;
}

// The per-element term of each norm, in double.
template <NormKind kKind>
inline double norm_term(double x, double p) {
  if constexpr (kKind == kNormL1 || kKind == kNormLinf) return absolute(x);
  if constexpr (kKind == kNormL2) return x * x;
  if constexpr (kKind == kNormLp) return power(absolute(x), p);
}

template <NormKind kKind>
inline double norm_combine(double a, double b) {
  if constexpr (kKind == kNormLinf) return maximum(a, b);
  else return a + b;
}

template <class T, NormKind kKind>
double norm_partial(const void* scalars, const void* data, int64_t begin, int64_t end) {
  const T* __restrict x = static_cast<const T*>(data);
  const double p = kKind == kNormLp ? static_cast<const NormScalars*>(scalars)->p : 0.0;
  double lane[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (int l = 0; l < kLanes; ++l)
      lane[l] = norm_combine<kKind>(lane[l], norm_term<kKind>(double(x[i + l]), p));
  for (int l = 0; i < end; ++i, ++l)
    lane[l] = norm_combine<kKind>(lane[l], norm_term<kKind>(double(x[i]), p));
  if constexpr (kKind == kNormLinf) {
    double largest = lane[0];
    for (int l = 1; l < kLanes; ++l) largest = maximum(largest, lane[l]);
    return largest;
  } else {
    return sum_lanes(lane);
  }
}

// g <- factor * g: the clip coefficient of clip_grad_norm_.
template <class T>
void scale(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  T* __restrict g = static_cast<T*>(streams[0]);
  const T factor = T(static_cast<const ScaleScalars*>(scalars)->factor);
  for (int64_t i = begin; i < end; ++i) g[i] = g[i] * factor;
}

// g <- min(max(g, -c), c), NaN left as NaN (torch.clamp does the same).
template <class T>
void clamp(const void* scalars, void* const* streams, int64_t begin, int64_t end) {
  T* __restrict g = static_cast<T*>(streams[0]);
  const T limit = T(static_cast<const ClampScalars*>(scalars)->limit);
  for (int64_t i = begin; i < end; ++i) {
    T x = g[i];
    x = x < -limit ? -limit : x;
    g[i] = x > limit ? limit : x;
  }
}

}  // namespace

extern const KernelTable kernel_table = {
    FUSEDOPT_STRINGIFY(FUSEDOPT_TARGET),
    {
#define FUSEDOPT_KERNEL_ROW(Type, name, summary) {name<float>, name<double>},
        FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_KERNEL_ROW)
#undef FUSEDOPT_KERNEL_ROW
        /* kRoof */ {roof<float>, roof<double>},
    },
    {staged<float>, staged<double>},
    {all_finite<float>, all_finite<double>, all_finite_bits<0x7F80>, all_finite_bits<0x7C00>},
    {
        /* kNormL1   */ {norm_partial<float, kNormL1>, norm_partial<double, kNormL1>},
        /* kNormL2   */ {norm_partial<float, kNormL2>, norm_partial<double, kNormL2>},
        /* kNormLp   */ {norm_partial<float, kNormLp>, norm_partial<double, kNormLp>},
        /* kNormLinf */ {norm_partial<float, kNormLinf>, norm_partial<double, kNormLinf>},
    },
    {scale<float>, scale<double>},
    {clamp<float>, clamp<double>},
    bytes_roof,
    {float32_from_float32, float64_to_float32, bf16_to_float32, f16_to_float32},
    {float32_to_float32, float32_to_float64, float32_to_bf16, float32_to_f16},
    quantize,
    dequantize,
    divide_by_step_constant,
};

}  // namespace FUSEDOPT_TARGET
}  // namespace fusedopt
