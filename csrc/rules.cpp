#include "rules.hpp"

#include <cmath>

#include "arrays.hpp"

namespace fusedopt {

MomentumRule::Hyper MomentumRule::read(const GroupReader& group) {
  return {group.at_least("lr", 0.0), group.in_range("momentum", 0.0, 1.0, /*high_is_open=*/true)};
}

SgdRule::Hyper SgdRule::read(const GroupReader& group) {
  Hyper h{group.at_least("lr", 0.0),        group.at_least("momentum", 0.0),
          group.number("dampening"),        group.at_least("weight_decay", 0.0),
          group.flag("nesterov"),           group.flag("maximize")};
  if (h.nesterov && (h.momentum <= 0.0 || h.dampening != 0.0))
    group.fail("nesterov needs momentum > 0 and dampening == 0");
  return h;
}

StateKeys SgdRule::state_keys(const Hyper& h) {
  StateKeys keys;
  if (h.momentum != 0.0) keys.array("momentum_buffer");
  return keys;
}

SgdRule::Scalars SgdRule::scalars(const Hyper& h, StepContext step) {
  // torch.optim.SGD starts the buffer as a copy of the first gradient it sees.
  const bool first = step.t == 1 || step.buffer_is_new;
  return {h.lr,          h.momentum,      h.dampening, h.weight_decay, h.maximize ? -1.0 : 1.0,
          h.momentum != 0.0, first, h.nesterov};
}

AdadeltaRule::Hyper AdadeltaRule::read(const GroupReader& group) {
  return {group.at_least("lr", 0.0),
          group.in_range("rho", 0.0, 1.0, /*high_is_open=*/false),
          group.at_least("eps", 0.0),
          group.at_least("weight_decay", 0.0),
          group.flag("maximize"),
          group.choice("scale", {"updates", "weights"}) == "weights"};
}

StateKeys AdadeltaRule::state_keys(const Hyper& h) {
  return StateKeys().array("square_avg").array(h.scale_by_weights ? "square_weight_avg" : "acc_delta");
}

AdadeltaRule::Scalars AdadeltaRule::scalars(const Hyper& h, StepContext) {
  return {h.lr, h.rho, h.eps, h.weight_decay, h.maximize ? -1.0 : 1.0, h.scale_by_weights};
}

// Weight decay shared by the Adam family: coupled (L2) adds wd * w to the
// gradient, decoupled multiplies w by 1 - lr * wd. Returns {weight_decay,
// decay_factor} for the kernel, with the unused one neutral.
static std::pair<double, double> weight_decay_terms(double lr, double weight_decay, bool decoupled) {
  return decoupled ? std::pair{0.0, 1.0 - lr * weight_decay} : std::pair{weight_decay, 1.0};
}

AdamRule::Hyper AdamRule::read(const GroupReader& group) {
  const auto [beta1, beta2] = group.pair_in_range("betas", 0.0, 1.0);
  return {group.at_least("lr", 0.0),
          beta1,
          beta2,
          group.at_least("eps", 0.0),
          group.at_least("weight_decay", 0.0),
          group.flag("amsgrad"),
          group.flag("maximize"),
          group.flag("decoupled_weight_decay")};
}

StateKeys AdamRule::state_keys(const Hyper& h) {
  StateKeys keys;
  keys.array("exp_avg").array("exp_avg_sq");
  if (h.amsgrad) keys.array("max_exp_avg_sq");
  return keys;
}

AdamRule::Scalars AdamRule::scalars(const Hyper& h, StepContext step) {
  const double t = static_cast<double>(step.t);
  const double bias_correction1 = 1.0 - std::pow(h.beta1, t);  // removes m's start-up lag
  const double bias_correction2 = 1.0 - std::pow(h.beta2, t);
  const auto [weight_decay, decay_factor] = weight_decay_terms(h.lr, h.weight_decay, h.decoupled_weight_decay);
  return {h.beta1,
          h.beta2,
          h.eps,
          weight_decay,
          decay_factor,
          h.lr / bias_correction1,
          std::sqrt(bias_correction2),
          h.maximize ? -1.0 : 1.0,
          h.amsgrad};
}

RmspropRule::Hyper RmspropRule::read(const GroupReader& group) {
  return {group.at_least("lr", 0.0),
          group.in_range("alpha", 0.0, 1.0, /*high_is_open=*/false),
          group.at_least("eps", 0.0),
          group.at_least("weight_decay", 0.0),
          group.at_least("momentum", 0.0),
          group.flag("centered"),
          group.flag("maximize")};
}

StateKeys RmspropRule::state_keys(const Hyper& h) {
  StateKeys keys;
  keys.array("square_avg");
  if (h.momentum > 0.0) keys.array("momentum_buffer");
  if (h.centered) keys.array("grad_avg");
  return keys;
}

RmspropRule::Scalars RmspropRule::scalars(const Hyper& h, StepContext) {
  return {h.lr,          h.alpha, h.eps, h.weight_decay, h.momentum, h.maximize ? -1.0 : 1.0,
          h.momentum > 0.0, h.centered};
}

AdagradRule::Hyper AdagradRule::read(const GroupReader& group) {
  return {group.at_least("lr", 0.0),
          group.at_least("lr_decay", 0.0),
          group.at_least("weight_decay", 0.0),
          group.at_least("initial_accumulator_value", 0.0),
          group.at_least("eps", 0.0),
          group.flag("maximize")};
}

StateKeys AdagradRule::state_keys(const Hyper& h) {
  return StateKeys().array("sum", h.initial_accumulator_value);
}

AdagradRule::Scalars AdagradRule::scalars(const Hyper& h, StepContext step) {
  const double t = static_cast<double>(step.t);
  return {h.lr / (1.0 + (t - 1.0) * h.lr_decay), h.eps, h.weight_decay, h.maximize ? -1.0 : 1.0};
}

NadamRule::Hyper NadamRule::read(const GroupReader& group) {
  const auto [beta1, beta2] = group.pair_in_range("betas", 0.0, 1.0);
  return {group.at_least("lr", 0.0),
          beta1,
          beta2,
          group.at_least("eps", 0.0),
          group.at_least("weight_decay", 0.0),
          group.at_least("momentum_decay", 0.0),
          group.flag("decoupled_weight_decay"),
          group.flag("maximize")};
}

StateKeys NadamRule::state_keys(const Hyper&) {
  return StateKeys().array("exp_avg").array("exp_avg_sq").scalar("mu_product", 1.0);
}

NadamRule::Scalars NadamRule::scalars(const Hyper& h, StepContext step) {
  const double t = static_cast<double>(step.t);
  // The momentum coefficient of step t, warming up towards beta1.
  const auto mu_at = [&h](double k) { return h.beta1 * (1.0 - 0.5 * std::pow(0.96, k * h.momentum_decay)); };
  const double mu = mu_at(t), mu_next = mu_at(t + 1.0);
  double& mu_product = step.scalar_state[0];  // mu_1 ... mu_{t-1} in, mu_1 ... mu_t out
  mu_product = mu_product * mu;
  const double mu_product_next = mu_product * mu_next;
  const auto [weight_decay, decay_factor] = weight_decay_terms(h.lr, h.weight_decay, h.decoupled_weight_decay);
  return {h.beta1,
          h.beta2,
          h.eps,
          weight_decay,
          decay_factor,
          1.0 - std::pow(h.beta2, t),
          h.lr * (1.0 - mu) / (1.0 - mu_product),
          h.lr * mu_next / (1.0 - mu_product_next),
          h.maximize ? -1.0 : 1.0};
}

RadamRule::Hyper RadamRule::read(const GroupReader& group) {
  const auto [beta1, beta2] = group.pair_in_range("betas", 0.0, 1.0);
  return {group.at_least("lr", 0.0),
          beta1,
          beta2,
          group.at_least("eps", 0.0),
          group.at_least("weight_decay", 0.0),
          group.flag("decoupled_weight_decay"),
          group.flag("maximize")};
}

StateKeys RadamRule::state_keys(const Hyper&) { return StateKeys().array("exp_avg").array("exp_avg_sq"); }

RadamRule::Scalars RadamRule::scalars(const Hyper& h, StepContext step) {
  const double t = static_cast<double>(step.t);
  const double beta2_t = std::pow(h.beta2, t);
  const double bias_correction1 = 1.0 - std::pow(h.beta1, t);
  const double bias_correction2 = 1.0 - beta2_t;
  // rho: the length of the simple moving average that v approximates; the
  // variance of the adaptive step is tractable only when rho_t > 5.
  const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * t * beta2_t / bias_correction2;
  const bool rectified = rho_t > 5.0;
  double step_size = h.lr / bias_correction1;
  if (rectified) {
    const double rectification = std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                           ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
    step_size = step_size * std::sqrt(bias_correction2) * rectification;
  }
  const auto [weight_decay, decay_factor] = weight_decay_terms(h.lr, h.weight_decay, h.decoupled_weight_decay);
  return {h.beta1,   h.beta2,  h.eps, weight_decay, decay_factor, step_size, h.maximize ? -1.0 : 1.0,
          rectified};
}

AdamaxRule::Hyper AdamaxRule::read(const GroupReader& group) {
  const auto [beta1, beta2] = group.pair_in_range("betas", 0.0, 1.0);
  return {group.at_least("lr", 0.0), beta1, beta2, group.at_least("eps", 0.0),
          group.at_least("weight_decay", 0.0), group.flag("maximize")};
}

StateKeys AdamaxRule::state_keys(const Hyper&) { return StateKeys().array("exp_avg").array("exp_inf"); }

AdamaxRule::Scalars AdamaxRule::scalars(const Hyper& h, StepContext step) {
  const double bias_correction1 = 1.0 - std::pow(h.beta1, static_cast<double>(step.t));
  return {h.beta1, h.beta2, h.eps, h.weight_decay, h.lr / bias_correction1, h.maximize ? -1.0 : 1.0};
}

LionRule::Hyper LionRule::read(const GroupReader& group) {
  const auto [beta1, beta2] = group.pair_in_range("betas", 0.0, 1.0);
  return {group.at_least("lr", 0.0), beta1, beta2, group.at_least("weight_decay", 0.0),
          group.flag("maximize")};
}

StateKeys LionRule::state_keys(const Hyper&) { return StateKeys().array("exp_avg"); }

LionRule::Scalars LionRule::scalars(const Hyper& h, StepContext) {
  return {h.lr, h.beta1, h.beta2, 1.0 - h.lr * h.weight_decay, h.maximize ? -1.0 : 1.0};
}

// ---------------------------------------------------------------- storage

StorageOptions read_storage_options(const GroupReader& group) {
  StorageOptions o;
  o.group_index = group.index();
  // Every key read below; most groups have none of them.
  static const InternedKeys keys{"master_weights", "kahan_sum",  "rounding",      "seed",       "_random_index",
                                 "state_bits",     "block_size", "min_8bit_size", "state_dtype"};
  if (!group.may_have_any(keys)) return o;
  if (group.optional("master_weights")) o.master_weights = group.flag("master_weights");
  if (group.optional("kahan_sum")) o.kahan_sum = group.flag("kahan_sum");
  if (group.optional("rounding")) o.stochastic = group.choice("rounding", {"nearest", "stochastic"}) == "stochastic";
  if (PyObject* seed = group.optional("seed")) {
    if (PyBool_Check(seed) || !PyLong_Check(seed))
      throw py::type_error("seed (param group " + std::to_string(o.group_index) + ") must be an int, got " +
                           type_name(seed));
    o.seed = PyLong_AsUnsignedLongLong(seed);
    if (PyErr_Occurred()) {
      PyErr_Clear();
      group.fail("seed must be an int in [0, 2**64)");
    }
  }
  if (PyObject* value = group.optional("_random_index")) {
    const char* const expected =
        "_random_index must be a list of (position, element offset[, param elements]) of ints >= 0";
    if (!PyList_Check(value) && !PyTuple_Check(value)) group.fail(expected);
    for (py::handle pair : py::reinterpret_borrow<py::sequence>(value)) {
      if (!(PyList_Check(pair.ptr()) || PyTuple_Check(pair.ptr()))) group.fail(expected);
      const auto count = py::len(pair);
      if (count != 2 && count != 3) group.fail(expected);
      const py::sequence items = py::reinterpret_borrow<py::sequence>(pair);
      std::int64_t numbers[3] = {0, 0, 0};
      for (std::size_t k = 0; k < count; ++k) {
        PyObject* item = items[k].ptr();
        if (PyBool_Check(item) || !PyLong_Check(item)) group.fail(expected);
        numbers[k] = PyLong_AsLongLong(item);
        if (numbers[k] < 0) {
          PyErr_Clear();
          group.fail(expected);
        }
      }
      o.random_index.push_back({numbers[0], numbers[1], numbers[2]});
    }
  }
  if (o.master_weights + o.kahan_sum + o.stochastic > 1)
    group.fail("master_weights, kahan_sum and rounding='stochastic' are three answers to the same problem: "
               "choose one");
  if (group.optional("state_bits")) {
    const std::int64_t bits = group.integer("state_bits");
    if (bits != 8 && bits != 16 && bits != 32) group.fail("state_bits must be 8, 16 or 32, got " + std::to_string(bits));
    o.state_bits = static_cast<int>(bits);
  }
  if (group.optional("block_size")) {
    o.block_size = group.integer("block_size");
    if (o.block_size <= 0 || o.block_size % kQuantBlockMultiple != 0 || o.block_size > kMaxQuantBlock)
      group.fail("block_size must be a positive multiple of " + std::to_string(kQuantBlockMultiple) +
                 " (the kernels' SIMD block) up to " + std::to_string(kMaxQuantBlock) + ", got " +
                 std::to_string(o.block_size));
  }
  if (group.optional("min_8bit_size")) {
    o.min_8bit_size = group.integer("min_8bit_size");
    if (o.min_8bit_size < 0) group.fail("min_8bit_size must be an int >= 0, got " + std::to_string(o.min_8bit_size));
  }
  if (PyObject* value = group.optional("state_dtype")) {
    const auto parse = [&group](py::handle name, const std::string& where) {
      Dtype dtype;
      if (!PyUnicode_Check(name.ptr()) || !dtype_from_name(name.cast<std::string>(), &dtype))
        group.fail(where + " must be one of 'float32', 'float64', 'bfloat16', 'float16', got " +
                   py::repr(name).cast<std::string>());
      return dtype;
    };
    if (PyDict_Check(value)) {
      for (auto item : py::reinterpret_borrow<py::dict>(value)) {
        if (!PyUnicode_Check(item.first.ptr())) group.fail("state_dtype's keys must be state keys (str)");
        const std::string key = item.first.cast<std::string>();
        o.state_dtype_per_key.push_back({key, parse(item.second, "state_dtype['" + key + "']")});
      }
    } else {
      o.state_dtype_given = true;
      o.state_dtype_all = parse(value, "state_dtype");
    }
  }
  // 16-bit state is bfloat16 state: one machinery for both spellings.
  if (o.state_bits == 16) {
    if (o.state_dtype_given || !o.state_dtype_per_key.empty())
      group.fail("state_bits=16 is state_dtype='bfloat16': give one of them");
    o.state_dtype_given = true;
    o.state_dtype_all = kBfloat16;
  }
  return o;
}

Dtype StorageOptions::state_dtype(const char* key, Dtype param_dtype) const {
  for (const KeyDtype& entry : state_dtype_per_key)
    if (entry.key == key) return entry.dtype;
  if (state_dtype_given) return state_dtype_all;
  return state_bits == 8 ? kFloat32 : param_dtype;  // an 8-bit group's small tensors keep 32-bit state, as bitsandbytes
}

void StorageOptions::check_keys(const StateArray* arrays, int count) const {
  for (const KeyDtype& entry : state_dtype_per_key) {
    std::string known;
    bool found = false;
    for (int k = 0; k < count; ++k) {
      found = found || entry.key == arrays[k].name;
      known += std::string(k ? ", " : "") + "'" + arrays[k].name + "'";
    }
    if (!found)
      throw py::value_error("state_dtype names '" + entry.key + "', a state array this rule never keeps (param group " +
                            std::to_string(group_index) + "; its state arrays are " + known + ")");
  }
}

void StorageOptions::check_param(Dtype param_dtype, std::size_t group) const {
  const auto check_state = [&](Dtype dtype, const std::string& where) {
    if (compute_of(dtype) != compute_of(param_dtype))
      throw py::value_error(where + " is " + dtype_name(dtype) + ", but param group " + std::to_string(group) +
                            " holds a " + dtype_name(param_dtype) + " param (" +
                            (param_dtype == kFloat64 ? "float64 params keep float64 state"
                                                     : "its state may be float32, bfloat16 or float16") + ")");
  };
  if (state_bits == 8 && param_dtype == kFloat64)
    throw py::value_error("state_bits=8 is for float32, bfloat16 and float16 params, but param group " +
                          std::to_string(group) + " holds a float64 param (its state is float64)");
  if (state_dtype_given) check_state(state_dtype_all, "state_dtype");
  for (const KeyDtype& entry : state_dtype_per_key) check_state(entry.dtype, "state_dtype['" + entry.key + "']");
  if (param_dtype == kBfloat16 || param_dtype == kFloat16) return;
  const char* option = master_weights ? "master_weights" : kahan_sum ? "kahan_sum"
                       : stochastic ? "rounding='stochastic'" : nullptr;
  if (option != nullptr)
    throw py::value_error(std::string(option) + " is for bfloat16 and float16 params, but param group " +
                          std::to_string(group) + " holds a " + dtype_name(param_dtype) + " param");
}

}  // namespace fusedopt
