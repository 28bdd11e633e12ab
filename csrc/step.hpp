// One optimizer step over all of an optimizer's arrays: validate everything,
// then run the kernels once with the GIL released, then record the step.
// Written once for every rule; a rule only supplies its traits (rules.hpp).
#pragma once

#include <cstdint>
#include <memory>

#include <pybind11/pybind11.h>

namespace fusedopt {
namespace py = pybind11;

// State step counts are ints in [0, kMaxStep): t = step + 1 and every count
// the per-step scalars compute with (in double) stay exact.
constexpr std::int64_t kMaxStep = (std::int64_t(1) << 53) - 1;

// param_groups: list of dicts, each with "params" (a list of arrays) and the
//   rule's hyperparameters;
// grads: a list aligned with the params of all groups in order; None skips
//   that param (its state and step count are left alone);
// state: a list aligned the same way, of dicts holding the rule's state
//   arrays and "step", the number of updates made so far.
// Raises TypeError/ValueError naming the argument before any array changes.
//
// With check_finite, the grads are checked for NaN and infinities in the same
// parallel region, before any update: if one holds any, nothing at all is
// written (params, state arrays, step counts, scalar state) and the index of
// the first such grad is returned. Returns None when the step was applied.
//
// With grad_scale (a number > 0, or None), every grad is divided by it as it
// is loaded (loss scaling; the grads themselves are not written).
template <class Rule>
py::object step(py::handle param_groups, py::handle grads, py::handle state, bool check_finite,
                py::handle grad_scale);

// What one step read and checked, kept for the next (bound as
// _core.StepCache; held by fusedopt.torch's plan, which gives the core the
// same views at every step).
struct StepCache {
  struct Entry {
    virtual ~Entry() = default;
  };
  std::unique_ptr<Entry> entry;
  int rule = -1;  // the RuleId entry was collected for
  bool in_use = false;
  std::int64_t hits = 0;  // steps that used the entry (for tests and diagnostics)
};

// step() for callers that give the same objects at every step: when the
// groups' params lists, the state dicts and the state arrays in them are the
// objects of the step `cache` holds, the same params have grads, and each
// group's state keys and storage options are the same, only the
// hyperparameters, step counts and scalar state are read again, and only
// grads that are new objects are checked (with every range for overlaps):
// none of the other arrays, which is most of a step's checking. Otherwise a
// full step, kept in `cache` unless it made state. The result, the errors and every array written are step()'s.
// NumPy arrays held by someone else can change their shape in place, so
// this is for arrays only the caller holds.
template <class Rule>
py::object step_cached(StepCache& cache, py::handle param_groups, py::handle grads, py::handle state,
                       bool check_finite, py::handle grad_scale);

// A step's grad_scale, read and checked.
struct GradScale {
  bool active = false;  // a scale other than 1
  double value = 1.0;
};
GradScale read_grad_scale(py::handle value);

// Checks that each array of `params` could be a param (a writeable, aligned,
// dense float32/float64/bfloat16/float16 ndarray, none overlapping another);
// errors name params[first_index + k].
void check_params(py::handle params, std::int64_t first_index);

// The memory roof: for each tensor, a list [a_1, ..., a_k, b] of arrays of one
// shape and dtype; adds b to every a_i in place (k = 1..4), all tensors in one
// parallel region. Same validation and threading as a step.
void roof(py::handle tensors);

// The memory roof of mixed storage: for each tensor, (updated, read, stored)
// lists of C-contiguous arrays of one size, elements of 1, 2, 4 or 8 bytes
// taken as unsigned integers; updated and stored arrays get the sum of the
// read ones (added, or written). Benchmarks only: arrays that overlap are not
// refused, they only give a wrong sum.
void bytes_roof(py::handle tensors);

// Passes over a list of gradients (None entries are skipped; every array a
// C-contiguous, aligned float32/float64 ndarray; errors name grads[i]).

// The p-norm of all grads taken as one vector (norm_type > 0, or inf),
// accumulated in double in blocks whose order does not depend on the thread
// count (parallel.hpp, reduce_blocks).
double grad_norm(py::handle grads, double norm_type);

// g <- factor * g for every grad, in one parallel region (each grad writeable,
// none overlapping another).
void scale_grads(py::handle grads, double factor);

// g <- min(max(g, -limit), limit) for every grad (limit >= 0), likewise.
void clamp_grads(py::handle grads, double limit);

// The index of the first grad holding a NaN or an infinity, or None.
py::object first_nonfinite(py::handle grads);

}  // namespace fusedopt
