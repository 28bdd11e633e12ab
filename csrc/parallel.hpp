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
void run_tasks(const std::vector<Task>& tasks);

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
