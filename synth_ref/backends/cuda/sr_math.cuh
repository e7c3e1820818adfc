// Small helpers shared by the kernels: overloads so one source serves float and double.
// The sources compile with nvcc/NVRTC (device code) and, for the CPU emulation in the tests, with a
// host C++ compiler; so they use no CUDA-only intrinsics beyond threadIdx/blockIdx/__syncthreads.
#pragma once

#ifndef scalar_t
#error "compile with -Dscalar_t=float or -Dscalar_t=double (float16 is computed in float32)"
#endif

#if defined(__CUDACC__)
#define SR_DEV __device__ __forceinline__
#else
#define SR_DEV inline
#endif

SR_DEV float sr_exp(float x) { return expf(x); }
SR_DEV double sr_exp(double x) { return exp(x); }
SR_DEV float sr_log(float x) { return logf(x); }
SR_DEV double sr_log(double x) { return log(x); }
// The most negative finite value: a "no key yet" maximum that never produces inf - inf.
SR_DEV float sr_lowest(float) { return -3.402823466e38f; }
SR_DEV double sr_lowest(double) { return -1.7976931348623157e308; }
SR_DEV scalar_t sr_max(scalar_t a, scalar_t b) { return a > b ? a : b; }
