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
};

// Runs every task over all of its elements. The tensors are laid end to end
// and the concatenation is cut into one contiguous piece per thread, so the
// threads share the work evenly however the sizes are spread; each element
// is updated by exactly one thread with the same arithmetic, so the result
// is the same for every thread count.
//
// With `checks` (one FiniteCheck per task), each task's gradient (streams[1])
// is checked first, in the same parallel region: every thread checks the
// elements it would update, the threads agree on the first task holding a
// NaN or an infinity, and they update only if there is none. That costs one
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
// is reduced on one thread, piece by piece in order, and the block partials
// are then combined on the calling thread in block order. Since neither the
// blocks nor the order depend on the thread count, neither does the result,
// to the last bit.
constexpr std::int64_t kReduceBlock = 1 << 15;
double reduce_blocks(const std::vector<ReduceTask>& tasks, Combine combine);

// Thread control. The count in force is the one fixed by set_num_threads or
// FUSEDOPT_NUM_THREADS, else OpenMP's (OMP_NUM_THREADS, threadpoolctl, or
// the number of cores).
int num_threads();
int thread_override();               // 0 when the count is not fixed
int set_thread_override(int count);  // 0 unfixes; returns the previous override
void init_threads();                 // reads FUSEDOPT_NUM_THREADS; installs the fork handler

// Steps that move fewer bytes than this run on the calling thread: waking
// the pool costs more than the work (see benchmarks/serial_cutoff.py).
std::int64_t serial_cutoff_bytes();
std::int64_t set_serial_cutoff_bytes(std::int64_t bytes);  // returns the previous value

// The OpenMP runtime library and version, for show_config().
std::string openmp_description();
bool in_forked_child();
int last_team_size();  // threads that ran the most recent step (introspection for tests)

}  // namespace fusedopt
