// AFT family: forward and backward of R[t, c] = sum_t' P[t, t', c] V[t', c] with
// P = exp(z - mx[t, c]) inv[t, c],  z = K[t', c] + w'[g(c), t, t'] over allowed t', where mx is the
// exact max of z and inv = 1 / sum exp(z - mx) (both 0 on a row with no allowed key).  Not
// exp(z - lse) with lse = mx + log(sum): lse's rounding, |lse| ulps (mx ~ 100: 4e-6 relative in
// float32), would enter every P, about 30x the reference's own error on dV in the large regime.
//
// Each thread owns one (batch, row, channel) and streams over the keys with an online maximum: the
// stabiliser is the exact per-(t, c) max of z over allowed keys, so any finite input gives a finite
// result in float32 (keys spread over +-80 under a causal mask included), and memory stays linear
// in B * l * d (no (B, l, l, d) temporary).  Channels are the fastest index, so a warp reads 32
// consecutive channels of one key: coalesced.
//
// w' is (G, l, l) (G = 1, or n_heads for aft_conv; channel c belongs to group c / (d / G)), or
// absent (has_w = 0, aft_simple).  kpm (B, l), True = real key, is read only when has_kpm.
// lq = l, or lq = 1 when no bias and no causal mask make every row the same (aft_simple): the one
// row is computed once and the caller broadcasts (and sums dR over rows for the backward).
#include "sr_math.cuh"

extern "C" __global__ void aft_fwd(
    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const scalar_t* __restrict__ w,
    const bool* __restrict__ kpm, scalar_t* __restrict__ r, scalar_t* __restrict__ mx,
    scalar_t* __restrict__ inv, int B, int lq, int l, int d, int G, int causal, int has_w, int has_kpm) {
  const long long n = (long long)B * lq * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int c = (int)(i % d);
    const long long bt = i / d;
    const int t = (int)(bt % lq);
    const long long b = bt / lq;
    const scalar_t* wrow = w + ((long long)(c / (d / G)) * l + t) * l;
    const int stop = causal ? t + 1 : l;
    bool any = false;
    scalar_t m = sr_lowest(scalar_t(0)), den = 0, num = 0;
    for (int j = 0; j < stop; ++j) {
      if (has_kpm && !kpm[b * l + j]) continue;
      const long long kj = (b * l + j) * d + c;
      any = true;
      sr_add(m, den, num, k[kj] + (has_w ? wrow[j] : scalar_t(0)), 1, v[kj]);
    }
    r[i] = any ? num / den : scalar_t(0);
    mx[i] = any ? m : scalar_t(0);
    inv[i] = any ? scalar_t(1) / den : scalar_t(0);
  }
}

// dV[t', c] = sum_t P dR[t, c];  dK[t', c] = sum_t P (V[t', c] - R[t, c]) dR[t, c].
// One thread per (batch, key t', channel); P <= 1 always (z <= mx, inv <= 1), so nothing overflows.
extern "C" __global__ void aft_bwd_kv(
    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const scalar_t* __restrict__ w,
    const bool* __restrict__ kpm, const scalar_t* __restrict__ r, const scalar_t* __restrict__ mx,
    const scalar_t* __restrict__ inv, const scalar_t* __restrict__ dr, scalar_t* __restrict__ dk,
    scalar_t* __restrict__ dv,
    int B, int lq, int l, int d, int G, int causal, int has_w, int has_kpm) {
  const long long n = (long long)B * l * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int c = (int)(i % d);
    const long long bj = i / d;
    const int j = (int)(bj % l);
    const long long b = bj / l;
    scalar_t sdk = 0, sdv = 0;
    if (!has_kpm || kpm[b * l + j]) {
      const scalar_t kv = k[i], vv = v[i];
      const scalar_t* wcol = w + (long long)(c / (d / G)) * l * l + j;  // w'[g, t, j] at t * l
      for (int t = causal ? j : 0; t < lq; ++t) {
        const long long ti = (b * lq + t) * d + c;
        const scalar_t z = kv + (has_w ? wcol[(long long)t * l] : scalar_t(0));
        const scalar_t pd = sr_exp(z - mx[ti]) * inv[ti] * dr[ti];
        sdv += pd;
        sdk += pd * (vv - r[ti]);
      }
    }
    dk[i] = sdk;
    dv[i] = sdv;
  }
}

// dw'[g, t, t'] = sum over batch and group g's channels of P (V[t', c] - R[t, c]) dR[t, c].
// One thread per (g, t, t'), t' fastest: K and V come transposed, kt/vt (B, d, l), so a warp reads
// consecutive keys (coalesced) while R, mx, inv and dR at (b, t, c) are one address (broadcast).
extern "C" __global__ void aft_bwd_w(
    const scalar_t* __restrict__ kt, const scalar_t* __restrict__ vt, const scalar_t* __restrict__ w,
    const bool* __restrict__ kpm, const scalar_t* __restrict__ r, const scalar_t* __restrict__ mx,
    const scalar_t* __restrict__ inv, const scalar_t* __restrict__ dr, scalar_t* __restrict__ dw,
    int B, int l, int d, int G, int causal, int has_kpm) {
  const long long n = (long long)G * l * l;
  const long long step = (long long)gridDim.x * blockDim.x;
  const int eg = d / G;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int j = (int)(i % l);
    const int t = (int)((i / l) % l);
    const int g = (int)(i / ((long long)l * l));
    scalar_t acc = 0;
    if (!causal || j <= t) {
      const scalar_t wv = w[i];
      for (long long b = 0; b < B; ++b) {
        if (has_kpm && !kpm[b * l + j]) continue;
        for (int c = g * eg; c < (g + 1) * eg; ++c) {
          const long long ti = (b * l + t) * d + c;
          const long long kj = (b * d + c) * l + j;
          acc += sr_exp(kt[kj] + wv - mx[ti]) * inv[ti] * dr[ti] * (vt[kj] - r[ti]);
        }
      }
    }
    dw[i] = acc;
  }
}
