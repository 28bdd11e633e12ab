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
    const Range* furthest = nullptr;          // the range reaching furthest so far
    const Range* furthest_written = nullptr;  // the same among written ranges
    for (const Range& r : ranges_) {
      const Range* clash = r.written ? furthest : furthest_written;
      if (clash && r.begin < clash->end)
        throw py::value_error(r.label.text() + " shares memory with " + clash->label.text() +
                              " (arrays updated in place must not overlap any other array)");
      if (!furthest || r.end > furthest->end) furthest = &r;
      if (r.written && (!furthest_written || r.end > furthest_written->end)) furthest_written = &r;
    }
  }

 private:
  struct Range {
    std::uintptr_t begin, end;
    bool written;
    ArrayLabel label;
  };
  std::vector<Range> ranges_;
};

std::int64_t read_step(py::handle entry, std::int64_t index) {
  PyObject* value = dict_item(entry, "step");
  const std::string label = "state[" + std::to_string(index) + "]['step']";
  if (value == nullptr) throw py::value_error(label + " is missing");
  if (PyBool_Check(value) || !PyLong_Check(value))
    throw py::type_error(label + " must be an int, got " + type_name(value));
  const long long step = PyLong_AsLongLong(value);
  if (step < 0 || PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error(label + " must be a non-negative int");
  }
  return step;
}

// A scalar state value such as state[3]['mu_product']: a finite real number,
// or the key's initial value when it is missing (a rule turned on mid-run).
double read_scalar_state(py::handle entry, std::int64_t index, const StateKey& key) {
  PyObject* value = dict_item(entry, key.name);
  if (value == nullptr || value == Py_None) return key.initial;
  const std::string label = "state[" + std::to_string(index) + "]['" + key.name + "']";
  const double x = PyBool_Check(value) ? -1.0 : PyFloat_AsDouble(value);
  if (PyBool_Check(value) || (x == -1.0 && PyErr_Occurred())) {
    PyErr_Clear();
    throw py::type_error(label + " must be a real number, got " + type_name(value));
  }
  if (!std::isfinite(x)) throw py::value_error(label + " must be finite");
  return x;
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

}  // namespace

template <class Rule>
py::object step(py::handle param_groups, py::handle grads, py::handle state, bool check_finite) {
  const KernelTable& table = active_kernels();
  const py::ssize_t group_count = length(param_groups, "param_groups");

  // Lengths first: a grads list of the wrong length is the commonest mistake.
  py::ssize_t param_count = 0;
  for (py::handle group : param_groups) {
    if (!PyDict_Check(group.ptr())) throw py::type_error("param_groups must hold dicts");
    PyObject* params = dict_item(group, "params");
    if (params == nullptr) throw py::value_error("a param group has no 'params'");
    param_count += length(params, "a param group's 'params'");
  }
  if (length(grads, "grads") != param_count)
    throw py::value_error("grads has " + std::to_string(py::len(grads)) + " entries but the optimizer has " +
                          std::to_string(param_count) + " params");
  if (length(state, "state") != param_count)
    throw py::value_error("state has " + std::to_string(py::len(state)) + " entries but the optimizer has " +
                          std::to_string(param_count) + " params");

  // Phase 1: read and check everything; nothing is written.
  struct Created { py::handle entry; const char* key; py::array array; };
  // One param's record: its state dict, its new step count and scalar state.
  struct Record {
    py::handle entry;
    std::int64_t param_index;
    std::int64_t t;
    StateKeys keys;
    double scalar_state[kMaxStateScalars];
  };
  std::vector<Created> created;        // state arrays this step brings into being
  std::vector<py::array> arrays;       // held for the duration of the kernels
  std::vector<typename Rule::Scalars> scalars;
  std::vector<Task> tasks;
  std::vector<FiniteCheck> checks;     // the grad check of each task
  std::vector<Record> records;         // aligned with tasks
  scalars.reserve(static_cast<std::size_t>(param_count));  // tasks point into it
  records.reserve(static_cast<std::size_t>(param_count));  // scalars() writes into it
  OverlapCheck overlaps;

  std::int64_t index = 0;
  for (py::ssize_t g = 0; g < group_count; ++g) {
    py::handle group = PyList_Check(param_groups.ptr()) ? PyList_GET_ITEM(param_groups.ptr(), g)
                                                         : PyTuple_GET_ITEM(param_groups.ptr(), g);
    const auto hyper = Rule::read(GroupReader(group, g));
    const StateKeys keys = Rule::state_keys(hyper);
    for (py::handle param_object : py::reinterpret_borrow<py::object>(dict_item(group, "params"))) {
      const std::int64_t i = index++;
      py::object grad_object = py::reinterpret_borrow<py::sequence>(grads)[i];
      if (grad_object.is_none()) continue;  // like torch: a param without a gradient is left alone

      const ArrayLabel param_label{"params", i}, grad_label{"grads", i};
      py::array param = as_array(param_object, param_label);
      const Dtype dtype = check_param(param, param_label);
      py::array grad = as_array(grad_object, grad_label);
      check_like_param(grad, param, grad_label, param_label, /*written=*/false);
      overlaps.add(param, param_label, true);
      overlaps.add(grad, grad_label, false);

      py::object entry = py::reinterpret_borrow<py::sequence>(state)[i];
      if (!PyDict_Check(entry.ptr()))
        throw py::type_error("state[" + std::to_string(i) + "] must be a dict, got " + type_name(entry));

      Task task{table.kernels[Rule::id][dtype], nullptr, {}, param.size(),
                param.itemsize() * (3 + 2 * keys.array_count)};  // read w, g, states; write w, states
      task.streams[0] = param.mutable_data();
      task.streams[1] = const_cast<void*>(grad.data());
      bool buffer_is_new = false;
      for (int k = 0; k < keys.array_count; ++k) {
        const StateKey& key = keys.arrays[k];
        const ArrayLabel label{"state", i, key.name};
        PyObject* existing = dict_item(entry, key.name);
        // Missing when a setting turned it on after construction (momentum
        // from 0, amsgrad, scale): it starts at its initial value, like a
        // buffer made at construction.
        const bool missing = existing == nullptr || existing == Py_None;
        py::array buffer = missing ? filled_like(param, dtype, key.initial) : as_array(existing, label);
        if (missing) {
          created.push_back({entry, key.name, buffer});
          buffer_is_new = true;
        } else {
          check_like_param(buffer, param, label, param_label, /*written=*/true);
          overlaps.add(buffer, label, true);
        }
        task.streams[2 + k] = buffer.mutable_data();
        arrays.push_back(std::move(buffer));
      }
      Record& record = records.emplace_back(Record{entry, i, read_step(entry, i) + 1, keys, {}});
      for (int k = 0; k < keys.scalar_count; ++k)
        record.scalar_state[k] = read_scalar_state(entry, i, keys.scalars[k]);
      scalars.push_back(Rule::scalars(hyper, {record.t, buffer_is_new, record.scalar_state}));
      task.scalars = &scalars.back();
      tasks.push_back(task);
      checks.push_back(table.all_finite[dtype]);
      arrays.push_back(std::move(param));
      arrays.push_back(std::move(grad));
    }
  }
  overlaps.check();

  // Phase 2: the update, without the GIL.
  std::int64_t first_bad = -1;
  {
    py::gil_scoped_release release;
    first_bad = run_tasks(tasks, check_finite ? checks.data() : nullptr);
  }
  if (first_bad >= 0) return py::int_(records[static_cast<std::size_t>(first_bad)].param_index);

  // Phase 3: record what the step created and counted.
  for (const Created& c : created) PyDict_SetItem(c.entry.ptr(), interned(c.key), c.array.ptr());
  for (const Record& r : records) {
    PyDict_SetItem(r.entry.ptr(), interned("step"), py::int_(r.t).ptr());
    for (int k = 0; k < r.keys.scalar_count; ++k)
      PyDict_SetItem(r.entry.ptr(), interned(r.keys.scalars[k].name), py::float_(r.scalar_state[k]).ptr());
  }
  return py::none();
}

#define FUSEDOPT_INSTANTIATE_STEP(Rule) \
  template py::object step<Rule>(py::handle, py::handle, py::handle, bool);
FUSEDOPT_INSTANTIATE_STEP(MomentumRule)
FUSEDOPT_INSTANTIATE_STEP(SgdRule)
FUSEDOPT_INSTANTIATE_STEP(AdadeltaRule)
FUSEDOPT_INSTANTIATE_STEP(AdamRule)
FUSEDOPT_INSTANTIATE_STEP(RmspropRule)
FUSEDOPT_INSTANTIATE_STEP(AdagradRule)
FUSEDOPT_INSTANTIATE_STEP(NadamRule)
FUSEDOPT_INSTANTIATE_STEP(RadamRule)
FUSEDOPT_INSTANTIATE_STEP(AdamaxRule)
FUSEDOPT_INSTANTIATE_STEP(LionRule)
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
