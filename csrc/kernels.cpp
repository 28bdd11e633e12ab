// The update rules as elementwise loops: the one source of truth for the math.
//
// CMake compiles this file once per SIMD target with -DFUSEDOPT_TARGET=<name>
// and that target's flags (-mavx2 -mfma, -mavx512f ..., or none for the
// baseline). Everything lives in namespace fusedopt::<target> and, inside it,
// an anonymous namespace, so no function of one target can ever be linked in
// place of another's. The only thing exported is the target's KernelTable.
//
// The loops are written the way ALGORITHMS.md writes the math and left for
// the compiler to vectorise (no intrinsics). The build turns FMA contraction
// off, so the vector body and the scalar tail round identically and the
// result does not depend on how the driver splits an array between threads.
// The reference (python/fusedopt/reference.py) evaluates each line in the
// same order.
#include <cstdint>

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
template <class T>
inline T maximum(T a, T b) { return a < b ? b : a; }

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

// -------------------------------------------------------------------- Adam
// torch.optim.Adam / AdamW. Streams: w, g, exp_avg, exp_avg_sq, and
// max_exp_avg_sq with amsgrad.
template <class T, bool kAmsgrad>
void adam_loop(const AdamScalars& s, T* __restrict w, const T* __restrict g, T* __restrict m,
               T* __restrict v, T* __restrict v_max, int64_t begin, int64_t end) {
  const T beta1 = T(s.beta1), one_minus_beta1 = T(1.0 - s.beta1);
  const T beta2 = T(s.beta2), one_minus_beta2 = T(1.0 - s.beta2);
  const T eps = T(s.eps), weight_decay = T(s.weight_decay), decay_factor = T(s.decay_factor);
  const T step_size = T(s.step_size), bias_correction2_sqrt = T(s.bias_correction2_sqrt);
  const T grad_sign = T(s.grad_sign);
  const bool coupled_decay = s.weight_decay != 0.0;
  for (int64_t i = begin; i < end; ++i) {
    T grad = grad_sign * g[i];                                  // maximize: g <- -g
    grad = coupled_decay ? grad + weight_decay * w[i] : grad;   // L2: g <- g + wd * w
    const T param = decay_factor * w[i];                        // AdamW: w <- (1 - lr wd) w
    m[i] = beta1 * m[i] + one_minus_beta1 * grad;               // m <- b1 m + (1-b1) g
    v[i] = beta2 * v[i] + one_minus_beta2 * (grad * grad);      // v <- b2 v + (1-b2) g^2
    T second_moment = v[i];
    if constexpr (kAmsgrad) {
      v_max[i] = maximum(v_max[i], v[i]);                       // vmax <- max(vmax, v)
      second_moment = v_max[i];
    }
    w[i] = param - step_size * m[i] / (square_root(second_moment) / bias_correction2_sqrt + eps);
                                   // w <- w - lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)
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

}  // namespace

extern const KernelTable kernel_table = {
    FUSEDOPT_STRINGIFY(FUSEDOPT_TARGET),
    {
        /* kMomentum */ {momentum<float>, momentum<double>},
        /* kSgd      */ {sgd<float>, sgd<double>},
        /* kAdadelta */ {adadelta<float>, adadelta<double>},
        /* kAdam     */ {adam<float>, adam<double>},
        /* kRoof     */ {roof<float>, roof<double>},
    },
};

}  // namespace FUSEDOPT_TARGET
}  // namespace fusedopt
