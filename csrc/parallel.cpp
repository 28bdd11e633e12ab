#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#endif

namespace fusedopt {
namespace {

using Clock = std::chrono::steady_clock;

// The count set_num_threads fixed for every Python thread, and the one
// `with fusedopt.threads(n):` fixed for the Python thread that runs the step
// (each is an OS thread, and a step's thread count is read on the calling
// thread before the GIL is released).
std::atomic<int> g_thread_override{0};
thread_local int t_scoped_override = 0;
// Where a second thread starts to pay, measured with benchmarks/serial_cutoff.py
// on a 2-core AVX-512 Xeon (2026-11-25): 280-370 KB moved per step for the
// memory-bound rules (SGD, momentum, Lion), 70-140 KB for those whose
// divisions and square roots dominate in cache (Adam, Adadelta). One cutoff
// between the two costs at most a few microseconds on either side.
std::atomic<std::int64_t> g_serial_cutoff_bytes{256 << 10};
std::atomic<bool> g_forked_child{false};
std::atomic<int> g_last_team_size{0};

// Chunks start on multiples of this many elements, so that two threads
// rarely write to the same cache line.
constexpr std::int64_t kPieceAlignment = 64;

// The concatenation is handed out in chunks, up to this many per thread, so
// that the threads that run take over the share of a thread that starts
// late; each chunk stays long enough (>= 4096 elements where each thread has
// that many, a few microseconds) that claiming it (a compare-and-swap) costs
// nothing. Each thread gets the same whole number of chunks where the cap
// allows it: with a count that does not divide by the threads, one home
// region was a chunk longer than the others, and on an idle machine the step
// waited for that chunk (30,000 elements on 2 threads: 16,384 against 13,616).
constexpr std::int64_t kChunksPerThread = 16;

// Steps that move fewer bytes than this are split in advance, one piece per
// thread, with nothing to claim (StaticSplit; set_chunked_step_bytes). A thread that starts late is
// waited for at the end of the region anyway (OpenMP joins every thread), so
// taking its share over saves only that share's work, tens of microseconds
// in a small step against a wait of milliseconds; and claiming, and reading
// the other threads' regions, made idle steps of 1e5 elements 3-7% slower
// than a split in advance (SGD, Adadelta; 2 threads, Xeon, 2026-12-03). From
// this size on a thread's share is hundreds of microseconds, and the chunks
// pay for themselves on a busy machine.
std::atomic<std::int64_t> g_chunked_step_bytes{std::int64_t{16} << 20};
constexpr std::int64_t kMinChunk = 4096, kMaxChunk = 1 << 16;

std::int64_t chunk_elements(std::int64_t total, int threads) {
  const std::int64_t per_thread = std::clamp(total / (threads * kMinChunk), std::int64_t{1}, kChunksPerThread);
  const std::int64_t count = per_thread * threads;
  const std::int64_t even = (total + count - 1) / count;
  const std::int64_t aligned = (even + kPieceAlignment - 1) / kPieceAlignment * kPieceAlignment;
  return std::clamp(aligned, kPieceAlignment, kMaxChunk);  // an empty step still gets a chunk length
}

// [0, total) handed out chunk by chunk. The chunks are split into one home
// region per thread (contiguous, as a static schedule would give it), which
// its thread claims front to back, half of what is left at each claim (each
// claim starts the kernel over, which costs tens of nanoseconds: an idle
// step makes a few, and the last chunks are single ones that another thread
// can take); a thread whose region is done takes what is left of the next
// ones (see worth_taking). So on an idle machine each thread updates the
// same elements at every step and finds them in its own core's cache (a
// step of a few MB fits in the cores' L2 caches: handing chunks to whoever
// asks first moved them between cores at every step), and a thread that
// starts late still finds its share taken over by the others.
class Chunks {
 public:
  Chunks(std::int64_t total, std::int64_t size, int threads)
      : total_(total), size_(size), regions_(std::clamp(threads, 1, kMaxRegions)) {
    const std::int64_t count = (total + size - 1) / size;
    for (int r = 0; r < regions_; ++r) {
      region_[r].next.store(count * r / regions_, std::memory_order_relaxed);
      region_[r].end = count * (r + 1) / regions_;
      region_[r].started.store(false, std::memory_order_relaxed);
    }
  }

  // Calls piece(lo, hi) for every chunk thread `thread` of the team gets,
  // until none is left, adding the time that took to *work when work is not
  // null. The clock is read twice per call, not per chunk: a read costs
  // about 50 ns in a virtual machine, 1.3 us of a 13 us step at 1e5 elements.
  template <class Piece>
  void claim_all(int thread, int /*team*/, Clock::duration* work, Piece piece) {
    const Clock::time_point begin = work != nullptr ? Clock::now() : Clock::time_point{};
    const int home = thread % regions_;
    region_[home].started.store(true, std::memory_order_relaxed);
    for (int k = 0; k < regions_; ++k) {
      Region& region = region_[(home + k) % regions_];
      for (;;) {
        if (k > 0 && !worth_taking(region)) break;
        std::int64_t first = region.next.load(std::memory_order_relaxed), count = 0;
        do {
          if (first >= region.end) break;
          count = std::max<std::int64_t>(1, (region.end - first) / 2);
        } while (!region.next.compare_exchange_weak(first, first + count, std::memory_order_relaxed));
        if (first >= region.end) break;
        piece(first * size_, std::min(total_, (first + count) * size_));
      }
    }
    if (work != nullptr) *work += Clock::now() - begin;
  }

 private:
  static constexpr int kMaxRegions = 64;  // larger teams share regions
  // A cache line each: every thread claims from its own. No initialisers:
  // the constructor sets the regions in use, not all kMaxRegions lines.
  struct alignas(64) Region {
    std::atomic<std::int64_t> next;
    std::int64_t end;
    std::atomic<bool> started;  // a thread whose home this is has begun to claim it
  };

  // Whether a thread should take the next chunk of another's region. Not
  // the last one of an owner that has started: the owner will soon claim it,
  // and must reach the end of the step anyway, while a chunk taken moves
  // its data to the other core's cache and back at the next step (the
  // threads of an idle step end within a chunk of each other, and took one
  // from each other at most steps). A region whose owner has not started is
  // taken over entirely: that is the thread waiting for a core.
  static bool worth_taking(const Region& region) {
    const std::int64_t next = region.next.load(std::memory_order_relaxed);
    if (next >= region.end) return false;  // read before a claim: a claim takes the line from its owner
    return !region.started.load(std::memory_order_relaxed) || region.end - next >= 2;
  }
  const std::int64_t total_, size_;
  const int regions_;
  Region region_[kMaxRegions];
};

// [0, total) cut in advance into near-equal pieces, one per thread of the
// team as it runs, starting on multiples of kPieceAlignment: each thread
// updates the same elements at every step and claims nothing.
class StaticSplit {
 public:
  explicit StaticSplit(std::int64_t total) : total_(total) {}

  // As Chunks::claim_all: piece(lo, hi) on this thread's piece.
  template <class Piece>
  void claim_all(int thread, int team, Clock::duration* work, Piece piece) const {
    const Clock::time_point begin = work != nullptr ? Clock::now() : Clock::time_point{};
    const std::int64_t lo = start(thread, team), hi = start(thread + 1, team);
    if (lo < hi) piece(lo, hi);
    if (work != nullptr) *work += Clock::now() - begin;
  }

 private:
  std::int64_t start(int thread, int team) const {
    if (thread >= team) return total_;
    const std::int64_t even = total_ / team * thread + std::min<std::int64_t>(thread, total_ % team);
    return even - even % kPieceAlignment;
  }
  const std::int64_t total_;
};

// On a machine with more runnable threads than cores, a thread of the team
// may wait milliseconds for a core, and the caller waits for it at the end of
// the region (OpenMP joins every thread of a team). The chunks already move
// its share to the threads that run; what is left is the wait for it to
// arrive and find nothing to do. The guard measures that wait on the caller;
// a step stalled when the wait cost more than half the caller's own work.
// After two stalled steps in a row it runs the following steps on the
// calling thread until they have worked kBackoff times the time the two
// lost (doubling, up to 2^kMaxDoublings times, while the stalls go on), then
// tries the team again. A try that stalls thus costs at most 1/kBackoff of
// the serial time between tries. One stall alone changes nothing: on a
// virtual machine the host takes a core away for a few milliseconds now and
// then, and reacting to that once cost kBackoff/2 times the stall itself
// (a 2.9 ms stall sent a 1e6-element SGD step to one thread for 29 ms).
class ContentionGuard {
 public:
  bool team_allowed() const { return serial_budget_ns_.load(std::memory_order_relaxed) <= 0; }

  void serial_step_took(Clock::duration elapsed) {
    serial_budget_ns_.fetch_sub(ns(elapsed), std::memory_order_relaxed);
    serial_steps_.fetch_add(1, std::memory_order_relaxed);
  }

  // `work`: the caller's own time in chunks; `waited`: its time waiting for
  // the other threads (for their chunks, or for them to arrive).
  void team_step_took(Clock::duration work, Clock::duration waited) {
    team_steps_.fetch_add(1, std::memory_order_relaxed);
    if (waited <= kStallFloor || waited * 2 <= work) {
      previous_stall_ns_.store(0, std::memory_order_relaxed);
      const int streak = stall_streak_.load(std::memory_order_relaxed);
      if (streak > 0) stall_streak_.store(streak - 1, std::memory_order_relaxed);
      return;
    }
    stalls_.fetch_add(1, std::memory_order_relaxed);
    const std::int64_t previous = previous_stall_ns_.exchange(ns(waited), std::memory_order_relaxed);
    if (previous == 0) return;  // the first of a row: wait for the second
    previous_stall_ns_.store(0, std::memory_order_relaxed);
    const int streak = std::min(stall_streak_.fetch_add(1, std::memory_order_relaxed), kMaxDoublings);
    serial_budget_ns_.store(kBackoff * (previous + ns(waited)) << streak, std::memory_order_relaxed);
  }

  ContentionStats stats() const {
    return {team_steps_.load(), serial_steps_.load(), stalls_.load(), stall_streak_.load(),
            std::max<std::int64_t>(0, serial_budget_ns_.load())};
  }

 private:
  static std::int64_t ns(Clock::duration d) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }
  // Waits shorter than this are a thread waking up, not a stall.
  static constexpr Clock::duration kStallFloor = std::chrono::microseconds(20);
  static constexpr std::int64_t kBackoff = 10;
  static constexpr int kMaxDoublings = 4;

  std::atomic<std::int64_t> serial_budget_ns_{0};
  std::atomic<std::int64_t> previous_stall_ns_{0};  // the wait of the last team step, if it stalled
  std::atomic<int> stall_streak_{0};
  std::atomic<std::int64_t> team_steps_{0}, serial_steps_{0}, stalls_{0};
};

ContentionGuard g_guard;

int checked_thread_count(long count, const std::string& what) {
  if (count < 1 || count > kMaxThreads)
    throw std::invalid_argument(what + " must be a whole number from 1 to " + std::to_string(kMaxThreads) +
                                ", got " + std::to_string(count));
  return static_cast<int>(count);
}

}  // namespace

int thread_override() { return g_thread_override.load(); }

int set_thread_override(int count) {
  if (count != 0) checked_thread_count(count, "the thread count");
  return g_thread_override.exchange(count);
}

int scoped_thread_override() { return t_scoped_override; }

int set_scoped_thread_override(int count) {
  if (count != 0) checked_thread_count(count, "the thread count");
  return std::exchange(t_scoped_override, count);
}

bool thread_count_fixed() { return t_scoped_override > 0 || g_thread_override.load() > 0; }

int num_threads() {
#ifdef _OPENMP
  // libgomp's pool does not survive fork(): a child that enters a parallel
  // region may hang. A forked child runs its steps on one thread.
  if (g_forked_child.load()) return 1;
  if (t_scoped_override > 0) return t_scoped_override;
  const int fixed = g_thread_override.load();
  return fixed > 0 ? fixed : omp_get_max_threads();
#else
  return 1;
#endif
}

ContentionStats contention_stats() { return g_guard.stats(); }

void report_team_step(std::int64_t work_ns, std::int64_t waited_ns) {
  g_guard.team_step_took(std::chrono::nanoseconds(work_ns), std::chrono::nanoseconds(waited_ns));
}

std::int64_t serial_cutoff_bytes() { return g_serial_cutoff_bytes.load(); }

std::int64_t chunked_step_bytes() { return g_chunked_step_bytes.load(); }

std::int64_t set_chunked_step_bytes(std::int64_t bytes) {
  if (bytes < 0) throw std::invalid_argument("the chunked-step size must be >= 0 bytes");
  return g_chunked_step_bytes.exchange(bytes);
}

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
    if (*end != '\0' || count < 1 || count > kMaxThreads)
      throw std::invalid_argument("FUSEDOPT_NUM_THREADS must be a whole number from 1 to " +
                                  std::to_string(kMaxThreads) + ", got '" + std::string(text) + "'");
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

// A piece boundary inside a task, moved up to the next multiple of the task's alignment.
std::int64_t aligned_up(std::int64_t index, const Task& task) {
  const std::int64_t up = (index + task.alignment - 1) / task.alignment * task.alignment;
  return up < task.size ? up : task.size;
}

double combined(Combine combine, double a, double b) {
  if (combine == Combine::kSum) return a + b;
  return (a < b || b != b) ? b : a;  // a NaN on either side wins
}

// How a step runs: on how many threads, and whether the guard judges it (a
// count the user fixed is the count they get; the default adapts).
struct Plan {
  int threads;
  bool guarded;
};

Plan plan_for(std::int64_t bytes) {
  if (bytes < serial_cutoff_bytes()) return {1, false};
  const int threads = num_threads();
  if (threads <= 1) return {1, false};
  const bool guarded = !thread_count_fixed();
  if (guarded && !g_guard.team_allowed()) return {1, true};
  return {threads, guarded};
}

template <class Body>
void run_serial(const Plan& plan, Body body) {
  g_last_team_size = 1;
  if (!plan.guarded) return body();  // no clock: a read is a good part of a tiny step
  const Clock::time_point begin = Clock::now();
  body();
  g_guard.serial_step_took(Clock::now() - begin);
}

// Runs body(thread, team, work) on every thread of a team of plan.threads,
// thread being its number in the team and team the team's size as it runs; `work` points to the caller's chunk time on
// the calling thread, and is null elsewhere.
template <class Body>
void run_team(const Plan& plan, Body body) {
#ifdef _OPENMP
  Clock::duration caller_work{};
  const Clock::time_point begin = plan.guarded ? Clock::now() : Clock::time_point{};
#pragma omp parallel num_threads(plan.threads)
  {
    const int thread = omp_get_thread_num(), team = omp_get_num_threads();
    const bool caller = thread == 0;
    if (caller) g_last_team_size = team;
    body(thread, team, caller && plan.guarded ? &caller_work : nullptr);
  }
  if (plan.guarded) g_guard.team_step_took(caller_work, Clock::now() - begin - caller_work);
#else
  Clock::duration work{};
  body(0, 1, &work);
#endif
}

}  // namespace

std::int64_t run_tasks(const std::vector<Task>& tasks, const FiniteCheck* checks) {
  const std::vector<std::int64_t> start = offsets(tasks);
  const std::int64_t total = start.back();
  const std::int64_t bytes = bytes_moved(tasks);
  const Plan plan = plan_for(bytes);
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
      const Task& task = tasks[k];
      if (task.alignment > 1) {
        // Both ends up to the task's grid (or its end): neighbouring chunks
        // move their shared boundary alike, so every element is still updated once.
        begin = aligned_up(begin, task);
        end = aligned_up(end, task);
        if (begin == end) return;
      }
      task.kernel(task.scalars, task.streams, begin, end);
    });
  };

  if (plan.threads <= 1) {
    std::size_t first_bad = none;
    run_serial(plan, [&] {
      if (checks) first_bad = first_nonfinite(0, total);
      if (first_bad == none) update(0, total);
    });
    return first_bad == none ? -1 : static_cast<std::int64_t>(first_bad);
  }

  std::atomic<std::int64_t> checked{0};      // elements whose check is complete
  std::atomic<std::size_t> first_bad{none};  // the first task holding a NaN or an infinity
  const auto team_step = [&](auto& to_check, auto& to_update) {
    run_team(plan, [&](int thread, int team, Clock::duration* work) {
      if (checks) {
        to_check.claim_all(thread, team, work, [&](std::int64_t lo, std::int64_t hi) {
          const std::size_t found = first_nonfinite(lo, hi);
          std::size_t seen = first_bad.load(std::memory_order_relaxed);
          while (found < seen && !first_bad.compare_exchange_weak(seen, found, std::memory_order_relaxed)) {
          }
          checked.fetch_add(hi - lo, std::memory_order_release);
        });
        // Nobody writes before every element is checked. With chunks this
        // waits only for chunks that running threads are checking: a thread
        // that starts late finds every chunk taken and the verdict known.
        while (checked.load(std::memory_order_acquire) < total) std::this_thread::yield();
      }
      if (first_bad.load(std::memory_order_relaxed) == none) to_update.claim_all(thread, team, work, update);
    });
  };
  if (bytes < chunked_step_bytes()) {
    const StaticSplit split(total);
    team_step(split, split);
  } else {
    const std::int64_t chunk = chunk_elements(total, plan.threads);
    std::optional<Chunks> to_check;
    if (checks) to_check.emplace(total, chunk, plan.threads);
    Chunks to_update(total, chunk, plan.threads);
    team_step(checks ? *to_check : to_update, to_update);  // to_check is not used without checks
  }
  const std::size_t found = first_bad.load();
  return found == none ? -1 : static_cast<std::int64_t>(found);
}

double reduce_blocks(const std::vector<ReduceTask>& tasks, Combine combine) {
  const std::vector<std::int64_t> start = offsets(tasks);
  const std::int64_t total = start.back();
  const std::int64_t block_count = (total + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(static_cast<std::size_t>(block_count), 0.0);

  // 0 is the identity of both: sums, and maxima of absolute values.
  const auto reduce_blocks_in = [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t b = first; b < last; ++b) {
      double acc = 0.0;
      for_each_piece(start, b * kReduceBlock, std::min(total, (b + 1) * kReduceBlock),
                     [&](std::size_t k, std::int64_t begin, std::int64_t end) {
                       const ReduceTask& t = tasks[k];
                       acc = combined(combine, acc, t.kernel(t.scalars, t.data, begin, end));
                     });
      partial[static_cast<std::size_t>(b)] = acc;
    }
  };

  const Plan plan = plan_for(bytes_moved(tasks));
  if (plan.threads <= 1 || block_count <= 1) {
    run_serial(plan, [&] { reduce_blocks_in(0, block_count); });
  } else {
    Chunks blocks(block_count, 1, plan.threads);
    run_team(plan, [&](int thread, int team, Clock::duration* work) {
      blocks.claim_all(thread, team, work, reduce_blocks_in);
    });
  }

  double result = 0.0;
  for (double p : partial) result = combined(combine, result, p);
  return result;
}

}  // namespace fusedopt
