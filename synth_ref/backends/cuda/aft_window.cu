// AFT-local and 1-D AFT-conv through the windowed identity: w' = 0 outside a band of keys
// [t - a, t + r] around each query t, so the keys outside the band enter every row with the same
// weight exp(K).  Their contribution is a prefix (keys before the band) and a suffix (keys after it)
// of running sums, computed once per (batch, channel) by a scan; the band is summed directly.
// Work O(B l d (a + r + 1)) instead of O(B l^2 d), memory linear in B l d.
//
// Exactness: every partial sum is kept as (max, sum of exp(z - max), sum of exp(z - max) V) and
// partial sums are merged by rescaling to the larger max, never by subtracting: the stabiliser is
// the exact per-(t, c) maximum, as in aft.cu, so float32 stays finite for any finite input, causal
// included.  In the backward the terms outside the band are V[t'] S1 - S2 (sums over rows); that
// difference is the one place a cancellation can cost float32 digits when V[t'] is close to R.
//
// w' on the band: table[g*sg + t*st + t'*sk + base] (see cupy_impl/position.py, Band).
// Scan states are (3, B, l + 1, d) arrays: [0] max, [1] sum, [2] second sum.
#include "sr_math.cuh"

SR_DEV scalar_t sr_band_w(const scalar_t* table, long long sg, long long st, long long sk, long long base,
                          int g, int t, int j) {
  return table[g * sg + t * st + j * sk + base];
}

// Per (batch, channel): pre[i] = the keys [0, i), suf[i] = the keys [i, l) (suf only without a
// causal mask), each as (max K, sum exp(K - max), sum exp(K - max) V) over real keys.
extern "C" __global__ void aftw_scan_fwd(
    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const bool* __restrict__ kpm,
    scalar_t* __restrict__ pre, scalar_t* __restrict__ suf, int B, int l, int d, int causal, int has_kpm) {
  const long long n = (long long)B * d;
  const long long plane = (long long)B * (l + 1) * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int c = (int)(i % d);
    const long long b = i / d;
    scalar_t m = sr_lowest(scalar_t(0)), s1 = 0, s2 = 0;
    for (int j = 0; j <= l; ++j) {
      const long long at = (b * (l + 1) + j) * d + c;
      pre[at] = m; pre[plane + at] = s1; pre[2 * plane + at] = s2;
      if (j < l && (!has_kpm || kpm[b * l + j])) sr_add(m, s1, s2, k[(b * l + j) * d + c], 1, v[(b * l + j) * d + c]);
    }
    if (causal) continue;
    m = sr_lowest(scalar_t(0)); s1 = 0; s2 = 0;
    for (int j = l; j >= 0; --j) {
      if (j < l && (!has_kpm || kpm[b * l + j])) sr_add(m, s1, s2, k[(b * l + j) * d + c], 1, v[(b * l + j) * d + c]);
      const long long at = (b * (l + 1) + j) * d + c;
      suf[at] = m; suf[plane + at] = s1; suf[2 * plane + at] = s2;
    }
  }
}

// Per (batch, row t, channel): R, and mx and inv as in aft.cu, from the prefix before the band,
// the band itself and (without a causal mask) the suffix after it.
extern "C" __global__ void aftw_fwd(
    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const scalar_t* __restrict__ table,
    const bool* __restrict__ kpm, const scalar_t* __restrict__ pre, const scalar_t* __restrict__ suf,
    scalar_t* __restrict__ r, scalar_t* __restrict__ mx, scalar_t* __restrict__ inv, int B, int l, int d,
    int G, int causal, int has_kpm, long long sg, long long st, long long sk, long long base, int a,
    int rr) {
  const long long n = (long long)B * l * d;
  const long long plane = (long long)B * (l + 1) * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int c = (int)(i % d);
    const long long bt = i / d;
    const int t = (int)(bt % l);
    const long long b = bt / l;
    const int g = c / (d / G);
    const int lo = t - a > 0 ? t - a : 0;
    const int hi_band = causal ? t : t + rr;
    const int hi = hi_band < l - 1 ? hi_band : l - 1;
    const long long at = (b * (l + 1) + lo) * d + c;
    scalar_t m = pre[at], den = pre[plane + at], num = pre[2 * plane + at];
    for (int j = lo; j <= hi; ++j) {
      if (has_kpm && !kpm[b * l + j]) continue;
      const long long kj = (b * l + j) * d + c;
      sr_add(m, den, num, k[kj] + sr_band_w(table, sg, st, sk, base, g, t, j), 1, v[kj]);
    }
    if (!causal) {
      const long long as = (b * (l + 1) + hi + 1) * d + c;
      sr_merge(m, den, num, suf[as], suf[plane + as], suf[2 * plane + as]);
    }
    r[i] = den > 0 ? num / den : scalar_t(0);
    mx[i] = den > 0 ? m : scalar_t(0);
    inv[i] = den > 0 ? scalar_t(1) / den : scalar_t(0);
  }
}

// Per (batch, channel), over query rows t: bpre[i] = the rows [0, i), bsuf[i] = the rows [i, l),
// each as (max of -mx, sum exp(-mx - max) inv dR, sum exp(-mx - max) inv dR R) over rows with an
// allowed key (an empty row has inv = 0 and sees no key).  bpre only without a causal mask (under
// one a key is never seen by rows before it).
extern "C" __global__ void aftw_scan_bwd(
    const scalar_t* __restrict__ r, const scalar_t* __restrict__ mx, const scalar_t* __restrict__ inv,
    const scalar_t* __restrict__ dr, scalar_t* __restrict__ bpre, scalar_t* __restrict__ bsuf, int B,
    int l, int d, int causal) {
  const long long n = (long long)B * d;
  const long long plane = (long long)B * (l + 1) * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int c = (int)(i % d);
    const long long b = i / d;
    scalar_t m = sr_lowest(scalar_t(0)), s1 = 0, s2 = 0;
    for (int t = l; t >= 0; --t) {
      if (t < l) {
        const long long ti = (b * l + t) * d + c;
        if (inv[ti] > 0) sr_add(m, s1, s2, -mx[ti], inv[ti] * dr[ti], inv[ti] * dr[ti] * r[ti]);
      }
      const long long at = (b * (l + 1) + t) * d + c;
      bsuf[at] = m; bsuf[plane + at] = s1; bsuf[2 * plane + at] = s2;
    }
    if (causal) continue;
    m = sr_lowest(scalar_t(0)); s1 = 0; s2 = 0;
    for (int t = 0; t <= l; ++t) {
      const long long at = (b * (l + 1) + t) * d + c;
      bpre[at] = m; bpre[plane + at] = s1; bpre[2 * plane + at] = s2;
      if (t < l) {
        const long long ti = (b * l + t) * d + c;
        if (inv[ti] > 0) sr_add(m, s1, s2, -mx[ti], inv[ti] * dr[ti], inv[ti] * dr[ti] * r[ti]);
      }
    }
  }
}

// Per (batch, key j, channel): dV and dK.  Rows whose band holds j are summed directly; the other
// rows see j with weight exp(K[j] - mx[t]) inv[t] and come from the row scans: exp(K[j] + max)
// (S1, S2), with exp(K[j] + max) <= 1 (K[j] <= mx[t]: the band's w' is 0 outside).
extern "C" __global__ void aftw_bwd_kv(
    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const scalar_t* __restrict__ table,
    const bool* __restrict__ kpm, const scalar_t* __restrict__ r, const scalar_t* __restrict__ mx,
    const scalar_t* __restrict__ inv, const scalar_t* __restrict__ dr, const scalar_t* __restrict__ bpre,
    const scalar_t* __restrict__ bsuf,
    scalar_t* __restrict__ dk, scalar_t* __restrict__ dv, int B, int l, int d, int G, int causal,
    int has_kpm, long long sg, long long st, long long sk, long long base, int a, int rr) {
  const long long n = (long long)B * l * d;
  const long long plane = (long long)B * (l + 1) * d;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int c = (int)(i % d);
    const long long bj = i / d;
    const int j = (int)(bj % l);
    const long long b = bj / l;
    scalar_t sdk = 0, sdv = 0;
    if (!has_kpm || kpm[b * l + j]) {
      const int g = c / (d / G);
      const scalar_t kv = k[i], vv = v[i];
      const int tlo0 = causal ? j : j - rr;
      const int tlo = tlo0 > 0 ? tlo0 : 0;
      const int thi = j + a < l - 1 ? j + a : l - 1;
      for (int t = tlo; t <= thi; ++t) {  // rows whose band holds key j
        const long long ti = (b * l + t) * d + c;
        const scalar_t pd = sr_exp(kv + sr_band_w(table, sg, st, sk, base, g, t, j) - mx[ti]) * inv[ti] * dr[ti];
        sdv += pd;
        sdk += pd * (vv - r[ti]);
      }
      const long long as = (b * (l + 1) + thi + 1) * d + c;  // rows after the band: t > j + a
      scalar_t f = sr_exp(kv + bsuf[as]);
      sdv += f * bsuf[plane + as];
      sdk += f * (vv * bsuf[plane + as] - bsuf[2 * plane + as]);
      if (!causal) {  // rows before the band: t < j - rr
        const long long ap = (b * (l + 1) + tlo) * d + c;
        f = sr_exp(kv + bpre[ap]);
        sdv += f * bpre[plane + ap];
        sdk += f * (vv * bpre[plane + ap] - bpre[2 * plane + ap]);
      }
    }
    dk[i] = sdk;
    dv[i] = sdv;
  }
}

// Per (group g, row t, band slot s): the gradient of w'[g, t, t - a + s], summed over the batch and
// the group's channels; 0 where that key does not exist or is not allowed.
extern "C" __global__ void aftw_bwd_w(
    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v, const scalar_t* __restrict__ table,
    const bool* __restrict__ kpm, const scalar_t* __restrict__ r, const scalar_t* __restrict__ mx,
    const scalar_t* __restrict__ inv, const scalar_t* __restrict__ dr, scalar_t* __restrict__ dband, int B,
    int l, int d, int G, int causal,
    int has_kpm, long long sg, long long st, long long sk, long long base, int a, int rr) {
  const int width = a + rr + 1;
  const long long n = (long long)G * l * width;
  const long long step = (long long)gridDim.x * blockDim.x;
  const int eg = d / G;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
    const int s = (int)(i % width);
    const int t = (int)((i / width) % l);
    const int g = (int)(i / ((long long)width * l));
    const int j = t - a + s;
    scalar_t acc = 0;
    if (j >= 0 && j < l && (!causal || j <= t)) {
      const scalar_t wv = sr_band_w(table, sg, st, sk, base, g, t, j);
      for (long long b = 0; b < B; ++b) {
        if (has_kpm && !kpm[b * l + j]) continue;
        for (int c = g * eg; c < (g + 1) * eg; ++c) {
          const long long ti = (b * l + t) * d + c, kj = (b * l + j) * d + c;
          acc += sr_exp(k[kj] + wv - mx[ti]) * inv[ti] * dr[ti] * (v[kj] - r[ti]);
        }
      }
    }
    dband[i] = acc;
  }
}
