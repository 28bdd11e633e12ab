#include "step.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <pybind11/numpy.h>

#include "dispatch.hpp"
#include "parallel.hpp"
#include "rules.hpp"

namespace fusedopt {
namespace {

// An array as the caller names it: params[3], grads[3], state[3]['exp_avg'].
struct ArrayLabel {
  const char* list;
  std::int64_t index;
  const char* key = nullptr;

  std::string text() const {
    std::string s = std::string(list) + "[" + std::to_string(index) + "]";
    return key ? s + "['" + key + "']" : s;
  }
};

py::ssize_t length(py::handle sequence, const char* name) {
  if (!PyList_Check(sequence.ptr()) && !PyTuple_Check(sequence.ptr()))
    throw py::type_error(std::string(name) + " must be a list or tuple, got " + type_name(sequence));
  return py::len(sequence);
}

// A strong snapshot of a list or tuple: Python code that runs during a step
// (a hyperparameter's __float__, another thread while the GIL is released)
// may change the caller's lists, never the step's view of them.
py::tuple snapshot(py::handle sequence, const char* name) {
  length(sequence, name);
  auto copy = py::reinterpret_steal<py::tuple>(PySequence_Tuple(sequence.ptr()));
  if (!copy) throw py::error_already_set();
  return copy;
}

py::array as_array(py::handle object, const ArrayLabel& label) {
  if (!py::isinstance<py::array>(object))
    throw py::type_error(label.text() + " must be a numpy.ndarray, got " + type_name(object));
  return py::reinterpret_borrow<py::array>(object);
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// The layout every kernel relies on: one contiguous block of aligned
// elements that it may write to. Never fixed up by copying: a copy would be
// updated instead of the caller's array.
void check_layout(const py::array& a, const ArrayLabel& label, bool written) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(label.text() + " must be C-contiguous (fusedopt updates arrays in "
                          "place and never copies; pass np.ascontiguousarray(...) yourself)");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(label.text() + " is not aligned to its dtype");
  if (written && !a.writeable()) throw py::value_error(label.text() + " is read-only");
}

// A float32/float64 array the kernels can stream through (and write, if asked).
Dtype check_float_array(const py::array& a, const ArrayLabel& label, bool written) {
  Dtype dtype;
  if (a.dtype().equal(py::dtype::of<float>()))
    dtype = kFloat32;
  else if (a.dtype().equal(py::dtype::of<double>()))
    dtype = kFloat64;
  else
    throw py::type_error(label.text() + " has dtype " + dtype_name(a) +
                         "; fusedopt updates float32 and float64 arrays (native byte order)");
  check_layout(a, label, written);
  return dtype;
}

Dtype check_param(const py::array& param, const ArrayLabel& label) {
  return check_float_array(param, label, /*written=*/true);
}

// A grad or state array must match its param exactly: no casts, no broadcasting.
void check_like_param(const py::array& a, const py::array& param, const ArrayLabel& label,
                      const ArrayLabel& param_label, bool written) {
  if (!a.dtype().equal(param.dtype()))
    throw py::type_error(label.text() + " has dtype " + dtype_name(a) + " but " +
                         param_label.text() + " has dtype " + dtype_name(param) +
                         " (fusedopt never converts dtypes)");
  const bool same_shape = a.ndim() == param.ndim() &&
                          std::equal(a.shape(), a.shape() + a.ndim(), param.shape());
  if (!same_shape)
    throw py::value_error(label.text() + " has shape " + py::str(py::tuple(a.attr("shape"))).cast<std::string>() +
                          " but " + param_label.text() + " has shape " +
                          py::str(py::tuple(param.attr("shape"))).cast<std::string>());
  check_layout(a, label, written);
}

// Arrays that one call writes must not share memory with any other array
// of the call: the kernels read and write each element once, in place.
class OverlapCheck {
 public:
  void add(const py::array& a, const ArrayLabel& label, bool written) {
    if (a.size() == 0) return;
    const auto begin = reinterpret_cast<std::uintptr_t>(a.data());
    ranges_.push_back({begin, begin + static_cast<std::uintptr_t>(a.nbytes()), written, label});
  }

  // Sorted by start, a range overlaps an earlier one exactly when it starts
  // before the furthest end seen so far; only pairs with a writer matter.
  void check() {
    std::sort(ranges_.begin(), ranges_.end(),
              [](const Range& a, const Range& b) { return a.begin < b.begin; });
    std::size_t furthest = kNone;          // the range reaching furthest so far
    std::size_t furthest_written = kNone;  // the same among written ranges
    for (std::size_t k = 0; k < ranges_.size(); ++k) {
      const Range& r = ranges_[k];
      const std::size_t clash = r.written ? furthest : furthest_written;
      if (clash != kNone && r.begin < ranges_[clash].end)
        throw py::value_error(r.label.text() + " shares memory with " + ranges_[clash].label.text() +
                              " (arrays updated in place must not overlap any other array)");
      if (furthest == kNone || r.end > ranges_[furthest].end) furthest = k;
      if (r.written && (furthest_written == kNone || r.end > ranges_[furthest_written].end))
        furthest_written = k;
    }
  }

 private:
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  struct Range {
    std::uintptr_t begin, end;
    bool written;
    ArrayLabel label;
  };
  std::vector<Range> ranges_;
};

// The step count of a state entry. Bounded so that t = step + 1 and every
// count the scalars compute with (as doubles) stay exact.
std::int64_t read_step(py::handle entry, std::int64_t index) {
  PyObject* value = dict_item(entry, "step");
  const auto label = [index] { return "state[" + std::to_string(index) + "]['step']"; };
  if (value == nullptr) throw py::value_error(label() + " is missing");
  if (PyBool_Check(value) || !PyLong_Check(value))
    throw py::type_error(label() + " must be an int, got " + type_name(value));
  int overflow = 0;
  const long long step = PyLong_AsLongLongAndOverflow(value, &overflow);
  if (step == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (overflow != 0 || step < 0 || step >= kMaxStep)
    throw py::value_error(label() + " must be an int in [0, 2**53 - 1), got " +
                          py::repr(value).cast<std::string>());
  return step;
}

// A scalar state value such as state[3]['mu_product']: a finite real number,
// or the key's initial value when it is missing (a rule turned on mid-run).
double read_scalar_state(py::handle entry, std::int64_t index, const StateKey& key) {
  PyObject* value = dict_item(entry, key.name);
  if (value == nullptr || value == Py_None) return key.initial;
  return finite_number(py::reinterpret_borrow<py::object>(value), [&] {
    return "state[" + std::to_string(index) + "]['" + key.name + "']";
  });
}

// A new state array shaped like `param`, every element `initial`.
py::array filled_like(const py::array& param, Dtype dtype, double initial) {
  py::array a(param.dtype(), std::vector<py::ssize_t>(param.shape(), param.shape() + param.ndim()));
  if (initial == 0.0) {
    std::memset(a.mutable_data(), 0, static_cast<std::size_t>(a.nbytes()));
  } else if (dtype == kFloat32) {
    std::fill_n(static_cast<float*>(a.mutable_data()), a.size(), static_cast<float>(initial));
  } else {
    std::fill_n(static_cast<double*>(a.mutable_data()), a.size(), initial);
  }
  return a;
}

// One param's share of a step, from collect() to record(). It holds strong
// references to everything it reads or will write, so nothing another
// thread or a hyperparameter's own code does while the step runs can free
// an object under it.
template <class Rule>
struct ParamStep {
  std::int64_t index;  // in grads and state
  py::object entry;    // state[index]
  // py::object, not py::array: a default py::array is a new empty ndarray.
  py::object param, grad;
  Dtype dtype;
  py::object state_arrays[kMaxStateArrays];
  bool created[kMaxStateArrays] = {};  // made by this step: recorded into entry
  StateKeys keys;
  std::int64_t t;  // the step count after this step
  double scalar_state[kMaxStateScalars] = {};
  typename Rule::Scalars scalars;
  Task task;
};

// Phase 1 of a step: read and check everything, writing nothing. The
// hyperparameters are read first, because reading a number may run its
// owner's Python code; every array is read after that, from snapshots.
template <class Rule>
std::vector<ParamStep<Rule>> collect(py::handle param_groups_in, py::handle grads_in, py::handle state_in) {
  const KernelTable& table = active_kernels();
  const py::tuple param_groups = snapshot(param_groups_in, "param_groups");

  std::vector<py::tuple> group_params;
  py::ssize_t param_count = 0;
  for (py::handle group : param_groups) {
    if (!PyDict_Check(group.ptr())) throw py::type_error("param_groups must hold dicts");
    PyObject* params = dict_item(group, "params");
    if (params == nullptr) throw py::value_error("a param group has no 'params'");
    group_params.push_back(snapshot(params, "a param group's 'params'"));
    param_count += static_cast<py::ssize_t>(group_params.back().size());
  }
  // Lengths first: a grads list of the wrong length is the commonest mistake.
  const py::tuple grads = snapshot(grads_in, "grads"), state = snapshot(state_in, "state");
  if (static_cast<py::ssize_t>(grads.size()) != param_count)
    throw py::value_error("grads has " + std::to_string(grads.size()) + " entries but the optimizer has " +
                          std::to_string(param_count) + " params");
  if (static_cast<py::ssize_t>(state.size()) != param_count)
    throw py::value_error("state has " + std::to_string(state.size()) + " entries but the optimizer has " +
                          std::to_string(param_count) + " params");

  std::vector<typename Rule::Hyper> hypers;
  for (std::size_t g = 0; g < param_groups.size(); ++g)
    hypers.push_back(Rule::read(GroupReader(param_groups[g], static_cast<std::int64_t>(g))));

  std::vector<ParamStep<Rule>> steps;
  OverlapCheck overlaps;
  std::int64_t index = 0;
  for (std::size_t g = 0; g < param_groups.size(); ++g) {
    const StateKeys keys = Rule::state_keys(hypers[g]);
    for (py::handle param_object : group_params[g]) {
      const std::int64_t i = index++;
      py::handle grad_object = grads[static_cast<std::size_t>(i)];
      if (grad_object.is_none()) continue;  // like torch: a param without a gradient is left alone

      ParamStep<Rule>& p = steps.emplace_back();
      p.index = i;
      p.keys = keys;
      const ArrayLabel param_label{"params", i}, grad_label{"grads", i};
      py::array param = as_array(param_object, param_label);
      const Dtype dtype = p.dtype = check_param(param, param_label);
      py::array grad = as_array(grad_object, grad_label);
      check_like_param(grad, param, grad_label, param_label, /*written=*/false);
      overlaps.add(param, param_label, true);
      overlaps.add(grad, grad_label, false);

      p.entry = state[static_cast<std::size_t>(i)];
      if (!PyDict_Check(p.entry.ptr()))
        throw py::type_error("state[" + std::to_string(i) + "] must be a dict, got " + type_name(p.entry));

      // Read w, g and every state array; write w and every state array.
      p.task = Task{table.kernels[Rule::id][compute_of(dtype)], nullptr, {}, param.size(),
                    param.itemsize() * (3 + 2 * keys.array_count)};
      p.task.streams[0] = param.mutable_data();
      p.task.streams[1] = const_cast<void*>(grad.data());
      bool buffer_is_new = false;
      for (int k = 0; k < keys.array_count; ++k) {
        const StateKey& key = keys.arrays[k];
        const ArrayLabel label{"state", i, key.name};
        PyObject* existing = dict_item(p.entry, key.name);
        // Missing when a setting turned it on after construction (momentum
        // from 0, amsgrad, scale): it starts at its initial value, like a
        // buffer made at construction.
        p.created[k] = existing == nullptr || existing == Py_None;
        py::array buffer = p.created[k] ? filled_like(param, dtype, key.initial) : as_array(existing, label);
        if (p.created[k]) {
          buffer_is_new = true;
        } else {
          check_like_param(buffer, param, label, param_label, /*written=*/true);
          overlaps.add(buffer, label, true);
        }
        p.task.streams[2 + k] = buffer.mutable_data();
        p.state_arrays[k] = std::move(buffer);
      }
      p.t = read_step(p.entry, i) + 1;
      for (int k = 0; k < keys.scalar_count; ++k)
        p.scalar_state[k] = read_scalar_state(p.entry, i, keys.scalars[k]);
      p.scalars = Rule::scalars(hypers[g], {p.t, buffer_is_new, p.scalar_state});
      p.param = std::move(param);
      p.grad = std::move(grad);
    }
  }
  overlaps.check();
  return steps;
}

// Phase 2: the update, every tensor in one parallel region, without the GIL.
// Returns the position in `steps` of the first param whose grad is not
// finite (nothing was written), or -1 when the update ran.
template <class Rule>
std::int64_t run(std::vector<ParamStep<Rule>>& steps, bool check_finite) {
  const KernelTable& table = active_kernels();
  std::vector<Task> tasks;           // steps no longer grows: pointing into it is safe
  std::vector<FiniteCheck> checks;   // the grad check of each task
  tasks.reserve(steps.size());
  for (ParamStep<Rule>& p : steps) {
    p.task.scalars = &p.scalars;
    tasks.push_back(p.task);
    checks.push_back(table.all_finite[p.dtype]);
  }
  py::gil_scoped_release release;
  return run_tasks(tasks, check_finite ? checks.data() : nullptr);
}

// Phase 3: record into each state dict what the step created and counted.
template <class Rule>
void record(const std::vector<ParamStep<Rule>>& steps) {
  const auto set = [](const py::object& entry, const char* key, py::handle value) {
    if (PyDict_SetItem(entry.ptr(), interned(key), value.ptr()) != 0) throw py::error_already_set();
  };
  for (const ParamStep<Rule>& p : steps) {
    for (int k = 0; k < p.keys.array_count; ++k)
      if (p.created[k]) set(p.entry, p.keys.arrays[k].name, p.state_arrays[k]);
    set(p.entry, "step", py::int_(p.t));
    for (int k = 0; k < p.keys.scalar_count; ++k)
      set(p.entry, p.keys.scalars[k].name, py::float_(p.scalar_state[k]));
  }
}

}  // namespace

template <class Rule>
py::object step(py::handle param_groups, py::handle grads, py::handle state, bool check_finite) {
  std::vector<ParamStep<Rule>> steps = collect<Rule>(param_groups, grads, state);
  const std::int64_t first_bad = run(steps, check_finite);
  if (first_bad >= 0) return py::int_(steps[static_cast<std::size_t>(first_bad)].index);
  record(steps);
  return py::none();
}

#define FUSEDOPT_INSTANTIATE_STEP(Type, name, summary) \
  template py::object step<Type##Rule>(py::handle, py::handle, py::handle, bool);
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_INSTANTIATE_STEP)
#undef FUSEDOPT_INSTANTIATE_STEP

void check_params(py::handle params, std::int64_t first_index) {
  const py::ssize_t count = length(params, "params");
  OverlapCheck overlaps;
  for (py::ssize_t k = 0; k < count; ++k) {
    const ArrayLabel label{"params", first_index + k};
    py::array param = as_array(py::reinterpret_borrow<py::sequence>(params)[k], label);
    check_param(param, label);
    overlaps.add(param, label, /*written=*/true);
  }
  overlaps.check();
}

void roof(py::handle tensors) {
  const KernelTable& table = active_kernels();
  const py::ssize_t count = length(tensors, "tensors");
  std::vector<RoofScalars> scalars;
  scalars.reserve(static_cast<std::size_t>(count));
  std::vector<Task> tasks;
  std::vector<py::array> arrays;
  OverlapCheck overlaps;
  for (py::ssize_t i = 0; i < count; ++i) {
    py::object streams = py::reinterpret_borrow<py::sequence>(tensors)[i];
    const py::ssize_t stream_count = length(streams, "a roof tensor");
    if (stream_count < 2 || stream_count > 5)
      throw py::value_error("a roof tensor has 2 to 5 arrays, got " + std::to_string(stream_count));
    const ArrayLabel first_label{"tensors", i, "0"};
    py::array first = as_array(py::reinterpret_borrow<py::sequence>(streams)[0], first_label);
    const Dtype dtype = check_param(first, first_label);
    scalars.push_back({static_cast<int>(stream_count), static_cast<int>(stream_count - 1)});
    Task task{table.kernels[kRoof][dtype], &scalars.back(), {}, first.size(),
              first.itemsize() * (2 * stream_count - 1)};
    for (py::ssize_t k = 0; k < stream_count; ++k) {
      static const char* const names[] = {"0", "1", "2", "3", "4"};
      const ArrayLabel label{"tensors", i, names[k]};
      const bool written = k + 1 < stream_count;
      py::array a = as_array(py::reinterpret_borrow<py::sequence>(streams)[k], label);
      check_like_param(a, first, label, first_label, written);
      overlaps.add(a, label, written);
      task.streams[k] = const_cast<void*>(a.data());
      arrays.push_back(std::move(a));
    }
    tasks.push_back(task);
  }
  overlaps.check();
  py::gil_scoped_release release;
  run_tasks(tasks);
}

// ------------------------------------------------------- gradient passes

namespace {

struct Grad {
  py::array array;
  Dtype dtype;
  std::int64_t index;  // in the caller's list
};

// The arrays of a grads list, None entries skipped, every one checked before
// any is touched; `written` ones must be writeable and must not overlap.
std::vector<Grad> read_grads(py::handle grads, bool written) {
  const py::ssize_t count = length(grads, "grads");
  std::vector<Grad> out;
  OverlapCheck overlaps;
  for (py::ssize_t i = 0; i < count; ++i) {
    py::object object = py::reinterpret_borrow<py::sequence>(grads)[i];
    if (object.is_none()) continue;
    const ArrayLabel label{"grads", i};
    py::array a = as_array(object, label);
    const Dtype dtype = check_float_array(a, label, written);
    overlaps.add(a, label, written);
    out.push_back({std::move(a), dtype, i});
  }
  if (written) overlaps.check();
  return out;
}

// Runs one in-place elementwise kernel over every grad in one parallel region.
void run_over_grads(const std::vector<Grad>& grads, const Kernel (&kernels)[kDtypeCount],
                    const void* scalars) {
  std::vector<Task> tasks;
  for (const Grad& g : grads)
    tasks.push_back(Task{kernels[g.dtype], scalars, {const_cast<void*>(g.array.data())},
                         g.array.size(), 2 * g.array.itemsize()});
  py::gil_scoped_release release;
  run_tasks(tasks);
}

}  // namespace

double grad_norm(py::handle grads, double norm_type) {
  if (!(norm_type > 0.0))
    throw py::value_error("norm_type must be a number > 0 or inf, got " +
                          py::repr(py::float_(norm_type)).cast<std::string>());
  const NormKind kind = norm_type == 1.0 ? kNormL1
                        : norm_type == 2.0 ? kNormL2
                        : std::isinf(norm_type) ? kNormLinf
                        : kNormLp;
  const NormScalars scalars{norm_type};
  const std::vector<Grad> checked = read_grads(grads, /*written=*/false);
  const KernelTable& table = active_kernels();
  std::vector<ReduceTask> tasks;
  for (const Grad& g : checked)
    tasks.push_back({table.norm_partial[kind][g.dtype], &scalars, g.array.data(), g.array.size(),
                     g.array.itemsize()});
  double total;
  {
    py::gil_scoped_release release;
    total = reduce_blocks(tasks, kind == kNormLinf ? Combine::kMax : Combine::kSum);
  }
  switch (kind) {
    case kNormL2: return std::sqrt(total);
    case kNormLp: return std::pow(total, 1.0 / norm_type);
    default: return total;  // L1 and Linf need no root
  }
}

void scale_grads(py::handle grads, double factor) {
  const std::vector<Grad> checked = read_grads(grads, /*written=*/true);
  const ScaleScalars scalars{factor};
  run_over_grads(checked, active_kernels().scale, &scalars);
}

void clamp_grads(py::handle grads, double limit) {
  if (!(limit >= 0.0))
    throw py::value_error("clip_value must be >= 0, got " + py::repr(py::float_(limit)).cast<std::string>());
  const std::vector<Grad> checked = read_grads(grads, /*written=*/true);
  const ClampScalars scalars{limit};
  run_over_grads(checked, active_kernels().clamp, &scalars);
}

py::object first_nonfinite(py::handle grads) {
  const std::vector<Grad> checked = read_grads(grads, /*written=*/false);
  const KernelTable& table = active_kernels();
  for (const Grad& g : checked) {
    bool finite;
    {
      py::gil_scoped_release release;
      finite = table.all_finite[g.dtype](g.array.data(), 0, g.array.size());
    }
    if (!finite) return py::int_(g.index);
  }
  return py::none();
}

}  // namespace fusedopt
