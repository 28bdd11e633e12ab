// The one loop over arrays: runs a step's kernels over all of its tensors in
// a single OpenMP parallel region, with a serial path for small steps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernel_types.hpp"

namespace fusedopt {

// One tensor's share of a step: a kernel, its scalars and its streams.
struct Task {
  Kernel kernel;
  const void* scalars;
  void* streams[kMaxStreams];
  std::int64_t size;            // elements
  std::int64_t bytes_per_element;  // minimal memory traffic: reads + writes
  // The task's pieces start on multiples of this many of its own elements
  // (the blocks of 8-bit state are never split between threads); 1: anywhere.
  std::int64_t alignment = 1;
};

// Runs every task over all of its elements. The tensors are laid end to end
// and the concatenation is cut into one piece per thread (steps under 16 MB)
// or into chunks that the threads claim (each its own region first, a few
// chunks at a time), so the threads share the work evenly however the sizes
// are spread, and in a chunked step a thread that starts late (waiting for
// a core on a busy machine) finds its share done by the others. Each element is updated by exactly one
// thread with the same arithmetic, so the result is the same for every
// thread count and every split. A task with an alignment gets pieces that
// start on multiples of it (each chunk boundary inside the task moves up to
// the next multiple), so its blocks are never split.
//
// With `checks` (one FiniteCheck per task), each task's gradient (streams[1])
// is checked first, in the same parallel region and chunk by chunk: the
// threads agree on the first task holding a NaN or an infinity once every
// chunk is checked, and they update only if there is none. That costs one
// extra read of the gradients. Returns the index of that task (nothing was
// written), or -1 when the tasks ran.
std::int64_t run_tasks(const std::vector<Task>& tasks, const FiniteCheck* checks = nullptr);

// One array's share of a reduction: kernel(scalars, data, begin, end) gives
// the partial over elements [begin, end) of `data`.
struct ReduceTask {
  ReduceKernel kernel;
  const void* scalars;
  const void* data;
  std::int64_t size;            // elements
  std::int64_t bytes_per_element;
};

enum class Combine { kSum, kMax };  // kMax: NaN if any partial is NaN

// Reduces all the tasks' elements, laid end to end, to one double. The
// concatenation is cut into fixed blocks of kReduceBlock elements; each block
// is reduced on one thread (the threads claim blocks one at a time), piece by piece in order, and the block partials
// are then combined on the calling thread in block order. Since neither the
// blocks nor the order depend on the thread count, neither does the result,
// to the last bit.
constexpr std::int64_t kReduceBlock = 1 << 15;
double reduce_blocks(const std::vector<ReduceTask>& tasks, Combine combine);

// Thread control. The count in force is the one fixed on the calling thread
// (fusedopt.threads(n)), else the one fixed for the process (set_num_threads
// or FUSEDOPT_NUM_THREADS), else OpenMP's (OMP_NUM_THREADS, threadpoolctl, or
// the number of cores). A fixed count is used as it is; OpenMP's is the most
// a step uses: while the machine is too busy for the team (see
// ContentionStats), steps run on the calling thread.
constexpr int kMaxThreads = 4096;    // a count above this is refused (OpenMP overflows its stack)
int num_threads();
int thread_override();               // 0 when the count is not fixed
int set_thread_override(int count);  // 0 unfixes; returns the previous override
int scoped_thread_override();        // the calling thread's own count, 0 when not fixed
int set_scoped_thread_override(int count);  // 0 unfixes; returns the previous one
bool thread_count_fixed();           // on the calling thread, by either
void init_threads();                 // reads FUSEDOPT_NUM_THREADS; installs the fork handler

// What the default thread count did about a busy machine. A team step
// stalled when the caller waited for the other threads (to get a core) more
// than half as long as it worked itself; after two stalls in a row, steps
// run on the calling thread until they have worked 10 times the time lost
// (doubling while the stalls go on), then the team is tried again.
struct ContentionStats {
  std::int64_t team_steps;     // steps that ran on a team, judged by the guard
  std::int64_t serial_steps;   // steps over the cutoff run on the caller because of stalls
  std::int64_t stalls;         // team steps that stalled
  int stall_streak;            // recent stalls, which lengthen the next wait
  std::int64_t serial_budget_ns;  // serial work left before the team is tried again
};
ContentionStats contention_stats();
// Tells the guard about a team step that did not happen, as run_tasks would
// (the caller's own work and its wait for the others): for tests of the
// policy, which real stalls cannot trigger on demand.
void report_team_step(std::int64_t work_ns, std::int64_t waited_ns);

// Steps that move fewer bytes than this run on the calling thread: waking
// the pool costs more than the work (see benchmarks/serial_cutoff.py).
std::int64_t serial_cutoff_bytes();
std::int64_t set_serial_cutoff_bytes(std::int64_t bytes);  // returns the previous value

// Team steps that move fewer bytes than this are split in advance, one piece
// per thread; larger ones are chunked, so that running threads take over a
// late one's share (parallel.cpp says why; tests run both ways).
std::int64_t chunked_step_bytes();
std::int64_t set_chunked_step_bytes(std::int64_t bytes);  // returns the previous value

// The OpenMP runtime library and version, for show_config().
std::string openmp_description();
bool in_forked_child();
int last_team_size();  // threads that ran the most recent step (introspection for tests)

}  // namespace fusedopt
