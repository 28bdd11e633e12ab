// 8-bit block-quantized state, on the driver's side: the code tables
// (bitsandbytes' dynamic tree map) and the state arrays. The per-element work
// is in kernels.cpp; the format is in kernel_types.hpp (QuantMap) and
// docs/precision.md.
#pragma once

#include <cstdint>

#include <pybind11/numpy.h>

#include "kernel_types.hpp"

namespace fusedopt {
namespace py = pybind11;

// The map of signed state (first moments) or of non-negative state, built once.
const QuantMap& quant_map(bool is_signed);

// The two arrays of one 8-bit state array of a param: uint8 codes shaped and
// laid out like the param, and a float32 absmax per block (1-D), every element
// `initial`.
struct QuantizedArrays {
  py::array codes, absmax;
};
QuantizedArrays quantized_filled(const py::array& param, std::int64_t block_size, bool is_signed, double initial);

// The state key of a key's absmax: "exp_avg" -> "exp_avg_absmax" (a string
// that lives as long as the process, for error labels and dict keys).
const char* absmax_key(const char* key);

}  // namespace fusedopt
