// One optimizer step over all of an optimizer's arrays: validate everything,
// then run the kernels once with the GIL released, then record the step.
// Written once for every rule; a rule only supplies its traits (rules.hpp).
#pragma once

#include <cstdint>

#include <pybind11/pybind11.h>

namespace fusedopt {
namespace py = pybind11;

// param_groups: list of dicts, each with "params" (a list of arrays) and the
//   rule's hyperparameters;
// grads: a list aligned with the params of all groups in order; None skips
//   that param (its state and step count are left alone);
// state: a list aligned the same way, of dicts holding the rule's state
//   arrays and "step", the number of updates made so far.
// Raises TypeError/ValueError naming the argument before any array changes.
template <class Rule>
void step(py::handle param_groups, py::handle grads, py::handle state);

// Checks that each array of `params` could be a param (a writeable, aligned,
// C-contiguous float32/float64 ndarray); errors name params[first_index + k].
void check_params(py::handle params, std::int64_t first_index);

// The memory roof: for each tensor, a list [a_1, ..., a_k, b] of arrays of one
// shape and dtype; adds b to every a_i in place (k = 1..4), all tensors in one
// parallel region. Same validation and threading as a step.
void roof(py::handle tensors);

}  // namespace fusedopt
