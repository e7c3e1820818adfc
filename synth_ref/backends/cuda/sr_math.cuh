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

// Online sums with an exact running maximum (aft.cu, aft_window.cu): a state (m, s1, s2) holds
// sum exp(z - m) x1 and sum exp(z - m) x2 over the terms so far, m their largest z (sr_lowest when
// empty: the first term then rescales zeros by exp(lowest - z) = 0).  Rescaling goes to the larger
// maximum, so no exp overflows and nothing is subtracted.

// One term exp(z) * (x1, x2).
SR_DEV void sr_add(scalar_t& m, scalar_t& s1, scalar_t& s2, scalar_t z, scalar_t x1, scalar_t x2) {
  if (z > m) {
    const scalar_t sc = sr_exp(m - z);
    s1 = s1 * sc + x1; s2 = s2 * sc + x2; m = z;
  } else {
    const scalar_t e = sr_exp(z - m);
    s1 += e * x1; s2 += e * x2;
  }
}

// Another state (m2, t1, t2).
SR_DEV void sr_merge(scalar_t& m, scalar_t& s1, scalar_t& s2, scalar_t m2, scalar_t t1, scalar_t t2) {
  if (m2 > m) {
    const scalar_t sc = sr_exp(m - m2);
    s1 = s1 * sc + t1; s2 = s2 * sc + t2; m = m2;
  } else {
    const scalar_t sc = sr_exp(m2 - m);
    s1 += t1 * sc; s2 += t2 * sc;
  }
}
