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

// The state arrays a rule keeps per param, besides "step".
struct StateKeys {
  const char* names[kMaxStreams - 2];
  int count;
};

// `t` counts the updates made so far including this one (t = 1 on the first).
// `buffer_is_new` is true when a lazily created state array (a momentum buffer
// turned on after construction) has never been written.
struct StepCount {
  std::int64_t t;
  bool buffer_is_new;
};

struct MomentumRule {
  static constexpr RuleId id = kMomentum;
  struct Hyper { double lr, momentum; };
  using Scalars = MomentumScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper&) { return {{"velocity"}, 1}; }
  static Scalars scalars(const Hyper& h, StepCount) { return {h.lr, h.momentum}; }
};

struct SgdRule {
  static constexpr RuleId id = kSgd;
  struct Hyper { double lr, momentum, dampening, weight_decay; bool nesterov, maximize; };
  using Scalars = SgdScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepCount step);
};

struct AdadeltaRule {
  static constexpr RuleId id = kAdadelta;
  struct Hyper { double lr, rho, eps, weight_decay; bool maximize, scale_by_weights; };
  using Scalars = AdadeltaScalars;
  static Hyper read(const GroupReader& group);
  static StateKeys state_keys(const Hyper& h);
  static Scalars scalars(const Hyper& h, StepCount step);
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
  static Scalars scalars(const Hyper& h, StepCount step);
};

}  // namespace fusedopt
