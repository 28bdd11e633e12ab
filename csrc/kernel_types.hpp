// The contract between the driver and the per-target kernels: plain data only.
//
// This header is included by every SIMD target's copy of the kernels
// (kernels.cpp) and by the ISA-agnostic driver, so it must hold no functions:
// a function compiled under AVX-512 flags must never be linked into a path
// that runs on a baseline CPU.
#pragma once

#include <cstdint>

#include "rule_list.hpp"

namespace fusedopt {

// How an array's elements are stored. The passes over arrays (finite
// check, norms, scale, clamp) are indexed by it in a KernelTable; bfloat16
// and float16 are stored as their 16 raw bits.
enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kBfloat16 = 2, kFloat16 = 3, kDtypeCount = 4 };
constexpr int kFloatDtypeCount = 2;  // the passes over grads take float32 and float64 only

// The arithmetic a rule's loop does: the index of its kernels in a
// KernelTable row. float32 is the compute type of float32 and of both 16-bit
// formats, which are staged through it (docs/architecture.md).
enum Compute : int { kComputeFloat32 = 0, kComputeFloat64 = 1, kComputeCount = 2 };
constexpr Compute compute_of(Dtype dtype) { return dtype == kFloat64 ? kComputeFloat64 : kComputeFloat32; }
constexpr Dtype dtype_of(Compute compute) { return compute == kComputeFloat64 ? kFloat64 : kFloat32; }
constexpr int itemsize(Dtype dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }

// The update rules, in KernelTable order, from rule_list.hpp (kRoof, last,
// is the benchmarks' memory roof).
enum RuleId : int {
#define FUSEDOPT_RULE_ID(Type, name, summary) k##Type,
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_ID)
#undef FUSEDOPT_RULE_ID
  kRoof, kRuleCount
};

// A kernel updates elements [begin, end) of one tensor. streams[0] is the
// param, streams[1] the grad, streams[2..] the rule's state arrays in the
// order the rule names them; scalars points at the rule's *Scalars struct.
// A rule may keep at most kMaxStreams - 2 state arrays (rules.hpp checks
// each rule's count at compile time).
constexpr int kMaxStreams = 6;
using Kernel = void (*)(const void* scalars, void* const* streams, std::int64_t begin,
                        std::int64_t end);

// The passes over gradients around a step.
//
// FiniteCheck: true when elements [begin, end) of an array are all finite.
using FiniteCheck = bool (*)(const void* data, std::int64_t begin, std::int64_t end);

// ReduceKernel: the partial of a norm over elements [begin, end) of one array,
// in double: sum |x| (L1), sum x^2 (L2), sum |x|^p (Lp, scalars points at a
// NormScalars) or max |x| (Linf, NaN if any element is NaN). The summation
// order is fixed by (begin, end) alone, the same on every target, so a
// blocked reduction over these partials is reproducible.
enum NormKind : int { kNormL1, kNormL2, kNormLp, kNormLinf, kNormKindCount };
using ReduceKernel = double (*)(const void* scalars, const void* data, std::int64_t begin,
                                std::int64_t end);

// How the staged kernel writes a tile of the param back (see StagedScalars).
enum class ParamStore : int {
  kNearest,     // round to nearest even, as NumPy, ml_dtypes and torch convert
  kStochastic,  // round up with probability (x - down) / (up - down), from counter-based random bits
  kKahan,       // round to nearest, and carry what the rounding dropped in a compensation stream
};

// ------------------------------------------------- 8-bit block-quantized state
// A state array kept in 8 bits: one uint8 code per element and a float32
// absmax per block of `block_size` elements of the tensor's flat index
// (the last block may be shorter). An element is codes[code] * absmax of its
// block (bitsandbytes' dynamic tree map, signed for signed state, unsigned for
// non-negative state; docs/precision.md). The tables are built once by the
// driver (quantize.cpp) and the kernels read them through a pointer.
constexpr int kQuantCodes = 256;
// Every block size is a multiple of the widest SIMD block the kernels keep
// whole, and at most kMaxQuantBlock (a block is staged as one tile).
constexpr std::int64_t kQuantBlockMultiple = 64;
constexpr std::int64_t kMaxQuantBlock = 4096;
// Encoding looks up the bucket of x's top 16 bits (sign, exponent, the top 7
// mantissa bits; |x| <= 1), which holds at most one threshold, and compares
// x's low 16 bits with that threshold's. Bucket b > 0 is exponent
// kQuantLowestExponent - 1 + (b >> 7) with mantissa bits b & 127; bucket 0
// also takes every smaller magnitude (below 2**(kQuantLowestExponent - 127)
// there is no threshold); x < 0 uses the second half of the table.
constexpr int kQuantBucketMantissaBits = 7;
constexpr int kQuantLowestExponent = 127 - 24;
constexpr int kQuantBucketsPerSign = (127 - kQuantLowestExponent + 2) << kQuantBucketMantissaBits;

struct QuantMap {
  float codes[kQuantCodes];       // ascending
  // thresholds[j]: the smallest float32 that is nearer codes[j + 1] than
  // codes[j] (ties go to codes[j + 1]); thresholds[255] is +inf. The code of
  // a normalized value x is the number of thresholds <= x.
  float thresholds[kQuantCodes];
  // Per bucket, (threshold << 8) | first: `first` the number of thresholds <=
  // the bucket's lowest value, `threshold` the low 16 bits of the one
  // threshold inside it (negated for x < 0), or 65536 when there is none.
  // The code of x is first + (+-low16(x) >= threshold): one 32-bit load.
  std::int32_t buckets[2 * kQuantBucketsPerSign];
};

// The scalars of a staged task: a rule kernel over compute-type streams, and
// how each of the task's streams is stored. The staged kernel walks its
// piece in tiles, loads every stream not stored in the compute type into a
// tile (the grad divided by grad_scale, when set), runs `kernel` on the
// tiles, and stores the written streams back (streams 0 and 2.., never the
// grad). With master weights streams[0] is the float32 master copy and
// `param_copy` the 16-bit param, written as the rounded master.
struct StagedScalars {
  RuleId rule;                  // which rule: some have a one-pass kernel for 16-bit streams
  Kernel kernel;                // the rule's kernel for the compute type
  const void* scalars;          // its scalars
  int stream_count;             // w, g and the state arrays
  Dtype dtypes[kMaxStreams];    // how each stream is stored
  bool scale_grad;              // divide the grad by grad_scale while loading it
  double grad_scale;
  ParamStore param_store;
  void* kahan_compensation;     // kKahan: the compensation, stored as dtypes[0]
  std::uint64_t random_key;     // kStochastic: hash of (seed, step, the param's position)
  std::int64_t random_offset;   // kStochastic: the element index of streams[0][0] (a shard piece's start)
  void* param_copy;             // master weights: the param, written as the rounded streams[0]
  Dtype param_copy_dtype;
  // 8-bit state: stream k is uint8 codes when quant_maps[k] is set, with
  // absmax[k] its per-block scales. The piece then starts on a block boundary.
  const QuantMap* quant_maps[kMaxStreams];
  float* absmax[kMaxStreams];
  std::int64_t block_size;
};

// values[0, count) <-> codes and per-block absmax (count may end inside a block):
// the staged kernel's conversions, exposed for tests and the reference.
using QuantizeKernel = void (*)(const QuantMap* map, const float* values, std::uint8_t* codes, float* absmax,
                                std::int64_t count, std::int64_t block_size);
using DequantizeKernel = void (*)(const QuantMap* map, const std::uint8_t* codes, const float* absmax,
                                  float* values, std::int64_t count, std::int64_t block_size);

struct KernelTable {
  const char* target;  // the name FUSEDOPT_ISA uses
  Kernel kernels[kRuleCount][kComputeCount];
  Kernel staged[kComputeCount];  // scalars: a StagedScalars
  FiniteCheck all_finite[kDtypeCount];
  ReduceKernel norm_partial[kNormKindCount][kFloatDtypeCount];
  Kernel scale[kFloatDtypeCount];  // streams[0] *= factor            (ScaleScalars)
  Kernel clamp[kFloatDtypeCount];  // streams[0] = clamp(., -c, c)    (ClampScalars)
  Kernel bytes_roof;               // benchmarks only                  (BytesRoofScalars)
  // Conversions between storage and float32 (tests and the reference check them):
  // to_float32[d](src, dst, n) and from_float32[d](src, dst, n), round to nearest even.
  void (*to_float32[kDtypeCount])(const void* src, float* dst, std::int64_t count);
  void (*from_float32[kDtypeCount])(const float* src, void* dst, std::int64_t count);
  QuantizeKernel quantize;
  DequantizeKernel dequantize;
  // out[i] = x[i] / divisor as the target's vector kernels divide by a
  // per-step constant (Adam's sqrt(1 - beta2^t); tests check it is exact).
  void (*divide_by_step_constant)(const float* x, double divisor, float* out, std::int64_t count);
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

struct RmspropScalars {
  double lr, alpha, eps, weight_decay, momentum, grad_sign;
  bool use_momentum;  // momentum > 0: the momentum_buffer stream exists
  bool centered;      // the grad_avg stream exists
};

struct AdagradScalars {
  double step_size;  // lr / (1 + (t - 1) * lr_decay)
  double eps, weight_decay, grad_sign;
};

struct NadamScalars {
  double beta1, beta2, eps;
  double weight_decay;      // coupled (L2), 0 when off
  double decay_factor;      // decoupled: 1 - lr * wd, 1 when off
  double bias_correction2;  // 1 - beta2^t
  double grad_step;         // lr (1 - mu_t) / (1 - mu_1 ... mu_t)
  double momentum_step;     // lr mu_{t+1} / (1 - mu_1 ... mu_{t+1})
  double grad_sign;
};

struct RadamScalars {
  double beta1, beta2, eps;
  double weight_decay, decay_factor;  // as NadamScalars
  // rectified: lr / (1 - beta1^t) * sqrt(1 - beta2^t) * r_t, else lr / (1 - beta1^t)
  double step_size;
  double grad_sign;
  bool rectified;  // rho_t > 5: the variance is tractable, use the adaptive step
};

struct AdamaxScalars {
  double beta1, beta2, eps, weight_decay;
  double step_size;  // lr / (1 - beta1^t)
  double grad_sign;
};

struct LionScalars {
  double lr, beta1, beta2;
  double decay_factor;  // 1 - lr * wd
  double grad_sign;
};

struct NormScalars {
  double p;  // the Lp exponent
};

struct ScaleScalars {
  double factor;
};

struct ClampScalars {
  double limit;  // >= 0: elements are clamped to [-limit, limit]
};

// The memory roof: the streams of a rule with trivial arithmetic. The first
// `written` streams are read and written back, the rest of the `read` streams
// are only read.
struct RoofScalars {
  int read, written;
};

// The memory roof of mixed storage (16-bit params with float32 state, master
// weights, 8-bit codes): streams of 1, 2, 4 or 8 bytes, as unsigned
// integers. Streams [0, updated) are read and written back, the next `read`
// ones only read, the last `stored` ones only written.
struct BytesRoofScalars {
  int updated, read, stored;
  int widths[kMaxStreams];  // bytes per element of each stream
};

}  // namespace fusedopt
