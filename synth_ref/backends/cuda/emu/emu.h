// A tiny CPU emulation of the CUDA execution model, enough to run the adapter's kernels on the host
// for tests: threadIdx/blockIdx/blockDim/gridDim, __shared__ (one block runs at a time, so a static
// local is that block's shared memory), __syncthreads (a barrier over the block's host threads).
// Kernels that never synchronise run their threads one after another; kernels that do get one host
// thread per CUDA thread.  What this cannot show: races between warps that real hardware would
// interleave differently, memory coalescing, speed.
#pragma once
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

struct emu_uint3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local emu_uint3 threadIdx, blockIdx;
inline emu_uint3 blockDim, gridDim;
inline std::barrier<>* emu_block_barrier = nullptr;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() emu_block_barrier->arrive_and_wait()

// Converts to whatever pointer type the kernel's parameter has (launchers pass void*).
struct emu_ptr {
  void* p;
  template <class T> operator T*() const { return static_cast<T*>(p); }
};

template <class F>
void emu_launch(unsigned grid, unsigned block, bool cooperative, F kernel) {
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  if (!cooperative) {
    for (unsigned b = 0; b < grid; ++b)
      for (unsigned t = 0; t < block; ++t) {
        blockIdx = {b, 0, 0};
        threadIdx = {t, 0, 0};
        kernel();
      }
    return;
  }
  // One host thread per CUDA thread, reused for every block; the barrier after each block keeps
  // blocks apart, so the static "shared" memory always belongs to exactly one block.
  std::barrier<> bar(block);
  emu_block_barrier = &bar;
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t)
    threads.emplace_back([&, t] {
      for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        threadIdx = {t, 0, 0};
        kernel();
        bar.arrive_and_wait();
      }
    });
  for (auto& th : threads) th.join();
  emu_block_barrier = nullptr;
}
