// fusedopt._core: the Python face of the kernels. Thin on purpose: the
// checks and the loop over arrays are in step.cpp, the math in kernels.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <new>
#include <string>

#include "arrays.hpp"
#include "dispatch.hpp"
#include "rule_list.hpp"
#include "parallel.hpp"
#include "quantize.hpp"
#include "rules.hpp"
#include "step.hpp"
#include "torch_plan.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// What Python sees of one update rule: _core.<name>, an instance of
// _core.Rule, generated for every rule of rule_list.hpp. Its methods are
// the rule's instantiations of the generic step (step.cpp) and of its traits
// (rules.hpp), so `rule.step` is defined by fusedopt::step<Rule>.
struct RuleBinding {
  const char* name;
  const char* summary;
  py::object (*step)(py::handle param_groups, py::handle grads, py::handle state, bool check_finite,
                     py::handle grad_scale);
  py::object (*step_cached)(fusedopt::StepCache& cache, py::handle param_groups, py::handle grads, py::handle state,
                            bool check_finite, py::handle grad_scale);
  fusedopt::StateKeys (*state_keys)(py::handle group);
  void (*check_group)(py::handle group, std::int64_t index);
};

template <class Rule>
RuleBinding bind(const char* name, const char* summary) {
  return {name, summary, &fusedopt::step<Rule>, &fusedopt::step_cached<Rule>,
          [](py::handle group) { return fusedopt::state_keys_of<Rule>(Rule::read(fusedopt::GroupReader(group, 0))); },
          [](py::handle group, std::int64_t index) {
            const fusedopt::GroupReader reader(group, index);
            Rule::read(reader);
            fusedopt::read_storage_options(reader).template check_keys<Rule>();
          }};
}

// A reentrant lock for one optimizer (_core.StepLock): Rule.step takes it
// (its `lock` argument) around the whole step, and the optimizer's other
// methods with `with`. Cheaper than threading.RLock's two Python calls per
// step, and a thread that must wait for it waits without the GIL. The
// owner's own nested calls (a hyperparameter's __float__ calling step) go on.
class StepLock {
 public:
  StepLock() : lock_(PyThread_allocate_lock()) {
    if (lock_ == nullptr) throw std::bad_alloc();
  }
  ~StepLock() { PyThread_free_lock(lock_); }
  StepLock(const StepLock&) = delete;
  StepLock& operator=(const StepLock&) = delete;

  void acquire() {
    const unsigned long me = PyThread_get_thread_ident();
    if (depth_ > 0 && owner_ == me) {
      ++depth_;
      return;
    }
    if (!PyThread_acquire_lock(lock_, NOWAIT_LOCK)) {
      py::gil_scoped_release release;
      PyThread_acquire_lock(lock_, WAIT_LOCK);
    }
    owner_ = me;
    depth_ = 1;
  }
  void release() {
    if (!held_by_me()) throw py::value_error("StepLock released by a thread that does not hold it");
    release_held();
  }
  // For a scope's end, which must not throw: a hyperparameter's own code may
  // have released the lock by hand (`__exit__`) inside the step.
  void release_if_held() noexcept {
    if (held_by_me()) release_held();
  }
  bool held_by_me() const { return depth_ > 0 && owner_ == PyThread_get_thread_ident(); }

 private:
  void release_held() noexcept {
    if (--depth_ == 0) {
      owner_ = 0;
      PyThread_release_lock(lock_);
    }
  }

  PyThread_type_lock lock_;
  unsigned long owner_ = 0;  // read and written with the GIL held
  long depth_ = 0;
};

// Holds `lock` (when given) for a scope.
class LockGuard {
 public:
  explicit LockGuard(StepLock* lock) : lock_(lock) {
    if (lock_ != nullptr) lock_->acquire();
  }
  ~LockGuard() {
    if (lock_ != nullptr) lock_->release_if_held();
  }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  StepLock* lock_;
};

// Rule.step and Rule.step_cached are called once per optimizer step, so they
// skip pybind11's generic dispatcher (a tenth of a small step's instructions):
// plain METH_FASTCALL methods that parse their arguments as the signature
// below says and turn C++ exceptions into Python ones as pybind11 does.
// Each _core.<rule> object is made once, at import, and kept by the module.
constexpr int kMaxRules = 32;
struct RuleObject {
  PyObject* object;
  const RuleBinding* binding;
};
RuleObject rule_objects[kMaxRules];
int rule_object_count = 0;

const RuleBinding& binding_of(PyObject* self) {
  for (int i = 0; i < rule_object_count; ++i)
    if (rule_objects[i].object == self) return *rule_objects[i].binding;
  return py::cast<const RuleBinding&>(py::handle(self));  // not reached: every Rule is one of the module's
}

// The arguments of step(param_groups, grads, state, check_finite=False,
// grad_scale=None, lock=None), after `leading` ones (step_cached's cache).
struct StepArguments {
  PyObject* values[7] = {};
  bool check_finite = false;
  StepLock* lock = nullptr;
};

template <class T>
T& cast_argument(PyObject* value, const char* name, const char* type) {
  if (!py::isinstance<T>(value))
    throw py::type_error(std::string(name) + " must be a fusedopt._core." + type + ", got " + fusedopt::type_name(value));
  return py::cast<T&>(py::handle(value));
}

StepArguments parse_step_arguments(const char* method, int leading, PyObject* const* args, Py_ssize_t nargs,
                                   PyObject* kwnames) {
  static const char* const names[] = {"cache", "param_groups", "grads", "state", "check_finite", "grad_scale", "lock"};
  const char* const* own = names + (1 - leading);  // step has no cache
  const int total = leading + 6, required = leading + 3;
  StepArguments a;
  if (nargs > total)
    throw py::type_error(std::string(method) + "() takes at most " + std::to_string(total) + " arguments (" +
                         std::to_string(nargs) + " given)");
  for (Py_ssize_t i = 0; i < nargs; ++i) a.values[i] = args[i];
  const Py_ssize_t keywords = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t k = 0; k < keywords; ++k) {
    const char* key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
    if (key == nullptr) throw py::error_already_set();
    int slot = -1;
    for (int i = 0; i < total; ++i)
      if (std::strcmp(key, own[i]) == 0) slot = i;
    if (slot < 0) throw py::type_error(std::string(method) + "() got an unexpected keyword argument '" + key + "'");
    if (a.values[slot] != nullptr)
      throw py::type_error(std::string(method) + "() got multiple values for argument '" + key + "'");
    a.values[slot] = args[nargs + k];
  }
  for (int i = 0; i < required; ++i)
    if (a.values[i] == nullptr)
      throw py::type_error(std::string(method) + "() missing required argument '" + own[i] + "'");
  if (PyObject* flag = a.values[leading + 3]) {
    if (!PyBool_Check(flag)) throw py::type_error("check_finite must be a bool, got " + fusedopt::type_name(flag));
    a.check_finite = flag == Py_True;
  }
  if (a.values[leading + 4] == nullptr) a.values[leading + 4] = Py_None;
  if (PyObject* lock = a.values[leading + 5]; lock != nullptr && lock != Py_None)
    a.lock = &cast_argument<StepLock>(lock, "lock", "StepLock");
  return a;
}

template <class Body>
PyObject* translating_exceptions(Body&& body) {
  try {
    return body().release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* rule_step(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return translating_exceptions([&] {
    const StepArguments a = parse_step_arguments("step", 0, args, nargs, kwnames);
    const LockGuard hold(a.lock);
    return binding_of(self).step(a.values[0], a.values[1], a.values[2], a.check_finite, a.values[4]);
  });
}

PyObject* rule_step_cached(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return translating_exceptions([&] {
    const StepArguments a = parse_step_arguments("step_cached", 1, args, nargs, kwnames);
    auto& cache = cast_argument<fusedopt::StepCache>(a.values[0], "cache", "StepCache");
    const LockGuard hold(a.lock);
    return binding_of(self).step_cached(cache, a.values[1], a.values[2], a.values[3], a.check_finite, a.values[5]);
  });
}

PyMethodDef rule_step_methods[] = {
    {"step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&rule_step)), METH_FASTCALL | METH_KEYWORDS,
     "step(param_groups, grads, state, check_finite=False, grad_scale=None, lock=None)\n--\n\n"
     "One step over every param of every group, in one call and one parallel region.\n"
     "grads and state are aligned with the params of all groups in order; a None grad\n"
     "skips its param. Raises TypeError/ValueError before any array is changed.\n"
     "With check_finite, a step whose grads hold a NaN or an infinity changes nothing\n"
     "and returns the index of the first such grad; otherwise returns None.\n"
     "With grad_scale, every grad is divided by it as it is read (loss scaling).\n"
     "With lock (a StepLock), the step holds it throughout."},
    {"step_cached", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&rule_step_cached)),
     METH_FASTCALL | METH_KEYWORDS,
     "step_cached(cache, param_groups, grads, state, check_finite=False, grad_scale=None, lock=None)\n--\n\n"
     "step(), keeping what it read and checked in `cache` (a StepCache) for the next step with the\n"
     "same objects, which then reads again only hyperparameters, step counts and scalar state. For\n"
     "arrays only the caller holds (NumPy arrays can change their shape in place)."},
};

void add_step_methods(py::handle rule_class) {
  auto* type = reinterpret_cast<PyTypeObject*>(rule_class.ptr());
  for (PyMethodDef& def : rule_step_methods) {
    py::object method = py::reinterpret_steal<py::object>(PyDescr_NewMethod(type, &def));
    if (!method) throw py::error_already_set();
    rule_class.attr(def.ml_name) = method;
  }
}

void register_rule_object(py::handle object) {
  if (rule_object_count == kMaxRules) throw std::runtime_error("more rules than kMaxRules");
  rule_objects[rule_object_count++] = {object.ptr(), &py::cast<const RuleBinding&>(object)};
}

void bind_rule_class(py::module_& m) {
  py::class_<StepLock>(m, "StepLock",
                       "A reentrant lock that Rule.step can hold for the whole step (see bindings.cpp); "
                       "a waiting thread releases the GIL.")
      .def(py::init<>())
      .def("__enter__", [](StepLock& lock) { lock.acquire(); })
      .def("__exit__", [](StepLock& lock, py::args) { lock.release(); })
      .def("held_by_me", &StepLock::held_by_me, "Whether the calling thread holds the lock.");
  py::class_<fusedopt::StepCache>(m, "StepCache",
                                  "What Rule.step_cached read and checked at one step, for the next (csrc/step.hpp).")
      .def(py::init<>())
      .def_property_readonly(
          "hits", [](const fusedopt::StepCache& c) { return c.hits; },
          "How many steps used what the cache held (the others were full steps).");
  py::class_<RuleBinding>(m, "Rule",
                          "One update rule of the compiled core (_core.adam, _core.sgd, ...; see "
                          "csrc/rule_list.hpp).")
      .def_property_readonly("name", [](const RuleBinding& r) { return r.name; })
      .def_property_readonly("summary", [](const RuleBinding& r) { return r.summary; })
      .def(
          "check_group", [](const RuleBinding& r, py::handle group, std::int64_t index) { r.check_group(group, index); },
          "group"_a, "index"_a = 0, "Validate one param group's hyperparameters (errors name group `index`).")
      .def(
          "state_keys",
          [](const RuleBinding& r, py::handle group) {
            const fusedopt::StateKeys keys = r.state_keys(group);
            std::vector<std::string> names;
            for (int k = 0; k < keys.array_count; ++k) names.emplace_back(keys.arrays[k].name);
            return names;
          },
          "group"_a, "The names of the state arrays the rule keeps for a group's params, in stream order.")
      .def(
          "state_signs",
          [](const RuleBinding& r, py::handle group) {
            const fusedopt::StateKeys keys = r.state_keys(group);
            py::dict signs;
            for (int k = 0; k < keys.array_count; ++k)
              signs[keys.arrays[k].name] = keys.arrays[k].sign == fusedopt::StateSign::kSigned;
            return signs;
          },
          "group"_a, "{state array key: True if signed, False if never negative} (the 8-bit map each uses).")
      .def(
          "state_spec",
          [](const RuleBinding& r, py::handle group) {
            const fusedopt::StateKeys keys = r.state_keys(group);
            py::dict arrays, scalars;
            for (int k = 0; k < keys.array_count; ++k) arrays[keys.arrays[k].name] = keys.arrays[k].initial;
            for (int k = 0; k < keys.scalar_count; ++k) scalars[keys.scalars[k].name] = keys.scalars[k].initial;
            return py::make_tuple(arrays, scalars);
          },
          "group"_a,
          "The state the rule keeps per param besides 'step', with initial values:\n"
          "({array key: initial element value}, {scalar key: initial value}).")
      .def(
          "initial_state",
          [](const RuleBinding& r, py::handle group, py::handle param_object, std::int64_t index) {
            const fusedopt::StateKeys keys = r.state_keys(group);
            const fusedopt::StorageOptions storage =
                fusedopt::read_storage_options(fusedopt::GroupReader(group, index));
            const fusedopt::ArrayLabel label{"params", 0};
            const py::array param = fusedopt::as_array(param_object, label);
            const fusedopt::Dtype dtype = fusedopt::check_param(param, label).dtype;
            storage.check_param(dtype, static_cast<std::size_t>(index));
            py::dict state;
            state["step"] = 0;
            // A shard piece keeps 8-bit state as its full param does (StorageOptions::random_index).
            std::int64_t deciding = param.size();
            if (!storage.random_index.empty()) {
              const py::sequence members = py::reinterpret_borrow<py::object>(group)["params"];
              for (std::size_t k = 0; k < members.size() && k < storage.random_index.size(); ++k)
                if (members[k].ptr() == param_object.ptr()) deciding = storage.random_index[k].deciding(deciding);
            }
            const bool quantized = storage.quantizes(deciding);
            for (int k = 0; k < keys.array_count; ++k) {
              const fusedopt::StateKey& key = keys.arrays[k];
              if (quantized) {
                fusedopt::QuantizedArrays q = fusedopt::quantized_filled(
                    param, storage.block_size, key.sign == fusedopt::StateSign::kSigned, key.initial);
                state[key.name] = q.codes;
                state[fusedopt::absmax_key(key.name)] = q.absmax;
                continue;
              }
              state[key.name] = fusedopt::filled_like(param, storage.state_dtype(key.name, dtype), key.initial);
            }
            for (int k = 0; k < keys.scalar_count; ++k) state[keys.scalars[k].name] = keys.scalars[k].initial;
            if (storage.master_weights) state["master_param"] = fusedopt::float32_copy(param, dtype);
            if (storage.kahan_sum) state["kahan_comp"] = fusedopt::filled_like(param, dtype, 0.0);
            return state;
          },
          "group"_a, "param"_a, "index"_a = 0,
          "One param's state before its first step (errors name param group `index`): {'step': 0, every state array shaped and laid\n"
          "out like param (in the group's state_dtype) and every scalar at its initial value, and\n"
          "the master copy or Kahan compensation the group's storage options keep}.")
      .def("__repr__", [](const RuleBinding& r) { return std::string("<fusedopt._core.Rule ") + r.name + ">"; });
  add_step_methods(m.attr("Rule"));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedopt's compiled core: fused optimizer kernels (private; use the fusedopt package)";

  fusedopt::init_threads();
  try {
    fusedopt::init_dispatch();
  } catch (const std::exception& e) {
    throw py::import_error(e.what());
  }

  bind_rule_class(m);
  py::dict rules;
#define FUSEDOPT_BIND_RULE(Type, name, summary)                                  \
  m.attr(#name) = bind<fusedopt::Type##Rule>(#name, summary);                    \
  register_rule_object(m.attr(#name));                                           \
  rules[#name] = m.attr(#name);
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_BIND_RULE)
#undef FUSEDOPT_BIND_RULE
  m.attr("rules") = rules;
  m.attr("MAX_STEP") = fusedopt::kMaxStep;
  m.def("grad_norm", &fusedopt::grad_norm, "grads"_a, "norm_type"_a = 2.0,
        "The norm_type-norm (> 0 or inf) of all grads as one vector, accumulated in double;\n"
        "bitwise the same for every thread count. None entries are skipped.");
  m.def("scale_grads", &fusedopt::scale_grads, "grads"_a, "factor"_a,
        "g *= factor for every grad, in place, in one parallel region.");
  m.def("clamp_grads", &fusedopt::clamp_grads, "grads"_a, "limit"_a,
        "g = clamp(g, -limit, limit) for every grad, in place (NaN stays NaN).");
  m.def("first_nonfinite", &fusedopt::first_nonfinite, "grads"_a,
        "The index of the first grad holding a NaN or an infinity, or None.");
  m.def("check_params", &fusedopt::check_params, "params"_a, "first_index"_a = 0,
        "Check that arrays can be params: writeable, aligned, C-contiguous float32/float64,\n"
        "not overlapping one another.");
  m.def(
      "convert",
      [](const py::array& source, const py::array& destination) {
        const fusedopt::ArrayLabel source_label{"source", 0}, destination_label{"destination", 0};
        const fusedopt::Stream from = fusedopt::check_param(source, source_label);
        const fusedopt::Stream to = fusedopt::check_param(destination, destination_label);
        if (from.size != to.size || !(from.dtype == fusedopt::kFloat32 || to.dtype == fusedopt::kFloat32))
          throw py::value_error("convert takes two arrays of one size, one of them float32");
        const fusedopt::KernelTable& table = fusedopt::active_kernels();
        if (to.dtype == fusedopt::kFloat32)
          table.to_float32[from.dtype](from.data, static_cast<float*>(to.data), from.size);
        else
          table.from_float32[to.dtype](static_cast<const float*>(from.data), to.data, from.size);
      },
      "source"_a, "destination"_a,
      "destination <- source, one of them float32, with the kernels' conversions (round to nearest\n"
      "even into 16-bit formats), in memory order (tests use it).");
  m.def(
      "quantization_map",
      [](bool is_signed) {
        const fusedopt::QuantMap& map = fusedopt::quant_map(is_signed);
        py::array_t<float> codes(fusedopt::kQuantCodes), thresholds(fusedopt::kQuantCodes);
        std::copy(map.codes, map.codes + fusedopt::kQuantCodes, codes.mutable_data());
        std::copy(map.thresholds, map.thresholds + fusedopt::kQuantCodes, thresholds.mutable_data());
        return py::make_tuple(codes, thresholds);
      },
      "signed"_a,
      "(codes, thresholds) of the 8-bit state's map: the 256 ascending codes, and for each j the\n"
      "smallest float32 nearer codes[j + 1] than codes[j] (ties up); the last is inf.");
  m.def(
      "keeps_8bit_state",
      [](py::handle group, std::int64_t elements, std::int64_t index) {
        return fusedopt::read_storage_options(fusedopt::GroupReader(group, index)).quantizes(elements);
      },
      "group"_a, "elements"_a, "index"_a = 0,
      "Whether a param of `elements` elements in this group keeps 8-bit (block-quantized) state.");
  // The test helpers below write into the arrays they are given: never into a converted copy.
  const auto exact = [](const py::array& a, const py::dtype& dtype, const char* name, bool written) {
    if (!a.dtype().is(dtype) || !(a.flags() & py::array::c_style) || (written && !a.writeable()))
      throw py::type_error(std::string(name) + " must be a C-contiguous" + (written ? ", writeable " : " ") +
                           py::str(dtype).cast<std::string>() + " array");
  };
  const auto check_blocks = [](const py::array& codes, const py::array& absmax, std::int64_t n, std::int64_t block_size) {
    if (block_size <= 0 || codes.size() != n || absmax.size() != (n + block_size - 1) / block_size)
      throw py::value_error("codes must have the size of values, absmax one element per block");
  };
  m.def(
      "quantize",
      [=](const py::array& values, py::array& codes, py::array& absmax, std::int64_t block_size, bool is_signed) {
        exact(values, py::dtype("float32"), "values", false);
        exact(codes, py::dtype("uint8"), "codes", true);
        exact(absmax, py::dtype("float32"), "absmax", true);
        const std::int64_t n = values.size();
        check_blocks(codes, absmax, n, block_size);
        fusedopt::active_kernels().quantize(&fusedopt::quant_map(is_signed), static_cast<const float*>(values.data()),
                                            static_cast<std::uint8_t*>(codes.mutable_data()),
                                            static_cast<float*>(absmax.mutable_data()), n, block_size);
      },
      "values"_a, "codes"_a, "absmax"_a, "block_size"_a, "signed"_a,
      "codes, absmax <- float32 values encoded block by block with the active target's kernel (tests use it).");
  m.def(
      "dequantize",
      [=](const py::array& codes, const py::array& absmax, py::array& values, std::int64_t block_size, bool is_signed) {
        exact(codes, py::dtype("uint8"), "codes", false);
        exact(absmax, py::dtype("float32"), "absmax", false);
        exact(values, py::dtype("float32"), "values", true);
        const std::int64_t n = values.size();
        check_blocks(codes, absmax, n, block_size);
        fusedopt::active_kernels().dequantize(&fusedopt::quant_map(is_signed),
                                              static_cast<const std::uint8_t*>(codes.data()),
                                              static_cast<const float*>(absmax.data()),
                                              static_cast<float*>(values.mutable_data()), n, block_size);
      },
      "codes"_a, "absmax"_a, "values"_a, "block_size"_a, "signed"_a,
      "values <- codes * absmax of their block, with the active target's kernel (tests use it).");
  m.def(
      "divide_by_step_constant",
      [=](const py::array& x, double divisor, py::array& out) {
        exact(x, py::dtype("float32"), "x", false);
        exact(out, py::dtype("float32"), "out", true);
        if (out.size() != x.size()) throw py::value_error("out must have the size of x");
        fusedopt::active_kernels().divide_by_step_constant(static_cast<const float*>(x.data()), divisor,
                                                           static_cast<float*>(out.mutable_data()), x.size());
      },
      "x"_a, "divisor"_a, "out"_a,
      "out <- x / float32(divisor) as the active target's vector kernels divide by a per-step constant\n"
      "(Adam's sqrt(1 - beta2^t); tests use it).");
  m.def("roof", &fusedopt::roof, "tensors"_a,
        "Memory roof: for each [a_1, ..., a_k, b], a_i += b in place (benchmarks only).");
  m.def("bytes_roof", &fusedopt::bytes_roof, "tensors"_a,
        "Memory roof of mixed storage: for each (updated, read, stored), the read arrays' sum (as\n"
        "unsigned integers of their width) is added to the updated ones and written to the stored ones\n"
        "(benchmarks only).");

  m.def("check_torch_plan", &fusedopt::check_torch_plan, "plan"_a, "param_groups"_a, "state"_a,
        "fusedopt.torch's per-step check of its cached plan (a _Plan): (flags, grads), flags 0 when\n"
        "the plan still describes the optimizer, else TORCH_PLAN_* bits; grads: each plan param's .grad.");
  m.def("record_torch_plan", &fusedopt::record_torch_plan, "plan"_a,
        "Copies the core's counts into fusedopt.torch's 0-d state tensors; returns what they now hold.");
  m.def("unowned_view", &fusedopt::unowned_view, "dtype"_a, "shape"_a, "address"_a,
        "fusedopt.torch's view of a gradient's memory, neither owning nor keeping it alive (private).");
  m.attr("TORCH_PLAN_REBUILD") = int(fusedopt::kPlanRebuild);
  m.attr("TORCH_PLAN_GROUP_VALUES") = int(fusedopt::kPlanGroupValues);
  m.attr("TORCH_PLAN_NEW_GRADS") = int(fusedopt::kPlanNewGrads);
  m.attr("TORCH_PLAN_MIRRORS_EDITED") = int(fusedopt::kPlanMirrorsEdited);

  m.def("num_threads", &fusedopt::num_threads, "The thread count a large step uses now.");
  m.def("thread_override", &fusedopt::thread_override,
        "The thread count fixed by set_thread_override or FUSEDOPT_NUM_THREADS, 0 if none.");
  m.def("set_thread_override", &fusedopt::set_thread_override, "count"_a,
        "Fix the thread count (0 unfixes it); returns the previous override.");
  m.def("scoped_thread_override", &fusedopt::scoped_thread_override,
        "The thread count fixed for the calling thread only, 0 if none.");
  m.def("set_scoped_thread_override", &fusedopt::set_scoped_thread_override, "count"_a,
        "Fix the thread count of the calling thread's steps (0 unfixes it); returns the previous one.");
  m.def("contention_stats", [] {
    const fusedopt::ContentionStats s = fusedopt::contention_stats();
    return py::dict("team_steps"_a = s.team_steps, "serial_steps"_a = s.serial_steps, "stalls"_a = s.stalls,
                    "stall_streak"_a = s.stall_streak, "serial_budget_ns"_a = s.serial_budget_ns);
  }, "What the default thread count did about a busy machine (see csrc/parallel.hpp).");
  m.def("_report_team_step", &fusedopt::report_team_step, "work_ns"_a, "waited_ns"_a,
        "Feed the contention guard a team step that did not happen (tests of its policy).");
  m.def("last_team_size", &fusedopt::last_team_size,
        "How many threads ran the most recent step (1 on the serial path).");
  m.def("serial_cutoff_bytes", &fusedopt::serial_cutoff_bytes);
  m.def("set_serial_cutoff_bytes", &fusedopt::set_serial_cutoff_bytes, "bytes"_a,
        "Steps moving fewer bytes run on one thread; returns the previous cutoff.");
  m.def("chunked_step_bytes", &fusedopt::chunked_step_bytes);
  m.def("set_chunked_step_bytes", &fusedopt::set_chunked_step_bytes, "bytes"_a,
        "Team steps moving fewer bytes are split one piece per thread, larger ones chunked; returns the "
        "previous size.");
  m.def("select_target", &fusedopt::select_target, "name"_a,
        "Switch the kernels to a compiled, supported SIMD target (tests use it).");
  m.def("build_info", [] {
    return py::dict("version"_a = FUSEDOPT_VERSION, "compiler"_a = FUSEDOPT_COMPILER,
                    "openmp"_a = fusedopt::openmp_description(),
                    "compiled_targets"_a = fusedopt::compiled_targets(),
                    "supported_targets"_a = fusedopt::supported_targets(),
                    "isa"_a = std::string(fusedopt::active_kernels().target),
                    "cpu"_a = fusedopt::cpu_name(), "cpu_flags"_a = fusedopt::cpu_flags(),
                    "num_threads"_a = fusedopt::num_threads(), "max_threads"_a = fusedopt::kMaxThreads,
                    "forked_child"_a = fusedopt::in_forked_child(),
                    "serial_cutoff_bytes"_a = fusedopt::serial_cutoff_bytes());
  }, "What was built and what was chosen at import.");
}
