// fusedopt.torch's per-step check of its cached plan (torch_plan.cpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace fusedopt {
namespace py = pybind11;

// What check_torch_plan found, as bits; 0: the plan describes the optimizer as it is.
enum PlanChange : int {
  kPlanRebuild = 1,        // something structural differs: build a new plan
  kPlanGroupValues = 2,    // a group's value is another object (a scheduler's lr): is the state layout the same?
  kPlanNewGrads = 4,       // new gradient objects, or new memory under them: new views
  kPlanMirrorsEdited = 8,  // a 0-d state tensor (step, mu_product) was edited in place: read again
};

// (flags, grads): grads is [param.grad for param in plan.params] (None when rebuilding).
py::tuple check_torch_plan(py::handle plan, py::handle param_groups, py::handle state);
// Copies the core's numbers (plan.mirror_entries[k][plan.mirror_keys[k]]) into
// torch's 0-d tensors; returns the values they now hold.
py::list record_torch_plan(py::handle plan);
// A C-contiguous, writeable array of `dtype` and `shape` over memory at
// `address` that it neither owns nor keeps alive: a gradient's view, which
// the plan uses only while it has checked that the gradient still owns that
// memory (torch.py, _unowned_view). Private to fusedopt.torch.
py::object unowned_view(const py::dtype& dtype, const std::vector<py::ssize_t>& shape, std::uintptr_t address);

}  // namespace fusedopt
