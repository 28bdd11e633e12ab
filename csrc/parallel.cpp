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
// Where a second thread starts to pay, measured with benchmarks/serial_cutoff.py
// on a 2-core AVX-512 Xeon (2026-11-25): 280-370 KB moved per step for the
// memory-bound rules (SGD, momentum, Lion), 70-140 KB for those whose
// divisions and square roots dominate in cache (Adam, Adadelta). One cutoff
// between the two costs at most a few microseconds on either side.
std::atomic<std::int64_t> g_serial_cutoff_bytes{256 << 10};
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

namespace {

// Where each task begins in the concatenation of all of them; the last entry
// is the total.
template <class T>
std::vector<std::int64_t> offsets(const std::vector<T>& tasks) {
  std::vector<std::int64_t> start(tasks.size() + 1, 0);
  for (std::size_t k = 0; k < tasks.size(); ++k) start[k + 1] = start[k] + tasks[k].size;
  return start;
}

template <class T>
std::int64_t bytes_moved(const std::vector<T>& tasks) {
  std::int64_t bytes = 0;
  for (const T& task : tasks) bytes += task.size * task.bytes_per_element;
  return bytes;
}

// Calls piece(k, begin, end) for each task k that overlaps [lo, hi) of the
// concatenation, with [begin, end) in the task's own element indices.
template <class Piece>
void for_each_piece(const std::vector<std::int64_t>& start, std::int64_t lo, std::int64_t hi,
                    Piece piece) {
  auto k = static_cast<std::size_t>(std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1);
  for (; k + 1 < start.size() && start[k] < hi; ++k) {
    const std::int64_t begin = std::max(lo, start[k]) - start[k];
    const std::int64_t end = std::min(hi, start[k + 1]) - start[k];
    if (begin < end) piece(k, begin, end);
  }
}

double combined(Combine combine, double a, double b) {
  if (combine == Combine::kSum) return a + b;
  return (a < b || b != b) ? b : a;  // a NaN on either side wins
}

}  // namespace

std::int64_t run_tasks(const std::vector<Task>& tasks, const FiniteCheck* checks) {
  const std::vector<std::int64_t> start = offsets(tasks);
  const std::int64_t total = start.back();
  const int threads = bytes_moved(tasks) < serial_cutoff_bytes() ? 1 : num_threads();
  const std::size_t none = tasks.size();

  const auto first_nonfinite = [&](std::int64_t lo, std::int64_t hi) {
    std::size_t first = none;
    for_each_piece(start, lo, hi, [&](std::size_t k, std::int64_t begin, std::int64_t end) {
      if (first == none && !checks[k](tasks[k].streams[1], begin, end)) first = k;
    });
    return first;
  };
  const auto update = [&](std::int64_t lo, std::int64_t hi) {
    for_each_piece(start, lo, hi, [&](std::size_t k, std::int64_t begin, std::int64_t end) {
      tasks[k].kernel(tasks[k].scalars, tasks[k].streams, begin, end);
    });
  };

  std::size_t first_bad = none;
  if (threads <= 1) {
    g_last_team_size = 1;
    if (checks) first_bad = first_nonfinite(0, total);
    if (first_bad == none) update(0, total);
  } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
      const int count = omp_get_num_threads(), id = omp_get_thread_num();
      if (id == 0) g_last_team_size = count;
      const std::int64_t lo = piece_start(total, count, id), hi = piece_start(total, count, id + 1);
      if (checks) {
        // Each thread checks the elements it would update; all agree on the
        // first bad task before anyone writes.
        const std::size_t mine = first_nonfinite(lo, hi);
#pragma omp critical(fusedopt_first_bad)
        first_bad = std::min(first_bad, mine);
#pragma omp barrier
      }
      if (first_bad == none) update(lo, hi);
    }
#endif
  }
  return first_bad == none ? -1 : static_cast<std::int64_t>(first_bad);
}

double reduce_blocks(const std::vector<ReduceTask>& tasks, Combine combine) {
  const std::vector<std::int64_t> start = offsets(tasks);
  const std::int64_t total = start.back();
  const std::int64_t block_count = (total + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(static_cast<std::size_t>(block_count), 0.0);

  // 0 is the identity of both: sums, and maxima of absolute values.
  const auto reduce_block = [&](std::int64_t b) {
    double acc = 0.0;
    for_each_piece(start, b * kReduceBlock, std::min(total, (b + 1) * kReduceBlock),
                   [&](std::size_t k, std::int64_t begin, std::int64_t end) {
                     const ReduceTask& t = tasks[k];
                     acc = combined(combine, acc, t.kernel(t.scalars, t.data, begin, end));
                   });
    partial[static_cast<std::size_t>(b)] = acc;
  };

  const int threads = bytes_moved(tasks) < serial_cutoff_bytes() ? 1 : num_threads();
  if (threads <= 1 || block_count <= 1) {
    for (std::int64_t b = 0; b < block_count; ++b) reduce_block(b);
  } else {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t b = 0; b < block_count; ++b) reduce_block(b);
#endif
  }

  double result = 0.0;
  for (double p : partial) result = combined(combine, result, p);
  return result;
}

}  // namespace fusedopt
