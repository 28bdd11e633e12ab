#include "py_values.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <unordered_map>

namespace fusedopt {

std::string type_name(py::handle value) {
  return py::str(py::type::of(value).attr("__name__")).cast<std::string>();
}

std::string float_repr(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

PyObject* interned(const char* name) {
  // Keyed by the literal's address: every caller passes a string literal.
  // A step asks for a few dozen keys, so a direct-mapped cache answers
  // first; the map holds them all (a slot shared by two keys only misses).
  struct Slot {
    const char* name;
    PyObject* key;
  };
  static Slot recent[64];  // the GIL is held: no other thread is here
  Slot& slot = recent[(reinterpret_cast<std::uintptr_t>(name) >> 3) % std::size(recent)];
  if (slot.name == name) return slot.key;
  static std::unordered_map<const char*, PyObject*> strings;
  PyObject*& key = strings[name];
  if (key == nullptr) {
    key = PyUnicode_InternFromString(name);
    if (key == nullptr) throw py::error_already_set();
  }
  slot = {name, key};
  return key;
}

PyObject* dict_item(py::handle dict, const char* key) {
  PyObject* value = PyDict_GetItemWithError(dict.ptr(), interned(key));
  if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

bool is_bool(py::handle value) {
  if (PyBool_Check(value.ptr())) return true;
  // numpy.bool_ is not a subclass of bool; its type is looked up once.
  static PyObject* numpy_bool = [] {
    return py::object(py::module_::import("numpy").attr("bool_")).release().ptr();
  }();
  return PyObject_TypeCheck(value.ptr(), reinterpret_cast<PyTypeObject*>(numpy_bool));
}

NumberStatus read_number(py::handle value, double* out) {
  double x;
  if (PyFloat_CheckExact(value.ptr())) {
    x = PyFloat_AS_DOUBLE(value.ptr());  // what a group almost always holds: no bool, no __float__ to call
  } else {
    if (is_bool(value)) return NumberStatus::kNotANumber;
    x = PyFloat_AsDouble(value.ptr());
    if (x == -1.0 && PyErr_Occurred()) {
      // No __float__ (or __index__): the wrong kind of value, said in our words.
      // Anything else the object's own code raised is the caller's to see.
      if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw py::error_already_set();
      PyErr_Clear();
      return NumberStatus::kNotANumber;
    }
  }
  *out = x;
  return std::isfinite(x) ? NumberStatus::kOk : NumberStatus::kNotFinite;
}

// ------------------------------------------------------------- GroupReader

GroupReader::GroupReader(py::handle group, std::int64_t group_index)
    : group_(group), index_(group_index) {
  if (!PyDict_Check(group.ptr()))
    throw py::type_error("param_groups[" + std::to_string(index_) + "] must be a dict, got " +
                         type_name(group));
}

std::string GroupReader::where(const char* name) const {
  return std::string(name) + " (param group " + std::to_string(index_) + ")";
}

void GroupReader::fail(const std::string& message) const {
  throw py::value_error(message + " (param group " + std::to_string(index_) + ")");
}

py::handle GroupReader::get(const char* name) const {
  PyObject* value = dict_item(group_, name);
  if (value == nullptr)
    throw py::value_error("param group " + std::to_string(index_) + " has no '" + name + "'");
  return value;
}

PyObject* GroupReader::optional(const char* name) const {
  PyObject* value = dict_item(group_, name);
  return value == Py_None ? nullptr : value;
}

InternedKeys::InternedKeys(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    keys_.push_back(interned(name));
    summary_ |= bit(keys_.back());
  }
}

bool GroupReader::may_have_any(const InternedKeys& keys) const {
  Py_ssize_t position = 0;
  PyObject *key, *value;
  while (PyDict_Next(group_.ptr(), &position, &key, &value))
    if (!PyUnicode_CheckExact(key) || !PyUnicode_CHECK_INTERNED(key) || keys.contains(key)) return true;
  return false;
}

std::string GroupReader::label(const char* name, int element) const {
  if (element < 0) return where(name);
  return std::string(name) + "[" + std::to_string(element) + "] (param group " +
         std::to_string(index_) + ")";
}

double GroupReader::number(const char* name) const {
  // The group dict holds the value; a strong reference keeps it alive while
  // its own __float__ runs, whatever that does to the dict.
  const py::object value = py::reinterpret_borrow<py::object>(get(name));
  return finite_number(value, [&] { return where(name); });
}

double GroupReader::at_least(const char* name, double low) const {
  const double x = number(name);
  if (x < low) throw py::value_error(where(name) + " must be >= " + float_repr(low) + ", got " + float_repr(x));
  return x;
}

static std::string interval(double low, double high, bool high_is_open) {
  return "[" + float_repr(low) + ", " + float_repr(high) + (high_is_open ? ")" : "]");
}

double GroupReader::in_range(const char* name, double low, double high, bool high_is_open) const {
  const double x = number(name);
  if (x < low || x > high || (high_is_open && x == high))
    throw py::value_error(where(name) + " must be in " + interval(low, high, high_is_open) +
                          ", got " + float_repr(x));
  return x;
}

std::pair<double, double> GroupReader::pair_in_range(const char* name, double low,
                                                     double high) const {
  const py::object value = py::reinterpret_borrow<py::object>(get(name));
  if (!PySequence_Check(value.ptr()) || PyUnicode_Check(value.ptr()))
    throw py::type_error(where(name) + " must be a pair of numbers, got " + type_name(value));
  // Copied into a tuple first: a sequence's own __len__ and __getitem__ may
  // disagree, or raise (which propagates).
  const py::tuple pair = py::reinterpret_steal<py::tuple>(PySequence_Tuple(value.ptr()));
  if (!pair) throw py::error_already_set();
  if (pair.size() != 2)
    throw py::type_error(where(name) + " must be a pair of numbers, got " + std::to_string(pair.size()) +
                         " elements");
  double elements[2];
  for (int k = 0; k < 2; ++k) {
    elements[k] = finite_number(pair[static_cast<std::size_t>(k)], [&] { return label(name, k); });
    if (elements[k] < low || elements[k] >= high)
      throw py::value_error(label(name, k) + " must be in " + interval(low, high, true) + ", got " +
                            float_repr(elements[k]));
  }
  return {elements[0], elements[1]};
}

bool GroupReader::flag(const char* name) const {
  py::handle value = get(name);
  // numpy.bool_ is accepted too; 0/1 and other objects are not.
  if (is_bool(value)) return PyObject_IsTrue(value.ptr()) == 1;
  throw py::type_error(where(name) + " must be a bool, got " + type_name(value));
}

std::int64_t GroupReader::integer(const char* name) const {
  py::handle value = get(name);
  if (is_bool(value) || !PyIndex_Check(value.ptr()))
    throw py::type_error(where(name) + " must be an int, got " + type_name(value));
  int overflow = 0;
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(value.ptr()));
  if (!index) throw py::error_already_set();
  const long long result = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (result == -1 && PyErr_Occurred()) throw py::error_already_set();
  if (overflow != 0) fail(std::string(name) + " is out of range, got " + py::repr(value).cast<std::string>());
  return result;
}

std::string GroupReader::choice(const char* name, std::initializer_list<const char*> options) const {
  py::handle value = get(name);
  std::string allowed;
  for (const char* option : options) {
    if (PyUnicode_Check(value.ptr()) && py::cast<std::string>(value) == option) return option;
    allowed += std::string(allowed.empty() ? "" : ", ") + "'" + option + "'";
  }
  throw py::value_error(where(name) + " must be one of " + allowed + ", got " +
                        py::repr(value).cast<std::string>());
}

}  // namespace fusedopt
