#include "quantize.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "arrays.hpp"

namespace fusedopt {
namespace {

std::uint32_t bits_of(float x) { return __builtin_bit_cast(std::uint32_t, x); }
float float_of(std::uint32_t u) { return __builtin_bit_cast(float, u); }

// bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8),
// computed in double and rounded once to float32 (fusedopt/reference.py
// computes the same, operation by operation): for each decade 10**(i-6),
// i = 0..6, the midpoints of linspace(0.1, 1, k + 1) scaled by the decade
// (k = 2**i signed, with both signs; k = 2**(i+1) unsigned), then 0 and 1.
std::vector<float> dynamic_map(bool is_signed) {
  static const double kDecades[] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
  std::vector<float> codes;
  for (int i = 0; i < 7; ++i) {
    const int count = is_signed ? (1 << i) : (2 << i);  // midpoints in this decade
    const double start = 0.1, stop = 1.0, step = (stop - start) / count;
    std::vector<double> boundaries(static_cast<std::size_t>(count) + 1);
    for (int j = 0; j <= count; ++j) boundaries[static_cast<std::size_t>(j)] = j * step + start;  // as np.linspace
    boundaries.back() = stop;
    for (int j = 0; j < count; ++j) {
      const double mean = (boundaries[static_cast<std::size_t>(j)] + boundaries[static_cast<std::size_t>(j) + 1]) / 2.0;
      codes.push_back(static_cast<float>(kDecades[i] * mean));
      if (is_signed) codes.push_back(static_cast<float>(-(kDecades[i] * mean)));
    }
  }
  codes.push_back(0.0f);
  codes.push_back(1.0f);
  std::sort(codes.begin(), codes.end());
  if (codes.size() != kQuantCodes || std::adjacent_find(codes.begin(), codes.end()) != codes.end())
    throw std::logic_error("the dynamic map must have 256 distinct codes");
  return codes;
}

// The number of thresholds <= x.
int count_at_most(const QuantMap& map, float x) {
  return static_cast<int>(std::upper_bound(map.thresholds, map.thresholds + kQuantCodes, x) - map.thresholds);
}

QuantMap build_map(bool is_signed) {
  QuantMap map{};
  const std::vector<float> codes = dynamic_map(is_signed);
  std::copy(codes.begin(), codes.end(), map.codes);
  for (int j = 0; j + 1 < kQuantCodes; ++j) {
    // The exact midpoint (a double holds it), rounded up to a float32: values
    // from there on are nearer the upper code, or tie with it.
    const double middle = (static_cast<double>(codes[j]) + static_cast<double>(codes[j + 1])) / 2.0;
    float threshold = static_cast<float>(middle);
    if (static_cast<double>(threshold) < middle) threshold = std::nextafter(threshold, std::numeric_limits<float>::infinity());
    map.thresholds[j] = threshold;
  }
  map.thresholds[kQuantCodes - 1] = std::numeric_limits<float>::infinity();
  // Each bucket (kernel_types.hpp): its lowest and highest value for either
  // sign, and the threshold between them, if any.
  constexpr std::int32_t kNone = 1 << 16;  // above every 16-bit value: no threshold in the bucket
  for (int bucket = 0; bucket < kQuantBucketsPerSign; ++bucket) {
    // Bucket 0: every magnitude up to the top of exponent kQuantLowestExponent - 1's first bucket.
    std::uint32_t low_bits = 0, high_bits = (std::uint32_t(kQuantLowestExponent - 1) << 23) | ((1u << (23 - kQuantBucketMantissaBits)) - 1u);
    if (bucket > 0) {
      const std::uint32_t exponent = std::uint32_t(bucket >> kQuantBucketMantissaBits) + kQuantLowestExponent - 1u;
      const std::uint32_t mantissa = std::uint32_t(bucket) & ((1u << kQuantBucketMantissaBits) - 1u);
      low_bits = (exponent << 23) | (mantissa << (23 - kQuantBucketMantissaBits));
      high_bits = low_bits | ((1u << (23 - kQuantBucketMantissaBits)) - 1u);
    }
    const float low = float_of(low_bits), high = float_of(high_bits);
    for (int negative = 0; negative < 2; ++negative) {
      const float lowest = negative ? -high : low, highest = negative ? -low : high;
      const int first = count_at_most(map, lowest), inside = count_at_most(map, highest) - first;
      if (inside > 1 || (bucket == 0 && inside > 0))
        throw std::logic_error("a bucket of the 8-bit encoder holds two thresholds: use more mantissa bits");
      std::int32_t threshold = kNone;
      if (inside == 1) {
        const auto low16 = static_cast<std::int32_t>(bits_of(map.thresholds[first]) & 0xFFFFu);
        threshold = negative ? -low16 : low16;  // x < 0: x >= t exactly when |x| <= |t|
      }
      map.buckets[bucket + negative * kQuantBucketsPerSign] = static_cast<std::int32_t>(
          static_cast<std::uint32_t>(threshold) << 8 | static_cast<std::uint32_t>(first));
    }
  }
  return map;
}

}  // namespace

const QuantMap& quant_map(bool is_signed) {
  static const QuantMap signed_map = build_map(true), unsigned_map = build_map(false);
  return is_signed ? signed_map : unsigned_map;
}

QuantizedArrays quantized_filled(const py::array& param, std::int64_t block_size, bool is_signed, double initial) {
  const QuantMap& map = quant_map(is_signed);
  const auto value = static_cast<float>(initial);
  // Every block holds `value`: its absmax is |value| and every code is the code of value / |value|.
  const float scale = std::fabs(value);
  const float normalized = scale > 0.0f ? value / scale : 0.0f;
  const int code = count_at_most(map, normalized);
  const std::int64_t size = param.size();
  QuantizedArrays out{codes_like(param, static_cast<std::uint8_t>(code)),
                      py::array_t<float>(static_cast<py::ssize_t>((size + block_size - 1) / block_size))};
  std::fill_n(static_cast<float*>(out.absmax.mutable_data()), out.absmax.size(), scale);
  return out;
}

const char* absmax_key(const char* key) {
  static std::map<std::string, std::string> names;  // node-based: the strings never move
  auto [it, added] = names.try_emplace(key, std::string(key) + "_absmax");
  return it->second.c_str();
}

}  // namespace fusedopt
