// What each update rule needs besides its loop: its hyperparameters (read
// from a param group and validated), the names of its state arrays, and the
// per-step scalars its kernel takes (bias corrections and the like, computed
// once per tensor per step, in double).
#pragma once

#include <cstdint>
#include <string>

#include <pybind11/pybind11.h>

#include "kernel_types.hpp"

namespace fusedopt {
namespace py = pybind11;

// The name of a Python object's type, for error messages.
std::string type_name(py::handle value);

// dict[key] as a borrowed reference, or nullptr when absent. The hot path
// reads a dozen keys per step, so the key strings are made once and interned.
PyObject* interned(const char* key);
PyObject* dict_item(py::handle dict, const char* key);

// Reads one param group's hyperparameters; every error names the group and
// the hyperparameter, and is a TypeError (wrong kind of value) or a
// ValueError (missing, not finite, or out of range).
class GroupReader {
 public:
  GroupReader(py::handle group, std::int64_t group_index);

  double number(const char* name) const;  // any finite real number
  double at_least(const char* name, double low) const;
  // low <= x <= high, or low <= x < high when high_is_open.
  double in_range(const char* name, double low, double high, bool high_is_open) const;
  // A pair such as betas, each element in [low, high).
  std::pair<double, double> pair_in_range(const char* name, double low, double high) const;
  bool flag(const char* name) const;
  std::string choice(const char* name, std::initializer_list<const char*> options) const;
  [[noreturn]] void fail(const std::string& message) const;  // ValueError

 private:
  py::handle get(const char* name) const;
  std::string where(const char* name) const;
  std::string label(const char* name, int element) const;  // "betas[1] (param group 0)"
  double to_number(py::handle value, const char* name, int element) const;
  py::handle group_;
  std::int64_t index_;
};

// One piece of per-param state and the value it starts from.
struct StateKey {
  const char* name;
  double initial;
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
    arrays[array_count++] = {name, initial};
    return *this;
  }
  StateKeys& scalar(const char* name, double initial) {
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
  struct Hyper { double lr, momentum; };
  using Scalars = MomentumScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper&) { return StateKeys().array("velocity"); }
  static Scalars scalars(const Hyper& h, StepContext) { return {h.lr, h.momentum}; }
};

struct SgdRule {
  static constexpr RuleId id = kSgd;
  struct Hyper { double lr, momentum, dampening, weight_decay; bool nesterov, maximize; };
  using Scalars = SgdScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdadeltaRule {
  static constexpr RuleId id = kAdadelta;
  struct Hyper { double lr, rho, eps, weight_decay; bool maximize, scale_by_weights; };
  using Scalars = AdadeltaScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdamRule {
  static constexpr RuleId id = kAdam;
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
  struct Hyper { double lr, alpha, eps, weight_decay, momentum; bool centered, maximize; };
  using Scalars = RmspropScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdagradRule {
  static constexpr RuleId id = kAdagrad;
  struct Hyper { double lr, lr_decay, weight_decay, initial_accumulator_value, eps; bool maximize; };
  using Scalars = AdagradScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct NadamRule {
  static constexpr RuleId id = kNadam;
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
  struct Hyper { double lr, beta1, beta2, eps, weight_decay; bool decoupled_weight_decay, maximize; };
  using Scalars = RadamScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct AdamaxRule {
  static constexpr RuleId id = kAdamax;
  struct Hyper { double lr, beta1, beta2, eps, weight_decay; bool maximize; };
  using Scalars = AdamaxScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

struct LionRule {
  static constexpr RuleId id = kLion;
  struct Hyper { double lr, beta1, beta2, weight_decay; bool maximize; };
  using Scalars = LionScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepContext step);
};

}  // namespace fusedopt
