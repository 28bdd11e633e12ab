#include "dispatch.hpp"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#define FUSEDOPT_X86_64 1
#include <cpuid.h>
#endif

namespace fusedopt {

// Each target's copy of the kernels (kernels.cpp, compiled once per target).
#ifdef FUSEDOPT_HAVE_AVX512BF16
namespace avx512bf16 { extern const KernelTable kernel_table; }
#endif
#ifdef FUSEDOPT_HAVE_AVX512
namespace avx512 { extern const KernelTable kernel_table; }
#endif
#ifdef FUSEDOPT_HAVE_AVX2
namespace avx2 { extern const KernelTable kernel_table; }
#endif
#ifdef FUSEDOPT_HAVE_SSE2
namespace sse2 { extern const KernelTable kernel_table; }
#endif
#ifdef FUSEDOPT_HAVE_NEON
namespace neon { extern const KernelTable kernel_table; }
#endif
#ifdef FUSEDOPT_HAVE_GENERIC
namespace generic { extern const KernelTable kernel_table; }
#endif

namespace {

// What the CPU offers *and* the OS saves on a context switch: an AVX-512
// instruction on a CPU that has it still faults if the OS does not save the
// ZMM registers, which XCR0 tells.
struct CpuFeatures {
  bool sse2 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512vl = false, avx512bw = false, avx512dq = false, avx512_bf16 = false;
  bool os_saves_ymm = false, os_saves_zmm = false;
  bool neon = false;
};

#ifdef FUSEDOPT_X86_64
std::uint64_t read_xcr0() {
  std::uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect_features() {
  CpuFeatures f;
#ifdef FUSEDOPT_X86_64
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    f.sse2 = edx & (1u << 26);
    f.fma = ecx & (1u << 12);
    f.f16c = ecx & (1u << 29);
    f.avx = ecx & (1u << 28);
    if (ecx & (1u << 27)) {  // OSXSAVE: XCR0 can be read
      const std::uint64_t xcr0 = read_xcr0();
      f.os_saves_ymm = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
      f.os_saves_zmm = (xcr0 & 0xE6) == 0xE6;   // and opmask, ZMM0-15 upper halves, ZMM16-31
    }
  }
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    f.avx2 = ebx & (1u << 5);
    f.avx512f = ebx & (1u << 16);
    f.avx512dq = ebx & (1u << 17);
    f.avx512bw = ebx & (1u << 30);
    f.avx512vl = ebx & (1u << 31);
    if (eax >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) f.avx512_bf16 = eax & (1u << 5);
  }
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is mandatory on AArch64
#endif
  return f;
}

const CpuFeatures& cpu() {
  static const CpuFeatures features = detect_features();
  return features;
}

struct Target {
  const char* name;
  const KernelTable* table;
  bool (*runs_here)(const CpuFeatures&);
};

bool avx512_runs(const CpuFeatures& f) {
  return f.avx512f && f.avx512vl && f.avx512bw && f.avx512dq && f.avx2 && f.fma && f.f16c && f.os_saves_zmm;
}

// Every compiled target, widest first.
const std::vector<Target>& compiled() {
  static const std::vector<Target> targets = {
#ifdef FUSEDOPT_HAVE_AVX512BF16
      {"avx512bf16", &avx512bf16::kernel_table, [](const CpuFeatures& f) { return avx512_runs(f) && f.avx512_bf16; }},
#endif
#ifdef FUSEDOPT_HAVE_AVX512
      {"avx512", &avx512::kernel_table, avx512_runs},
#endif
#ifdef FUSEDOPT_HAVE_AVX2
      {"avx2", &avx2::kernel_table,
       [](const CpuFeatures& f) { return f.avx2 && f.fma && f.f16c && f.avx && f.os_saves_ymm; }},
#endif
#ifdef FUSEDOPT_HAVE_SSE2
      {"sse2", &sse2::kernel_table, [](const CpuFeatures& f) { return f.sse2; }},
#endif
#ifdef FUSEDOPT_HAVE_NEON
      {"neon", &neon::kernel_table, [](const CpuFeatures& f) { return f.neon; }},
#endif
#ifdef FUSEDOPT_HAVE_GENERIC
      {"generic", &generic::kernel_table, [](const CpuFeatures&) { return true; }},
#endif
  };
  return targets;
}

std::atomic<const KernelTable*> g_active{nullptr};

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const auto& name : names) text += (text.empty() ? "" : ", ") + name;
  return text;
}

}  // namespace

std::vector<std::string> compiled_targets() {
  std::vector<std::string> names;
  for (const Target& t : compiled()) names.emplace_back(t.name);
  return names;
}

std::vector<std::string> supported_targets() {
  std::vector<std::string> names;
  for (const Target& t : compiled())
    if (t.runs_here(cpu())) names.emplace_back(t.name);
  return names;
}

std::vector<std::string> cpu_flags() {
  const CpuFeatures& f = cpu();
  const std::pair<const char*, bool> all[] = {
      {"sse2", f.sse2},         {"avx", f.avx},           {"avx2", f.avx2},
      {"fma", f.fma},           {"f16c", f.f16c},         {"avx512f", f.avx512f},
      {"avx512vl", f.avx512vl}, {"avx512bw", f.avx512bw}, {"avx512dq", f.avx512dq},
      {"avx512_bf16", f.avx512_bf16},
      {"os_saves_ymm", f.os_saves_ymm}, {"os_saves_zmm", f.os_saves_zmm}, {"neon", f.neon}};
  std::vector<std::string> names;
  for (const auto& [name, present] : all)
    if (present) names.emplace_back(name);
  return names;
}

std::string cpu_name() {
#ifdef FUSEDOPT_X86_64
  unsigned regs[12] = {};
  if (__get_cpuid_max(0x80000000, nullptr) >= 0x80000004) {
    for (unsigned k = 0; k < 3; ++k)
      __get_cpuid(0x80000002 + k, &regs[4 * k], &regs[4 * k + 1], &regs[4 * k + 2], &regs[4 * k + 3]);
    char brand[49] = {};
    std::memcpy(brand, regs, 48);
    std::string name(brand);
    const auto first = name.find_first_not_of(' '), last = name.find_last_not_of(' ');
    return first == std::string::npos ? "x86-64" : name.substr(first, last - first + 1);
  }
  return "x86-64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

void select_target(const std::string& name) {
  for (const Target& t : compiled()) {
    if (name != t.name) continue;
    if (!t.runs_here(cpu()))
      throw std::runtime_error("FUSEDOPT_ISA=" + name + ": this CPU cannot run the " + name +
                               " kernels; available here: " + joined(supported_targets()));
    g_active = t.table;
    return;
  }
  throw std::runtime_error("FUSEDOPT_ISA=" + name + ": this build has no such target; compiled: " +
                           joined(compiled_targets()) + "; available here: " +
                           joined(supported_targets()));
}

void init_dispatch() {
  const char* forced = std::getenv("FUSEDOPT_ISA");
  if (forced != nullptr && *forced != '\0') return select_target(forced);
  const auto runnable = supported_targets();
  if (runnable.empty()) throw std::runtime_error("fusedopt: no compiled SIMD target runs on this CPU");
  select_target(runnable.front());
}

const KernelTable& active_kernels() { return *g_active.load(std::memory_order_relaxed); }

}  // namespace fusedopt
