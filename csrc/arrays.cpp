#include "arrays.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

#include "dispatch.hpp"
#include "py_values.hpp"

namespace fusedopt {

std::string ArrayLabel::text() const {
  std::string s = std::string(list) + "[" + std::to_string(index) + "]";
  return key ? s + "['" + key + "']" : s;
}

py::ssize_t length(py::handle sequence, const char* name) {
  if (!PyList_Check(sequence.ptr()) && !PyTuple_Check(sequence.ptr()))
    throw py::type_error(std::string(name) + " must be a list or tuple, got " + type_name(sequence));
  return py::len(sequence);
}

py::tuple snapshot(py::handle sequence, const char* name) {
  length(sequence, name);
  // PyList_AsTuple copies a list (or a list subclass such as Optimizer's
  // StateList) without calling back into Python.
  PyObject* tuple = PyList_Check(sequence.ptr()) ? PyList_AsTuple(sequence.ptr()) : PySequence_Tuple(sequence.ptr());
  auto copy = py::reinterpret_steal<py::tuple>(tuple);
  if (!copy) throw py::error_already_set();
  return copy;
}

py::array as_array(py::handle object, const ArrayLabel& label) {
  if (py::isinstance<py::array>(object)) return py::reinterpret_borrow<py::array>(object);
  std::string hint;
  const py::object module = py::type::of(object).attr("__module__");
  if (py::isinstance<py::str>(module) && module.cast<std::string>().rfind("torch", 0) == 0)
    hint = " (for torch tensors use fusedopt.torch's optimizers, e.g. fusedopt.torch.AdamW)";
  throw py::type_error(label.text() + " must be a numpy.ndarray, got " + type_name(object) + hint);
}

// ------------------------------------------------------------------ dtypes

namespace {

struct DtypeInfo {
  Dtype dtype;
  const char* name;
};
constexpr DtypeInfo kDtypes[] = {
    {kFloat32, "float32"}, {kFloat64, "float64"}, {kBfloat16, "bfloat16"}, {kFloat16, "float16"}};

// NumPy's type numbers; bfloat16's is given to ml_dtypes when it registers the
// type (it depends on import order), so it is read once from its dtype.
constexpr int kNumpyHalf = 23;
int bfloat16_type_num() {
  static const int number = [] {
    try {
      return py::module_::import("numpy").attr("dtype")(py::module_::import("ml_dtypes").attr("bfloat16"))
          .attr("num").cast<int>();
    } catch (const py::error_already_set&) {
      return -1;  // no ml_dtypes: no bfloat16 array can exist
    }
  }();
  return number;
}

bool native_byte_order(char order) {
  constexpr char kNative = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
  return order == '=' || order == '|' || order == kNative;
}

// The array's Dtype, or false when fusedopt does not stream it.
bool stream_dtype(const py::array& a, Dtype* out) {
  const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr);
  if (!native_byte_order(descr->byteorder)) return false;
  const int number = descr->type_num;
  if (number == py::detail::npy_api::NPY_FLOAT_) *out = kFloat32;
  else if (number == py::detail::npy_api::NPY_DOUBLE_) *out = kFloat64;
  else if (number == kNumpyHalf) *out = kFloat16;
  else if (number == bfloat16_type_num()) *out = kBfloat16;
  else return false;
  return true;
}

std::string dtype_text(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string shape_text(const py::array& a) { return py::str(py::tuple(a.attr("shape"))).cast<std::string>(); }

// NumPy's flags for a C- or Fortran-ordered array: one dense block that
// starts at its data pointer, whatever the strides of its length-1 axes.
constexpr int kContiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_F_CONTIGUOUS_;

// Where the lowest-addressed element of a dense, non-overlapping array is, or
// nullptr if the array is not one such block. Its elements then fill
// [block, block + size * itemsize) exactly once.
char* dense_block(const py::array& a) {
  char* data = static_cast<char*>(const_cast<void*>(a.data()));
  if (a.size() <= 1 || (a.flags() & kContiguous) != 0) return data;  // what almost every step sees
  std::vector<std::pair<py::ssize_t, py::ssize_t>> axes;  // (|stride|, extent) of axes longer than 1
  for (py::ssize_t k = 0; k < a.ndim(); ++k) {
    if (a.shape(k) == 1) continue;
    const py::ssize_t stride = a.strides(k);
    if (stride < 0) data += stride * (a.shape(k) - 1);
    axes.emplace_back(stride < 0 ? -stride : stride, a.shape(k));
  }
  std::sort(axes.begin(), axes.end());
  py::ssize_t expected = a.itemsize();
  for (const auto& [stride, extent] : axes) {
    if (stride != expected) return nullptr;
    expected *= extent;
  }
  return data;
}

// The strides of the axes longer than 1, in elements: two arrays with the
// same ones lay out their elements alike.
bool same_layout(const py::array& a, const py::array& b) {
  if ((a.flags() & b.flags() & kContiguous) != 0) return true;  // both C- or both F-ordered (same shapes)
  for (py::ssize_t k = 0; k < a.ndim(); ++k)
    if (a.shape(k) > 1 && a.strides(k) / a.itemsize() != b.strides(k) / b.itemsize()) return false;
  return true;
}

Stream checked_stream(const py::array& a, Dtype dtype, const ArrayLabel& label, bool written) {
  char* block = dense_block(a);
  if (block == nullptr)
    throw py::value_error(label.text() + " must be dense: one block of memory in any order (this one "
                          "is a slice with steps, or broadcast). fusedopt updates arrays in place and never "
                          "copies; pass np.ascontiguousarray(...) yourself and keep that array");
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw py::value_error(label.text() + " is not aligned to its dtype");
  if (written && !a.writeable()) throw py::value_error(label.text() + " is read-only");
  return {block, dtype, static_cast<std::int64_t>(a.size())};
}

}  // namespace

py::dtype numpy_dtype(Dtype dtype) {
  if (dtype == kBfloat16) return py::dtype::from_args(py::module_::import("ml_dtypes").attr("bfloat16"));
  return py::dtype(dtype_name(dtype));
}

const char* dtype_name(Dtype dtype) {
  for (const DtypeInfo& info : kDtypes)
    if (info.dtype == dtype) return info.name;
  return "?";
}

bool dtype_from_name(const std::string& name, Dtype* out) {
  for (const DtypeInfo& info : kDtypes)
    if (name == info.name) return *out = info.dtype, true;
  return false;
}

Stream check_param(const py::array& param, const ArrayLabel& label) {
  Dtype dtype;
  if (!stream_dtype(param, &dtype))
    throw py::type_error(label.text() + " has dtype " + dtype_text(param) +
                         "; fusedopt updates float32, float64, bfloat16 (ml_dtypes) and float16 arrays "
                         "(native byte order)");
  return checked_stream(param, dtype, label, /*written=*/true);
}

Stream check_float_array(const py::array& a, const ArrayLabel& label, bool written) {
  Dtype dtype;
  if (!stream_dtype(a, &dtype) || (dtype != kFloat32 && dtype != kFloat64))
    throw py::type_error(label.text() + " has dtype " + dtype_text(a) +
                         "; this pass takes float32 and float64 arrays (native byte order)");
  return checked_stream(a, dtype, label, written);
}

Stream check_like_param(const py::array& a, const py::array& param, Dtype param_dtype, const ArrayLabel& label,
                        const ArrayLabel& param_label, bool written, DtypeRule rule) {
  Dtype dtype;
  const bool known = stream_dtype(a, &dtype);
  const bool allowed = known && (rule == DtypeRule::kSameAsParam ? dtype == param_dtype
                                 : rule == DtypeRule::kFloat32   ? dtype == kFloat32
                                                                 : compute_of(dtype) == compute_of(param_dtype));
  if (!allowed) {
    const std::string wanted = rule == DtypeRule::kSameAsParam ? "" :
                               rule == DtypeRule::kFloat32 ? " (a master copy is float32)" :
                               param_dtype == kFloat64 ? " (state of a float64 param is float64)"
                                                       : " (state of this param may be float32, bfloat16 or float16)";
    throw py::type_error(label.text() + " has dtype " + dtype_text(a) + " but " + param_label.text() +
                         " has dtype " + dtype_text(param) + wanted + " (fusedopt never converts dtypes)");
  }
  const bool same_shape = a.ndim() == param.ndim() && std::equal(a.shape(), a.shape() + a.ndim(), param.shape());
  if (!same_shape)
    throw py::value_error(label.text() + " has shape " + shape_text(a) + " but " + param_label.text() +
                          " has shape " + shape_text(param));
  const Stream stream = checked_stream(a, dtype, label, written);
  if (!same_layout(a, param))
    throw py::value_error(label.text() + " lays out its elements differently from " + param_label.text() +
                          " (other strides): the update pairs elements by their place in memory");
  return stream;
}

std::ptrdiff_t OverlapCheck::add(const Stream& stream, const ArrayLabel& label, bool written) {
  return add(stream.data, stream.bytes(), label, written);
}

std::ptrdiff_t OverlapCheck::add(const void* data, std::int64_t bytes, const ArrayLabel& label, bool written) {
  if (bytes == 0) return -1;
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  ranges_.push_back({begin, begin + static_cast<std::uintptr_t>(bytes), written, label});
  return static_cast<std::ptrdiff_t>(ranges_.size()) - 1;
}

void OverlapCheck::replace(std::ptrdiff_t index, const Stream& stream, const ArrayLabel& label, bool written) {
  if (index < 0) return;  // an empty array then, and an empty one now (the same size)
  const auto begin = reinterpret_cast<std::uintptr_t>(stream.data);
  ranges_[static_cast<std::size_t>(index)] = {begin, begin + static_cast<std::uintptr_t>(stream.bytes()), written,
                                              label};
}

void* check_codes_like_param(const py::array& a, const py::array& param, const ArrayLabel& label,
                             const ArrayLabel& param_label, const std::string& what) {
  if (a.dtype().kind() != 'u' || a.itemsize() != 1)
    throw py::type_error(label.text() + " has dtype " + dtype_text(a) + ": 8-bit state is uint8 codes (" + what +
                         "; fusedopt never converts dtypes)");
  const bool same_shape = a.ndim() == param.ndim() && std::equal(a.shape(), a.shape() + a.ndim(), param.shape());
  if (!same_shape)
    throw py::value_error(label.text() + " has shape " + shape_text(a) + " but " + param_label.text() +
                          " has shape " + shape_text(param));
  char* block = dense_block(a);
  if (block == nullptr) throw py::value_error(label.text() + " must be dense: one block of memory in any order");
  if (!a.writeable()) throw py::value_error(label.text() + " is read-only");
  if (!same_layout(a, param))
    throw py::value_error(label.text() + " lays out its elements differently from " + param_label.text() +
                          " (other strides): the update pairs elements by their place in memory");
  return block;
}

float* check_absmax(const py::array& a, std::int64_t blocks, const ArrayLabel& label, const std::string& what) {
  Dtype dtype;
  if (!stream_dtype(a, &dtype) || dtype != kFloat32)
    throw py::type_error(label.text() + " has dtype " + dtype_text(a) + ": the scales of 8-bit state are float32");
  if (a.ndim() != 1 || a.shape(0) != blocks)
    throw py::value_error(label.text() + " has shape " + shape_text(a) + ", want (" + std::to_string(blocks) +
                          ",): one scale per block (" + what + ")");
  return static_cast<float*>(static_cast<void*>(checked_stream(a, kFloat32, label, /*written=*/true).data));
}

// Sorted by start, a range overlaps an earlier one exactly when it starts
// before the furthest end seen so far; only pairs with a writer matter.
void OverlapCheck::check() {
  std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::size_t furthest = kNone;          // the range reaching furthest so far
  std::size_t furthest_written = kNone;  // the same among written ranges
  for (std::size_t k = 0; k < ranges_.size(); ++k) {
    const Range& r = ranges_[k];
    const std::size_t clash = r.written ? furthest : furthest_written;
    if (clash != kNone && r.begin < ranges_[clash].end)
      throw py::value_error(r.label.text() + " shares memory with " + ranges_[clash].label.text() +
                            " (arrays updated in place must not overlap any other array)");
    if (furthest == kNone || r.end > ranges_[furthest].end) furthest = k;
    if (r.written && (furthest_written == kNone || r.end > ranges_[furthest_written].end)) furthest_written = k;
  }
}

namespace {

// A new array shaped and laid out like `param` (the same strides in
// elements, signs included, so that the two pair their elements by place in
// memory), of `dtype`, uninitialised.
py::array empty_like_layout(const py::array& param, const py::dtype& dtype) {
  py::array flat(dtype, std::vector<py::ssize_t>{param.size()});
  const py::ssize_t item = dtype.itemsize();
  std::vector<py::ssize_t> shape(param.shape(), param.shape() + param.ndim()), strides;
  py::ssize_t origin = 0;  // element [0, 0, ...], in elements from the block's start
  for (py::ssize_t k = 0; k < param.ndim(); ++k) {
    const py::ssize_t stride = param.shape(k) > 1 ? param.strides(k) / param.itemsize() : 0;
    strides.push_back(stride * item);
    if (stride < 0) origin -= stride * (param.shape(k) - 1);
  }
  char* data = static_cast<char*>(flat.mutable_data()) + origin * item;
  return py::array(dtype, shape, strides, data, flat);
}

}  // namespace

py::array filled_like(const py::array& param, Dtype dtype, double initial) {
  py::array a = empty_like_layout(param, numpy_dtype(dtype));
  const std::int64_t size = a.size();
  void* block = dense_block(a);
  if (initial == 0.0) {
    std::memset(block, 0, static_cast<std::size_t>(size * itemsize(dtype)));  // +0.0 in every format
  } else if (dtype == kFloat64) {
    std::fill_n(static_cast<double*>(block), size, initial);
  } else if (dtype == kFloat32) {
    std::fill_n(static_cast<float*>(block), size, static_cast<float>(initial));
  } else {
    // One element converted by NumPy (round to nearest even), then copied.
    py::array one = py::array(py::dtype("float64"), std::vector<py::ssize_t>{1});
    *static_cast<double*>(one.mutable_data()) = initial;
    const py::array cast = one.attr("astype")(numpy_dtype(dtype));
    std::uint16_t bits;
    std::memcpy(&bits, cast.data(), sizeof bits);
    std::fill_n(static_cast<std::uint16_t*>(block), size, bits);
  }
  return a;
}

py::array codes_like(const py::array& param, std::uint8_t fill) {
  py::array a = empty_like_layout(param, py::dtype("uint8"));
  std::memset(dense_block(a), fill, static_cast<std::size_t>(a.size()));
  return a;
}

py::array float32_copy(const py::array& param, Dtype param_dtype) {
  py::array copy = empty_like_layout(param, numpy_dtype(kFloat32));
  active_kernels().to_float32[param_dtype](dense_block(param), static_cast<float*>(static_cast<void*>(dense_block(copy))),
                                           param.size());
  return copy;
}

}  // namespace fusedopt
