// fusedopt._core: the Python face of the kernels. Thin on purpose: the
// checks and the loop over arrays are in step.cpp, the math in kernels.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "dispatch.hpp"
#include "parallel.hpp"
#include "rules.hpp"
#include "step.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// <name>_step, <name>_check_group, <name>_state_keys and <name>_state_spec for one rule.
template <class Rule>
void bind_rule(py::module_& m, const std::string& name, const char* summary) {
  m.def((name + "_step").c_str(), &fusedopt::step<Rule>, "param_groups"_a, "grads"_a, "state"_a,
        "check_finite"_a = false,
        (std::string(summary) +
         "\n\nOne step over every param of every group, in one call and one parallel region.\n"
         "grads and state are aligned with the params of all groups in order; a None grad\n"
         "skips its param. Raises TypeError/ValueError before any array is changed.\n"
         "With check_finite, a step whose grads hold a NaN or an infinity changes nothing\n"
         "and returns the index of the first such grad; otherwise returns None.")
            .c_str());
  m.def(
      (name + "_check_group").c_str(),
      [](py::handle group, std::int64_t index) { Rule::read(fusedopt::GroupReader(group, index)); },
      "group"_a, "index"_a = 0, "Validate one param group's hyperparameters.");
  m.def(
      (name + "_state_keys").c_str(),
      [](py::handle group) {
        const auto keys = Rule::state_keys(Rule::read(fusedopt::GroupReader(group, 0)));
        std::vector<std::string> names;
        for (int k = 0; k < keys.array_count; ++k) names.emplace_back(keys.arrays[k].name);
        return names;
      },
      "group"_a, "The names of the state arrays the rule keeps for a group's params.");
  m.def(
      (name + "_state_spec").c_str(),
      [](py::handle group) {
        const auto keys = Rule::state_keys(Rule::read(fusedopt::GroupReader(group, 0)));
        py::dict arrays, scalars;
        for (int k = 0; k < keys.array_count; ++k) arrays[keys.arrays[k].name] = keys.arrays[k].initial;
        for (int k = 0; k < keys.scalar_count; ++k) scalars[keys.scalars[k].name] = keys.scalars[k].initial;
        return py::make_tuple(arrays, scalars);
      },
      "group"_a,
      "The state the rule keeps per param besides 'step', with initial values:\n"
      "({array key: initial element value}, {scalar key: initial value}).");
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

  bind_rule<fusedopt::MomentumRule>(m, "momentum", "Heavy-ball momentum (the course's form).");
  bind_rule<fusedopt::SgdRule>(m, "sgd", "SGD as torch.optim.SGD.");
  bind_rule<fusedopt::AdadeltaRule>(m, "adadelta", "Adadelta (Zeiler's, or the course's variant).");
  bind_rule<fusedopt::AdamRule>(m, "adam", "Adam / AdamW / AMSGrad as torch.optim.Adam.");
  bind_rule<fusedopt::RmspropRule>(m, "rmsprop", "RMSprop as torch.optim.RMSprop.");
  bind_rule<fusedopt::AdagradRule>(m, "adagrad", "Adagrad as torch.optim.Adagrad.");
  bind_rule<fusedopt::NadamRule>(m, "nadam", "NAdam as torch.optim.NAdam.");
  bind_rule<fusedopt::RadamRule>(m, "radam", "RAdam as torch.optim.RAdam.");
  bind_rule<fusedopt::AdamaxRule>(m, "adamax", "Adamax as torch.optim.Adamax.");
  bind_rule<fusedopt::LionRule>(m, "lion", "Lion (Chen et al. 2023).");
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
  m.def("roof", &fusedopt::roof, "tensors"_a,
        "Memory roof: for each [a_1, ..., a_k, b], a_i += b in place (benchmarks only).");

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
  m.def("last_team_size", &fusedopt::last_team_size,
        "How many threads ran the most recent step (1 on the serial path).");
  m.def("serial_cutoff_bytes", &fusedopt::serial_cutoff_bytes);
  m.def("set_serial_cutoff_bytes", &fusedopt::set_serial_cutoff_bytes, "bytes"_a,
        "Steps moving fewer bytes run on one thread; returns the previous cutoff.");
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
