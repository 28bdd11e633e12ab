// What each update rule needs besides its loop: its hyperparameters (read
// from a param group and validated), the names of its state arrays, and the
// per-step scalars its kernel takes (bias corrections and the like, computed
// once per tensor per step, in double).
#pragma once

#include <cstdint>
#include <cstring>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernel_types.hpp"
#include "py_values.hpp"

namespace fusedopt {
namespace py = pybind11;

// Every state array a rule may keep, with the sign of its values: 8-bit
// state codes signed arrays (first moments, momentum) with bitsandbytes'
// signed map and arrays that are never negative (second moments, sums of
// squares, maxima of magnitudes) with the unsigned one, which spends all 256
// codes on [0, 1].
enum class StateSign : bool { kSigned, kNonNegative };
struct StateArray {
  const char* name;
  StateSign sign;
};
constexpr StateSign kSigned = StateSign::kSigned, kNonNegative = StateSign::kNonNegative;

// One piece of per-param state and the value it starts from.
struct StateKey {
  const char* name;
  double initial;
  StateSign sign = StateSign::kSigned;  // from the rule's state_arrays (state_keys_of fills it in)
};

constexpr int kMaxStateArrays = kMaxStreams - 2;  // the streams after w and g
constexpr int kMaxStateScalars = 2;

// What a rule keeps per param besides "step": arrays shaped like the param
// (kernel streams 2, 3, ... in this order), and plain numbers, such as
// NAdam's running product of momentum coefficients, that the step machinery
// reads before the kernels run and writes back afterwards, as it does "step".
// Both start at their `initial` value, at construction or when a setting
// turns them on later.
struct StateKeys {
  StateKey arrays[kMaxStateArrays] = {};
  int array_count = 0;
  StateKey scalars[kMaxStateScalars] = {};
  int scalar_count = 0;

  StateKeys& array(const char* name, double initial = 0.0) {
    if (array_count == kMaxStateArrays) throw std::logic_error("a rule keeps more state arrays than kMaxStreams allows");
    arrays[array_count++] = {name, initial};
    return *this;
  }
  StateKeys& scalar(const char* name, double initial) {
    if (scalar_count == kMaxStateScalars) throw std::logic_error("a rule keeps more scalar state than kMaxStateScalars");
    scalars[scalar_count++] = {name, initial};
    return *this;
  }
};

// What a rule's scalars() knows about one param at this step.
// `t` counts the updates made so far including this one (t = 1 on the first).
// `buffer_is_new` is true when a lazily created state array (a momentum buffer
// turned on after construction) has never been written.
// `scalar_state` holds the rule's scalar state (StateKeys::scalars order) as
// it was before this step; scalars() leaves the values after it there.
struct StepContext {
  std::int64_t t;
  bool buffer_is_new;
  double* scalar_state;
};

struct MomentumRule {
  static constexpr RuleId id = kMomentum;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"velocity", kSigned}};
  struct Hyper { double lr, momentum; };
  using Scalars = MomentumScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper&) { return StateKeys().array("velocity"); }
  static Scalars scalars(const Hyper& h, StepContext) { return {h.lr, h.momentum}; }
};

struct SgdRule {
  static constexpr RuleId id = kSgd;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"momentum_buffer", kSigned}};
  struct Hyper { double lr, momentum, dampening, weight_decay; bool nesterov, maximize; };
  using Scalars = SgdScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdadeltaRule {
  static constexpr RuleId id = kAdadelta;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {
      {"square_avg", kNonNegative}, {"acc_delta", kNonNegative}, {"square_weight_avg", kNonNegative}};
  struct Hyper { double lr, rho, eps, weight_decay; bool maximize, scale_by_weights; };
  using Scalars = AdadeltaScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdamRule {
  static constexpr RuleId id = kAdam;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {
      {"exp_avg", kSigned}, {"exp_avg_sq", kNonNegative}, {"max_exp_avg_sq", kNonNegative}};
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay;
    bool amsgrad, maximize, decoupled_weight_decay;
  };
  using Scalars = AdamScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct RmspropRule {
  static constexpr RuleId id = kRmsprop;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {
      {"square_avg", kNonNegative}, {"momentum_buffer", kSigned}, {"grad_avg", kSigned}};
  struct Hyper { double lr, alpha, eps, weight_decay, momentum; bool centered, maximize; };
  using Scalars = RmspropScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdagradRule {
  static constexpr RuleId id = kAdagrad;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"sum", kNonNegative}};
  struct Hyper { double lr, lr_decay, weight_decay, initial_accumulator_value, eps; bool maximize; };
  using Scalars = AdagradScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct NadamRule {
  static constexpr RuleId id = kNadam;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"exp_avg", kSigned}, {"exp_avg_sq", kNonNegative}};
  struct Hyper {
    double lr, beta1, beta2, eps, weight_decay, momentum_decay;
    bool decoupled_weight_decay, maximize;
  };
  using Scalars = NadamScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct RadamRule {
  static constexpr RuleId id = kRadam;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"exp_avg", kSigned}, {"exp_avg_sq", kNonNegative}};
  struct Hyper { double lr, beta1, beta2, eps, weight_decay; bool decoupled_weight_decay, maximize; };
  using Scalars = RadamScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdamaxRule {
  static constexpr RuleId id = kAdamax;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"exp_avg", kSigned}, {"exp_inf", kNonNegative}};
  struct Hyper { double lr, beta1, beta2, eps, weight_decay; bool maximize; };
  using Scalars = AdamaxScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct LionRule {
  static constexpr RuleId id = kLion;
  // Every state array the rule may keep, whatever its settings, and its sign.
  static constexpr StateArray state_arrays[] = {{"exp_avg", kSigned}};
  struct Hyper { double lr, beta1, beta2, weight_decay; bool maximize; };
  using Scalars = LionScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

// The options every rule shares, read from a group beside the rule's own:
// how its arrays are stored (docs/architecture.md). All are optional: a group
// without them keeps its state in the param's dtype and rounds to nearest.
//   state_dtype     None (the param's), a dtype name, or {state key: name}
//   master_weights  a float32 master copy (state key "master_param") for a 16-bit param
//   kahan_sum       a compensation buffer (state key "kahan_comp") for a 16-bit param
//   rounding        "nearest" or "stochastic" (16-bit params), with `seed`, an int in [0, 2**64)
//   state_bits      32 (default), 16 (state_dtype='bfloat16') or 8: block-quantized state of
//                   the params with at least `min_8bit_size` elements (default 4096), in
//                   blocks of `block_size` (default 256, a multiple of 64 up to 4096)
struct StorageOptions {
  bool master_weights = false, kahan_sum = false, stochastic = false;
  std::uint64_t seed = 0;
  int state_bits = 32;
  std::int64_t block_size = 256, min_8bit_size = 4096;
  bool state_dtype_given = false;  // one dtype for every state array
  Dtype state_dtype_all = kFloat32;
  struct KeyDtype {
    std::string key;
    Dtype dtype;
    bool operator==(const KeyDtype& o) const { return key == o.key && dtype == o.dtype; }
  };
  std::vector<KeyDtype> state_dtype_per_key;
  std::int64_t group_index = 0;
  // Private, for fusedopt.distributed: a group of shard pieces (slices of
  // the full optimizer's params) has "_random_index", one (position, element
  // offset[, param elements]) per param of the group: the full param's
  // position, where the piece starts in it and the full param's size.
  // Stochastic rounding then draws the full param's random bits, and the
  // piece keeps 8-bit state exactly when its full param does. Empty: each
  // param's own position, offset 0 and size.
  struct RandomIndex {
    std::int64_t position, offset;
    std::int64_t param_elements;  // 0: the array's own size
    std::int64_t deciding(std::int64_t own) const { return param_elements > 0 ? param_elements : own; }
    bool operator==(const RandomIndex& o) const {
      return position == o.position && offset == o.offset && param_elements == o.param_elements;
    }
  };
  bool operator==(const StorageOptions& o) const {
    return master_weights == o.master_weights && kahan_sum == o.kahan_sum && stochastic == o.stochastic &&
           seed == o.seed && state_bits == o.state_bits && block_size == o.block_size &&
           min_8bit_size == o.min_8bit_size && state_dtype_given == o.state_dtype_given &&
           state_dtype_all == o.state_dtype_all && state_dtype_per_key == o.state_dtype_per_key &&
           group_index == o.group_index && random_index == o.random_index;
  }
  std::vector<RandomIndex> random_index;

  // The dtype a new state array of `key` is made in, for a param of `param_dtype`
  // (one that keeps unquantized state).
  Dtype state_dtype(const char* key, Dtype param_dtype) const;
  // Whether a param of `param_elements` elements keeps 8-bit state. The one
  // place that decides: a shard of a param must ask with the full param's size.
  bool quantizes(std::int64_t param_elements) const {
    return state_bits == 8 && param_elements >= min_8bit_size;
  }
  std::int64_t block_count(std::int64_t elements) const { return (elements + block_size - 1) / block_size; }
  // ValueError when an option makes no sense for a param of this dtype.
  void check_param(Dtype param_dtype, std::size_t group) const;
  // ValueError when a per-key state_dtype names a state array the rule never keeps.
  template <class Rule>
  void check_keys() const {
    check_keys(Rule::state_arrays, static_cast<int>(std::size(Rule::state_arrays)));
  }
  void check_keys(const StateArray* arrays, int count) const;
};
StorageOptions read_storage_options(const GroupReader& group);

// A rule's state keys for its settings, each array with its sign.
template <class Rule>
StateKeys state_keys_of(const typename Rule::Hyper& hyper) {
  StateKeys keys = Rule::state_keys(hyper);
  for (int k = 0; k < keys.array_count; ++k) {
    bool found = false;
    for (const StateArray& array : Rule::state_arrays) {
      if (std::strcmp(array.name, keys.arrays[k].name) != 0) continue;
      keys.arrays[k].sign = array.sign;
      found = true;
    }
    if (!found) throw std::logic_error(std::string(keys.arrays[k].name) + " is missing from its rule's state_arrays");
  }
  return keys;
}

// Every rule's streams fit a Task: w, g and at most kMaxStateArrays more.
#define FUSEDOPT_CHECK_STREAMS(Type, name, summary)                                \
  static_assert(std::size(Type##Rule::state_arrays) <= kMaxStateArrays,       \
                #Type "Rule keeps more state arrays than kMaxStreams allows");    \
  static_assert(Type##Rule::id == k##Type, #Type "Rule has the id of another rule");
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_CHECK_STREAMS)
#undef FUSEDOPT_CHECK_STREAMS

}  // namespace fusedopt
