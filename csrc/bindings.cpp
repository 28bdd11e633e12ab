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

// <name>_step, <name>_check_group and <name>_state_keys for one rule.
template <class Rule>
void bind_rule(py::module_& m, const std::string& name, const char* summary) {
  m.def((name + "_step").c_str(), &fusedopt::step<Rule>, "param_groups"_a, "grads"_a, "state"_a,
        (std::string(summary) +
         "\n\nOne step over every param of every group, in one call and one parallel region.\n"
         "grads and state are aligned with the params of all groups in order; a None grad\n"
         "skips its param. Raises TypeError/ValueError before any array is changed.")
            .c_str());
  m.def(
      (name + "_check_group").c_str(),
      [](py::handle group, std::int64_t index) { Rule::read(fusedopt::GroupReader(group, index)); },
      "group"_a, "index"_a = 0, "Validate one param group's hyperparameters.");
  m.def(
      (name + "_state_keys").c_str(),
      [](py::handle group) {
        const auto keys = Rule::state_keys(Rule::read(fusedopt::GroupReader(group, 0)));
        return std::vector<std::string>(keys.names, keys.names + keys.count);
      },
      "group"_a, "The names of the state arrays the rule keeps for a group's params.");
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
                    "num_threads"_a = fusedopt::num_threads(),
                    "forked_child"_a = fusedopt::in_forked_child(),
                    "serial_cutoff_bytes"_a = fusedopt::serial_cutoff_bytes());
  }, "What was built and what was chosen at import.");
}
