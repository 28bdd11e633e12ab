// fusedopt.torch's per-step check of its plan (python/fusedopt/torch.py,
// _Plan), in C because in Python it cost more than the step itself: a few
// hundred nanoseconds per list walked, and a 1-tensor step walks a dozen.
// torch.py is the specification: _Plan's docstring says what is checked and
// why; this file only walks the plan's own lists (read as its attributes,
// never copied, so there is one description of the plan) and reports what
// differs. Every object it calls into (data_ptr, .grad, a mapping's
// __getitem__) may run Python code, so each list item is held while used
// and each list's length is read again at every index.
#include "torch_plan.hpp"

#include <pybind11/numpy.h>

#include <cstdint>
#include <optional>
#include <stdexcept>

namespace fusedopt {
namespace {

// An error from an object the plan looks at means that it no longer
// describes that object: the caller rebuilds, and the rebuild reports the
// error with the param's name. Anything but an Exception (KeyboardInterrupt) propagates.
bool clear_exception() {
  if (!PyErr_ExceptionMatches(PyExc_Exception)) throw py::error_already_set();
  PyErr_Clear();
  return false;
}

// The plan's lists are attributes of the _Plan object (torch.py builds
// them), looked up by names interned once, so that a lookup hashes nothing.
PyObject* intern(const char* name) { return PyUnicode_InternFromString(name); }
struct PlanNames {
  PyObject* const grad = intern("grad");  // a param's, not the plan's
  PyObject* const grad_ptrs = intern("grad_ptrs");
  PyObject* const grad_refs = intern("grad_refs");
  PyObject* const groups = intern("groups");
  PyObject* const has_grad = intern("has_grad");
  PyObject* const mirror_addresses = intern("mirror_addresses");
  PyObject* const mirror_entries = intern("mirror_entries");
  PyObject* const mirror_keys = intern("mirror_keys");
  PyObject* const mirror_values = intern("mirror_values");
  PyObject* const mirror_views = intern("mirror_views");
  PyObject* const mirror_widths = intern("mirror_widths");
  PyObject* const param_copies = intern("param_copies");
  PyObject* const param_lists = intern("param_lists");
  PyObject* const params = intern("params");
  PyObject* const slot_dicts = intern("slot_dicts");
  PyObject* const slot_keys = intern("slot_keys");
  PyObject* const slot_ptrs = intern("slot_ptrs");
  PyObject* const spec_values = intern("spec_values");
  PyObject* const state_items = intern("state_items");
  PyObject* const state_map = intern("state_map");
  PyObject* const watched = intern("watched");
  PyObject* const watched_ptrs = intern("watched_ptrs");
};
const PlanNames& plan_names() {
  static const PlanNames names;  // made under the GIL, at the first check
  return names;
}
// plan.<name>, which (but for state_map) is a list: the walks below index
// it unchecked. Read from the plan's __dict__ (a _Plan has no descriptors
// but its methods), which skips the lookup in the class a getattr makes.
py::object attribute(py::handle plan_dict, PyObject* name) {
  PyObject* value = PyDict_GetItemWithError(plan_dict.ptr(), name);  // borrowed
  if (value == nullptr) {
    if (!PyErr_Occurred()) PyErr_Format(PyExc_AttributeError, "fusedopt.torch's plan has no %S", name);
    throw py::error_already_set();
  }
  if (!PyList_Check(value) && name != plan_names().state_map)
    throw py::type_error("fusedopt.torch's plan is broken: an attribute is not a list");
  return py::reinterpret_borrow<py::object>(value);
}

// A plan's __dict__.
py::object attributes_of(py::handle plan) {
  PyObject* dict = PyObject_GenericGetDict(plan.ptr(), nullptr);
  if (dict == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(dict);
}

// list[i] held, or an empty handle once the list has become shorter.
py::object item(py::handle list, Py_ssize_t i) {
  if (i >= PyList_GET_SIZE(list.ptr())) return py::object();
  return py::reinterpret_borrow<py::object>(PyList_GET_ITEM(list.ptr(), i));
}

// What the check asks of torch at every step, per tensor: data_ptr() and
// .grad. Both are C functions of torch's tensor type, found by the type's
// own lookup and called as Python's call would call them; the generic call
// machinery around them cost as much as torch's functions themselves. Any
// other kind of attribute (a subclass's Python override) takes the generic
// path. (A method set on one tensor object is not looked at: the memory is
// what the type's method reports.)
PyObject* call_method(PyObject* object, PyObject* name) {
  PyObject* found = _PyType_Lookup(Py_TYPE(object), name);  // borrowed; sets no error
  if (found != nullptr && Py_IS_TYPE(found, &PyMethodDescr_Type)) {
    auto* method = reinterpret_cast<PyMethodDescrObject*>(found);
    if ((method->d_method->ml_flags & ~METH_COEXIST) == METH_NOARGS && PyObject_TypeCheck(object, PyDescr_TYPE(method)))
      return method->d_method->ml_meth(object, nullptr);
  }
  return PyObject_CallMethodNoArgs(object, name);
}
PyObject* get_attribute(PyObject* object, PyObject* name) {
  PyObject* found = _PyType_Lookup(Py_TYPE(object), name);
  if (found != nullptr && Py_IS_TYPE(found, &PyGetSetDescr_Type)) {  // a data descriptor: before the instance's dict
    auto* getset = reinterpret_cast<PyGetSetDescrObject*>(found);
    if (getset->d_getset->get != nullptr && PyObject_TypeCheck(object, PyDescr_TYPE(getset)))
      return getset->d_getset->get(object, getset->d_getset->closure);
  }
  return PyObject_GetAttr(object, name);
}

// Whether tensor.data_ptr() is `expected` (the int it returned before);
// nullopt, the error cleared, when it cannot be read (not a tensor).
std::optional<bool> same_memory(py::handle tensor, py::handle expected) {
  static PyObject* const name = PyUnicode_InternFromString("data_ptr");
  PyObject* result = call_method(tensor.ptr(), name);
  const int same = result == nullptr ? -1 : PyObject_RichCompareBool(result, expected.ptr(), Py_EQ);
  Py_XDECREF(result);
  if (same < 0) {
    clear_exception();
    return std::nullopt;
  }
  return same == 1;
}

// Whether `tensors[i].data_ptr()` is `pointers[i]` for every i (and the lengths agree).
bool same_pointers(py::handle tensors, py::handle pointers) {
  const Py_ssize_t n = PyList_GET_SIZE(pointers.ptr());
  if (PyList_GET_SIZE(tensors.ptr()) != n) return false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    py::object tensor = item(tensors, i), expected = item(pointers, i);
    if (!tensor || !expected || !same_memory(tensor, expected).value_or(false)) return false;
  }
  return true;
}

// Whether a list holds the same objects as another, in order.
bool same_objects(py::handle list, py::handle cached) {
  if (!cached || !PyList_Check(cached.ptr())) return false;
  const Py_ssize_t n = PyList_GET_SIZE(cached.ptr());
  if (!PyList_Check(list.ptr()) || PyList_GET_SIZE(list.ptr()) != n) return false;
  for (Py_ssize_t i = 0; i < n; ++i)
    if (PyList_GET_ITEM(list.ptr(), i) != PyList_GET_ITEM(cached.ptr(), i)) return false;
  return true;
}

// Whether a dict's values are the cached objects, in order.
bool same_values(py::handle dict, py::handle cached) {
  if (!cached || !PyList_Check(cached.ptr())) return false;
  if (!PyDict_Check(dict.ptr()) || PyDict_GET_SIZE(dict.ptr()) != PyList_GET_SIZE(cached.ptr())) return false;
  Py_ssize_t position = 0, i = 0;
  PyObject *key, *value;
  while (PyDict_Next(dict.ptr(), &position, &key, &value))
    if (value != PyList_GET_ITEM(cached.ptr(), i++)) return false;
  return true;
}

// Whether opt.state's keys and their dicts are the cached (key, dict) pairs, in order.
bool same_state(py::handle state, py::handle items) {
  if (!PyDict_Check(state.ptr()) || PyDict_GET_SIZE(state.ptr()) != PyList_GET_SIZE(items.ptr())) return false;
  Py_ssize_t position = 0, i = 0;
  PyObject *key, *value;
  while (PyDict_Next(state.ptr(), &position, &key, &value)) {
    PyObject* pair = PyList_GET_ITEM(items.ptr(), i++);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || key != PyTuple_GET_ITEM(pair, 0) ||
        value != PyTuple_GET_ITEM(pair, 1))
      return false;
  }
  return true;
}

// The memory of every state tensor, looked up where torch keeps it: opt.state[param][key].
bool same_state_memory(py::handle dicts, py::handle keys, py::handle pointers) {
  const Py_ssize_t n = PyList_GET_SIZE(pointers.ptr());
  if (PyList_GET_SIZE(dicts.ptr()) != n || PyList_GET_SIZE(keys.ptr()) != n) return false;
  for (Py_ssize_t i = 0; i < n; ++i) {
    py::object dict = item(dicts, i), key = item(keys, i), expected = item(pointers, i);
    if (!dict || !key || !expected) return false;
    PyObject* tensor = PyObject_GetItem(dict.ptr(), key.ptr());
    if (tensor == nullptr) return clear_exception();
    const py::object held = py::reinterpret_steal<py::object>(tensor);
    if (!same_memory(held, expected).value_or(false)) return false;
  }
  return true;
}

// The 0-d state tensors the core is given as numbers (step, mu_product) are
// read and written through the memory the plan holds: `widths[k]` is 4 for
// float32, 8 for float64, and 0 for any other dtype, read through its NumPy
// view (`views[k]`) as torch.py did.
struct Mirrors {
  py::object views, addresses, widths;
  Py_ssize_t size;
  explicit Mirrors(py::handle plan, const PlanNames& names = plan_names())
      : views(attribute(plan, names.mirror_views)), addresses(attribute(plan, names.mirror_addresses)),
        widths(attribute(plan, names.mirror_widths)), size(PyList_GET_SIZE(addresses.ptr())) {
    if (PyList_GET_SIZE(views.ptr()) != size || PyList_GET_SIZE(widths.ptr()) != size)
      throw std::logic_error("fusedopt.torch's plan has mirror lists of different lengths");
  }
  int width(Py_ssize_t k) const { return int(PyLong_AsLong(PyList_GET_ITEM(widths.ptr(), k))); }
  void* address(Py_ssize_t k) const { return PyLong_AsVoidPtr(PyList_GET_ITEM(addresses.ptr(), k)); }
  // The value now in memory, as a Python number.
  py::object read(Py_ssize_t k) const {
    switch (width(k)) {
      case 4: return py::float_(double(*static_cast<const float*>(address(k))));
      case 8: return py::float_(*static_cast<const double*>(address(k)));
      default: return py::reinterpret_borrow<py::object>(PyList_GET_ITEM(views.ptr(), k)).attr("item")();
    }
  }
  // Whether the tensor still holds `value` (a number the record or the plan read).
  bool holds(Py_ssize_t k, py::handle value) const {
    const int width_k = width(k);
    if (width_k != 0 && PyFloat_CheckExact(value.ptr()))  // the record's own numbers: no object made
      return PyFloat_AS_DOUBLE(value.ptr()) == (width_k == 4 ? double(*static_cast<const float*>(address(k)))
                                                             : *static_cast<const double*>(address(k)));
    const int same = PyObject_RichCompareBool(read(k).ptr(), value.ptr(), Py_EQ);
    if (same < 0) throw py::error_already_set();
    return same != 0;
  }
  void write(Py_ssize_t k, py::handle value) const {
    switch (width(k)) {
      case 4: *static_cast<float*>(address(k)) = static_cast<float>(value.cast<double>()); break;  // nearest, as NumPy
      case 8: *static_cast<double*>(address(k)) = value.cast<double>(); break;
      default: py::reinterpret_borrow<py::object>(PyList_GET_ITEM(views.ptr(), k)).attr("fill")(value);
    }
  }
};

}  // namespace

py::tuple check_torch_plan(py::handle plan_object, py::handle param_groups, py::handle state) {
  const PlanNames& names = plan_names();
  const py::object plan = attributes_of(plan_object);
  const auto rebuild = [] { return py::make_tuple(int(kPlanRebuild), py::none()); };
  // The groups, their params lists and the params in them.
  py::object groups = attribute(plan, names.groups), param_lists = attribute(plan, names.param_lists);
  py::object param_copies = attribute(plan, names.param_copies);
  if (!PyList_Check(param_groups.ptr()) || !same_objects(param_groups, groups)) return rebuild();
  int flags = 0;
  py::object spec_values = attribute(plan, names.spec_values);
  for (Py_ssize_t g = 0; g < PyList_GET_SIZE(groups.ptr()); ++g) {
    py::object group = item(groups, g), params = item(param_lists, g);
    if (!group || !params || !PyDict_Check(group.ptr())) return rebuild();
    PyObject* now = PyDict_GetItem(group.ptr(), names.params);  // borrowed; no Python code runs
    if (now == nullptr || now != params.ptr() || !same_objects(now, item(param_copies, g))) return rebuild();
    if (!same_values(group, item(spec_values, g))) flags |= kPlanGroupValues;  // the caller looks
  }
  // opt.state: its dicts and the memory of every state tensor and param.
  if (state.ptr() != attribute(plan, names.state_map).ptr() || !same_state(state, attribute(plan, names.state_items)))
    return rebuild();
  const bool memory_unchanged =
      same_state_memory(attribute(plan, names.slot_dicts), attribute(plan, names.slot_keys),
                        attribute(plan, names.slot_ptrs)) &&
      same_pointers(attribute(plan, names.watched), attribute(plan, names.watched_ptrs));
  if (!memory_unchanged) return rebuild();
  // The gradients: the same objects (held weakly) with the same memory, or new ones.
  py::object params = attribute(plan, names.params), refs = attribute(plan, names.grad_refs);
  py::object has_grad = attribute(plan, names.has_grad), grad_ptrs = attribute(plan, names.grad_ptrs);
  const Py_ssize_t n = PyList_GET_SIZE(params.ptr());
  if (PyList_GET_SIZE(refs.ptr()) != n || PyList_GET_SIZE(has_grad.ptr()) != n) return rebuild();
  py::list grads(n);
  bool same_grads = true;
  Py_ssize_t present = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    py::object param = item(params, i);
    if (!param) return rebuild();
    PyObject* grad = get_attribute(param.ptr(), names.grad);
    if (grad == nullptr) {
      clear_exception();
      return rebuild();
    }
    PyList_SET_ITEM(grads.ptr(), i, grad);  // steals
    py::object had = item(has_grad, i);
    if (!had || (grad != Py_None) != (had.ptr() == Py_True)) return rebuild();
    py::object ref = item(refs, i);
    if (!ref || !PyWeakref_Check(ref.ptr()) || PyWeakref_GetObject(ref.ptr()) != grad) same_grads = false;
    if (same_grads && grad != Py_None) {
      py::object expected = item(grad_ptrs, present++);
      const std::optional<bool> same = expected ? same_memory(grad, expected) : std::nullopt;
      if (!same) return rebuild();
      same_grads = *same;
    }
  }
  if (!same_grads) flags |= kPlanNewGrads;
  // The 0-d state tensors the core is given as numbers: edited in place?
  const Mirrors mirrors(plan);
  py::object values = attribute(plan, names.mirror_values);
  if (PyList_GET_SIZE(values.ptr()) != mirrors.size) return rebuild();
  for (Py_ssize_t k = 0; k < mirrors.size; ++k) {
    py::object cached = item(values, k);
    if (!cached) return rebuild();
    if (!mirrors.holds(k, cached)) {
      flags |= kPlanMirrorsEdited;
      break;
    }
  }
  return py::make_tuple(flags, std::move(grads));
}

py::list record_torch_plan(py::handle plan_object) {
  const PlanNames& names = plan_names();
  const py::object plan = attributes_of(plan_object);
  const Mirrors mirrors(plan);
  py::object entries = attribute(plan, names.mirror_entries), keys = attribute(plan, names.mirror_keys);
  if (PyList_GET_SIZE(entries.ptr()) != mirrors.size || PyList_GET_SIZE(keys.ptr()) != mirrors.size)
    throw std::logic_error("fusedopt.torch's plan has mirror lists of different lengths");
  py::list stored(mirrors.size);
  for (Py_ssize_t k = 0; k < mirrors.size; ++k) {
    py::handle entry = PyList_GET_ITEM(entries.ptr(), k), key = PyList_GET_ITEM(keys.ptr(), k);
    mirrors.write(k, entry[key]);
    PyList_SET_ITEM(stored.ptr(), k, mirrors.read(k).release().ptr());
  }
  return stored;
}

py::object unowned_view(const py::dtype& dtype, const std::vector<py::ssize_t>& shape, std::uintptr_t address) {
  using Api = py::detail::npy_api;
  Api& api = Api::get();
  // With data given and no base, NumPy neither owns nor keeps anything alive.
  PyObject* array = api.PyArray_NewFromDescr_(
      api.PyArray_Type_, dtype.inc_ref().ptr() /* stolen */, static_cast<int>(shape.size()), shape.data(), nullptr,
      reinterpret_cast<void*>(address), Api::NPY_ARRAY_C_CONTIGUOUS_ | Api::NPY_ARRAY_ALIGNED_ | Api::NPY_ARRAY_WRITEABLE_,
      nullptr);
  if (array == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(array);
}

}  // namespace fusedopt
