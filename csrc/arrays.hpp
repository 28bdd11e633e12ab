// The arrays a step streams through: which dtypes and layouts fusedopt
// takes, checked before anything is written, with errors that name the
// array (params[3], state[3]['exp_avg']). Never fixed up by copying: an
// in-place update handed a copy would update nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "kernel_types.hpp"

namespace fusedopt {
namespace py = pybind11;

// An array as the caller names it: params[3], grads[3], state[3]['exp_avg'].
struct ArrayLabel {
  const char* list;
  std::int64_t index;
  const char* key = nullptr;

  std::string text() const;
};

// The length of a list or tuple (TypeError naming `name` otherwise).
py::ssize_t length(py::handle sequence, const char* name);

// A strong snapshot of a list or tuple: Python code that runs during a step
// (a hyperparameter's __float__, another thread while the GIL is released)
// may change the caller's lists, never the step's view of them.
py::tuple snapshot(py::handle sequence, const char* name);

// `object` as an ndarray, or a TypeError naming it (with a pointer to
// fusedopt.torch for a torch tensor).
py::array as_array(py::handle object, const ArrayLabel& label);

// NumPy's dtype for a Dtype (bfloat16 is ml_dtypes.bfloat16) and its name.
py::dtype numpy_dtype(Dtype dtype);
const char* dtype_name(Dtype dtype);
// A dtype given by name ("float32", "bfloat16", ...); false if unknown.
bool dtype_from_name(const std::string& name, Dtype* out);

// One array's elements as the kernels see them: a block of `size` elements
// of `dtype` from `data` on, in memory order. Any dense, non-overlapping
// layout is one block (C or Fortran order, negative strides, torch's
// channels_last): an elementwise update does not care about the order.
struct Stream {
  void* data;
  Dtype dtype;
  std::int64_t size;
  std::int64_t bytes() const { return size * itemsize(dtype); }
};

// Which dtypes an array may have beside its param.
enum class DtypeRule {
  kSameAsParam,     // the grad
  kSameCompute,     // a state array: any storage whose arithmetic is the param's (float32 and 16-bit)
  kFloat32,         // the master copy of a 16-bit param
};

// A param: a writeable, aligned, dense float32/float64/bfloat16/float16 array.
Stream check_param(const py::array& param, const ArrayLabel& label);
// A grad or state array: the param's shape and layout, a dtype the rule allows.
Stream check_like_param(const py::array& a, const py::array& param, Dtype param_dtype, const ArrayLabel& label,
                        const ArrayLabel& param_label, bool written, DtypeRule rule);
// A float32 or float64 array (the passes over grads).
Stream check_float_array(const py::array& a, const ArrayLabel& label, bool written);

// 8-bit state (quantize.hpp): uint8 codes with the param's shape and layout,
// and a 1-D float32 absmax of `blocks` elements; both writeable and dense.
// `what` says where a wrong size comes from (block_size, min_8bit_size).
void* check_codes_like_param(const py::array& a, const py::array& param, const ArrayLabel& label,
                             const ArrayLabel& param_label, const std::string& what);
float* check_absmax(const py::array& a, std::int64_t blocks, const ArrayLabel& label, const std::string& what);

// Arrays that one call writes must not share memory with any other array
// of the call: the kernels read and write each element once, in place.
class OverlapCheck {
 public:
  // Each returns the range's index for replace(), or -1 for an empty array (no range).
  std::ptrdiff_t add(const Stream& stream, const ArrayLabel& label, bool written);
  std::ptrdiff_t add(const void* data, std::int64_t bytes, const ArrayLabel& label, bool written);
  // Another array in place of range `index` (not after check(), which sorts the ranges).
  void replace(std::ptrdiff_t index, const Stream& stream, const ArrayLabel& label, bool written);
  void check();  // ValueError naming the first overlapping pair
  void reserve(std::size_t ranges) { ranges_.reserve(ranges); }
  void clear() { ranges_.clear(); }  // keeps the capacity

 private:
  struct Range {
    std::uintptr_t begin, end;
    bool written;
    ArrayLabel label;
  };
  std::vector<Range> ranges_;
};

// A new C-contiguous array shaped like `param`, in `dtype`, every element `initial`.
py::array filled_like(const py::array& param, Dtype dtype, double initial);
// A new uint8 array shaped and laid out like `param`, every element `fill`.
py::array codes_like(const py::array& param, std::uint8_t fill);
// A float32 copy of a 16-bit param (exact: every 16-bit value is a float32), in its layout.
py::array float32_copy(const py::array& param, Dtype param_dtype);

}  // namespace fusedopt
