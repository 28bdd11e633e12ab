// The one place that knows SIMD targets exist: which were compiled, which
// the CPU (and its OS) can run, and which one the kernels run on.
#pragma once

#include <string>
#include <vector>

#include "kernel_types.hpp"

namespace fusedopt {

// The kernels of the chosen target.
const KernelTable& active_kernels();

// Chooses the target at import: FUSEDOPT_ISA if set, else the widest one the
// CPU supports. Throws std::runtime_error naming the available targets when
// FUSEDOPT_ISA asks for one this build or this CPU lacks.
void init_dispatch();

// Switches to a named target (used by init_dispatch and by the tests, which
// run every supported target in one process). Throws like init_dispatch.
void select_target(const std::string& name);

std::vector<std::string> compiled_targets();   // widest first
std::vector<std::string> supported_targets();  // compiled and runnable here, widest first
std::vector<std::string> cpu_flags();          // what CPUID and XCR0 report, e.g. "avx512f"
std::string cpu_name();

}  // namespace fusedopt
