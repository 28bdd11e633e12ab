// Reading values out of Python objects for the core: dict lookups with
// interned keys, numbers and flags with errors that name the value. Every
// failure of a Python C-API call here becomes the Python exception it set
// (or a TypeError/ValueError naming the value), never a NULL passed on.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/pybind11.h>

namespace fusedopt {
namespace py = pybind11;

// The name of a Python object's type, for error messages.
std::string type_name(py::handle value);

// Python's spelling of a float (0.001, not 0.001000), for error messages.
std::string float_repr(double x);

// dict[key] as a borrowed reference, or nullptr when absent. The hot path
// reads a dozen keys per step, so the key strings are made once and interned.
PyObject* interned(const char* key);
PyObject* dict_item(py::handle dict, const char* key);

bool is_bool(py::handle value);  // bool or numpy.bool_

// A finite real number: a Python or NumPy int or float, or anything with
// __float__, but not a bool of either kind (a flag passed as a number is a
// mistake). `label()` names the value in the error and is only called when
// raising (building messages on the hot path costs): TypeError for the wrong
// kind of value, ValueError if not finite; an exception raised by the
// object's own __float__ propagates as it is.
enum class NumberStatus { kOk, kNotANumber, kNotFinite };
NumberStatus read_number(py::handle value, double* out);

template <class Label>
double finite_number(py::handle value, Label&& label) {
  double x = 0.0;
  switch (read_number(value, &x)) {
    case NumberStatus::kOk:
      return x;
    case NumberStatus::kNotANumber:
      throw py::type_error(label() + " must be a real number, got " + type_name(value));
    case NumberStatus::kNotFinite:
      break;
  }
  throw py::value_error(label() + " must be finite, got " + float_repr(x));
}

// A few keys as interned strings (one object per text: identity is
// equality), with a 64-bit summary of their addresses that rules out most
// other interned strings in one test.
class InternedKeys {
 public:
  InternedKeys(std::initializer_list<const char*> names);
  bool contains(PyObject* interned_key) const {
    if ((summary_ & bit(interned_key)) == 0) return false;
    for (PyObject* key : keys_)
      if (key == interned_key) return true;
    return false;
  }

 private:
  static std::uint64_t bit(PyObject* key) { return std::uint64_t(1) << ((reinterpret_cast<std::uintptr_t>(key) >> 4) % 64); }
  std::vector<PyObject*> keys_;
  std::uint64_t summary_ = 0;
};

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
  std::int64_t integer(const char* name) const;  // a Python int (not a bool), or a NumPy integer
  std::string choice(const char* name, std::initializer_list<const char*> options) const;
  [[noreturn]] void fail(const std::string& message) const;  // ValueError
  // The value of an optional key (a borrowed reference), or nullptr when absent or None.
  PyObject* optional(const char* name) const;
  // False only when the group certainly has none of `keys`: one walk over
  // its keys, where looking up absent optional keys one by one costs several
  // times more. A key that is not an interned str could equal any of them: true.
  bool may_have_any(const class InternedKeys& keys) const;
  std::int64_t index() const { return index_; }

 private:
  py::handle get(const char* name) const;
  std::string where(const char* name) const;
  std::string label(const char* name, int element) const;  // "betas[1] (param group 0)"
  py::handle group_;
  std::int64_t index_;
};

}  // namespace fusedopt
