#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#endif

namespace fusedopt {
namespace {

std::atomic<int> g_thread_override{0};
std::atomic<std::int64_t> g_serial_cutoff_bytes{1 << 20};  // set from measurement
std::atomic<bool> g_forked_child{false};
std::atomic<int> g_last_team_size{0};

// Thread pieces start on multiples of this many elements, so that two
// threads rarely write to the same cache line.
constexpr std::int64_t kPieceAlignment = 64;

// Where thread `i` of `count` starts in [0, total).
std::int64_t piece_start(std::int64_t total, int count, int i) {
  if (i >= count) return total;
  const auto exact = static_cast<std::int64_t>(static_cast<long double>(total) * i / count);
  return std::min(total, exact - exact % kPieceAlignment);
}

void run_serially(const std::vector<Task>& tasks) {
  for (const Task& task : tasks)
    if (task.size > 0) task.kernel(task.scalars, task.streams, 0, task.size);
}

}  // namespace

int thread_override() { return g_thread_override.load(); }

int set_thread_override(int count) {
  if (count < 0) throw std::invalid_argument("the thread count must be >= 1");
  return g_thread_override.exchange(count);
}

int num_threads() {
#ifdef _OPENMP
  // libgomp's pool does not survive fork(): a child that enters a parallel
  // region may hang. A forked child runs its steps on one thread.
  if (g_forked_child.load()) return 1;
  const int fixed = g_thread_override.load();
  return fixed > 0 ? fixed : omp_get_max_threads();
#else
  return 1;
#endif
}

std::int64_t serial_cutoff_bytes() { return g_serial_cutoff_bytes.load(); }

std::int64_t set_serial_cutoff_bytes(std::int64_t bytes) {
  if (bytes < 0) throw std::invalid_argument("the serial cutoff must be >= 0 bytes");
  return g_serial_cutoff_bytes.exchange(bytes);
}

bool in_forked_child() { return g_forked_child.load(); }

int last_team_size() { return g_last_team_size.load(); }

void init_threads() {
  if (const char* text = std::getenv("FUSEDOPT_NUM_THREADS"); text != nullptr && *text != '\0') {
    char* end = nullptr;
    const long count = std::strtol(text, &end, 10);
    if (*end != '\0' || count < 1 || count > 4096)
      throw std::invalid_argument("FUSEDOPT_NUM_THREADS must be a whole number >= 1, got '" +
                                  std::string(text) + "'");
    g_thread_override = static_cast<int>(count);
  }
#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__))
  pthread_atfork(nullptr, nullptr, [] { g_forked_child = true; });
#endif
}

std::string openmp_description() {
#ifdef _OPENMP
  // The specification version the compiler implements, from its _OPENMP date.
  const char* version = _OPENMP >= 202111 ? "5.2" : _OPENMP >= 202011 ? "5.1"
                      : _OPENMP >= 201811 ? "5.0" : _OPENMP >= 201511 ? "4.5" : "< 4.5";
  std::string runtime = "unknown runtime";
#if defined(__unix__) || defined(__APPLE__)
  // The library that actually answers omp_get_max_threads (libgomp, libomp, ...).
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&omp_get_max_threads), &info) != 0 && info.dli_fname)
    runtime = info.dli_fname;
#endif
  return runtime + " (OpenMP " + version + ", _OPENMP " + std::to_string(_OPENMP) + ")";
#else
  return "none (built without OpenMP: serial)";
#endif
}

void run_tasks(const std::vector<Task>& tasks) {
  std::int64_t total = 0, bytes = 0;
  for (const Task& task : tasks) {
    total += task.size;
    bytes += task.size * task.bytes_per_element;
  }
  const int threads = bytes < serial_cutoff_bytes() ? 1 : num_threads();
  if (threads <= 1) {
    g_last_team_size = 1;
    return run_serially(tasks);
  }

#ifdef _OPENMP
  // start[k] is where task k begins in the concatenation of all tasks.
  std::vector<std::int64_t> start(tasks.size() + 1, 0);
  for (std::size_t k = 0; k < tasks.size(); ++k) start[k + 1] = start[k] + tasks[k].size;

#pragma omp parallel num_threads(threads)
  {
    const int count = omp_get_num_threads(), id = omp_get_thread_num();
    if (id == 0) g_last_team_size = count;
    const std::int64_t lo = piece_start(total, count, id), hi = piece_start(total, count, id + 1);
    // The first task that ends after lo, then every task that starts before hi.
    auto k = static_cast<std::size_t>(std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1);
    for (; k < tasks.size() && start[k] < hi; ++k) {
      const std::int64_t begin = std::max(lo, start[k]) - start[k];
      const std::int64_t end = std::min(hi, start[k + 1]) - start[k];
      if (begin < end) tasks[k].kernel(tasks[k].scalars, tasks[k].streams, begin, end);
    }
  }
#endif
}

}  // namespace fusedopt
