// The contract between the driver and the per-target kernels: plain data only.
//
// This header is included by every SIMD target's copy of the kernels
// (kernels.cpp) and by the ISA-agnostic driver, so it must hold no functions:
// a function compiled under AVX-512 flags must never be linked into a path
// that runs on a baseline CPU.
#pragma once

#include <cstdint>

namespace fusedopt {

// Index of an array's dtype in a KernelTable row.
enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kDtypeCount = 2 };

// The update rules, in KernelTable order.
enum RuleId : int { kMomentum, kSgd, kAdadelta, kAdam, kRoof, kRuleCount };

// A kernel updates elements [begin, end) of one tensor. streams[0] is the
// param, streams[1] the grad, streams[2..] the rule's state arrays in the
// order the rule names them; scalars points at the rule's *Scalars struct.
constexpr int kMaxStreams = 6;
using Kernel = void (*)(const void* scalars, void* const* streams, std::int64_t begin,
                        std::int64_t end);

struct KernelTable {
  const char* target;  // the name FUSEDOPT_ISA uses
  Kernel kernels[kRuleCount][kDtypeCount];
};

// Per-tensor, per-step scalars, computed once per call in double by rules.cpp
// and cast to the array's precision by the kernel. Switches that only select
// a value (maximize, weight decay) are folded into the numbers; switches that
// change which arrays are touched (momentum, amsgrad, nesterov) stay flags.

struct MomentumScalars {
  double lr, momentum;
};

struct SgdScalars {
  double lr, momentum, dampening, weight_decay;
  double grad_sign;          // -1 when maximizing
  bool use_momentum;         // momentum != 0: the momentum_buffer stream exists
  bool first_step;           // the buffer starts as a copy of the gradient
  bool nesterov;
};

struct AdadeltaScalars {
  double lr, rho, eps, weight_decay, grad_sign;
  bool scale_by_weights;     // the course's variant: track w^2 instead of dx^2
};

struct AdamScalars {
  double beta1, beta2, eps;
  double weight_decay;       // coupled (L2): added to the gradient, 0 when off
  double decay_factor;       // decoupled (AdamW): 1 - lr * wd, 1 when off
  double step_size;          // lr / (1 - beta1^t)
  double bias_correction2_sqrt;  // sqrt(1 - beta2^t)
  double grad_sign;
  bool amsgrad;
};

// The memory roof: the streams of a rule with trivial arithmetic. The first
// `written` streams are read and written back, the rest of the `read` streams
// are only read.
struct RoofScalars {
  int read, written;
};

}  // namespace fusedopt
