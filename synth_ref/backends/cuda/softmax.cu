// Softmax family: the masked row softmax (forward) and its Jacobian-vector product (backward).
//
// The masks are computed from indices, never read from an (l, l) array: a causal flag and an
// optional key padding mask kpm (B, l), True = real key.  A row with no allowed key gives P = 0.
// Layout: logits s (B or 1, H, l, l) row-major; s_batch_stride = 0 shares one batch of logits
// (the random synthesizers) among all batch elements.
#include "sr_math.cuh"

#ifndef SR_SOFTMAX_THREADS
#define SR_SOFTMAX_THREADS 256  // threads per row; a power of two; the launch must use exactly this
#endif

// One block per row.  Three passes over the row (max, sum, write); the row stays in L1/L2 between
// them.  Replaces where/max/where/exp/sum/divide, six passes over (B, H, l, l), with one read and
// one write.
extern "C" __global__ void masked_softmax_fwd(
    const scalar_t* __restrict__ s, scalar_t* __restrict__ p, const bool* __restrict__ kpm,
    long long rows_per_batch, int l, long long s_batch_stride, int causal, int has_kpm) {
  __shared__ scalar_t red[SR_SOFTMAX_THREADS];
  const long long row = blockIdx.x;  // b * rows_per_batch + head * l + t
  const long long b = row / rows_per_batch;
  const long long within = row % rows_per_batch;
  const int t = (int)(within % l);
  const scalar_t* srow = s + b * s_batch_stride + within * l;
  scalar_t* prow = p + row * l;
  const bool* keys = kpm + b * l;
  const int tid = threadIdx.x;
  const int stop = causal ? t + 1 : l;

  scalar_t m = sr_lowest(scalar_t(0));
  for (int j = tid; j < stop; j += SR_SOFTMAX_THREADS)
    if (!has_kpm || keys[j]) m = sr_max(m, srow[j]);
  red[tid] = m;
  __syncthreads();
  for (int w = SR_SOFTMAX_THREADS / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] = sr_max(red[tid], red[tid + w]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();  // everyone has read red[0] before it is reused

  scalar_t sum = 0;
  for (int j = tid; j < stop; j += SR_SOFTMAX_THREADS)
    if (!has_kpm || keys[j]) sum += sr_exp(srow[j] - m);
  red[tid] = sum;
  __syncthreads();
  for (int w = SR_SOFTMAX_THREADS / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] += red[tid + w];
    __syncthreads();
  }
  sum = red[0];
  // sum >= 1 when any key is allowed (the max contributes exp(0)); 0 means the row is empty.
  const scalar_t inv = sum > 0 ? scalar_t(1) / sum : scalar_t(0);
  for (int j = tid; j < l; j += SR_SOFTMAX_THREADS) {
    const bool ok = j < stop && (!has_kpm || keys[j]);
    prow[j] = ok ? sr_exp(srow[j] - m) * inv : scalar_t(0);
  }
}

// dS = P * (dP - sum_j P dP) on each row of dP (B, H, l, l); P may be shared by the batch (p_elems =
// its size, row offsets wrap).  One block per row: the row term is reduced from the very dP values
// dS then uses, as the eager softmax backward does, so on a nearly one-hot row the two cancel; the
// cheaper sum_e dO O (equal in exact arithmetic) rounds differently and leaves one rounding of dP in
// dS, which the logits' inputs multiply up (docs/backward.md).  Masked entries have P = 0: dS = 0.
// At the row's dominant key m (its largest P, the first on a tie) dP_m - sum P dP still cancels to
// one rounding of dP; there dS_m = rowdot * b - a, with a and b the sums of P dP and P over the other
// keys (the weights sum to 1), which has no cancellation (docs/backward.md, step 5).
extern "C" __global__ void softmax_bwd(
    const scalar_t* __restrict__ p, const scalar_t* __restrict__ dp, scalar_t* __restrict__ ds,
    int l, long long p_elems) {
  __shared__ scalar_t red[SR_SOFTMAX_THREADS];
  __shared__ scalar_t red2[SR_SOFTMAX_THREADS];
  __shared__ int redi[SR_SOFTMAX_THREADS];
  const long long row = blockIdx.x;
  const scalar_t* prow = p + (row * l) % p_elems;
  const scalar_t* dprow = dp + row * l;
  scalar_t* dsrow = ds + row * l;
  const int tid = threadIdx.x;

  // the row term and the dominant key (largest P, smallest index among equals)
  scalar_t acc = 0, top = -1;
  int at = -1;
  for (int j = tid; j < l; j += SR_SOFTMAX_THREADS) {
    acc += prow[j] * dprow[j];
    if (prow[j] > top) { top = prow[j]; at = j; }  // j increases: the first of equals stays
  }
  red[tid] = acc;
  red2[tid] = top;
  redi[tid] = at;
  __syncthreads();
  for (int w = SR_SOFTMAX_THREADS / 2; w > 0; w >>= 1) {
    if (tid < w) {
      red[tid] += red[tid + w];
      const scalar_t o = red2[tid + w];
      const int oi = redi[tid + w];
      if (o > red2[tid] || (o == red2[tid] && oi >= 0 && (redi[tid] < 0 || oi < redi[tid]))) {
        red2[tid] = o;
        redi[tid] = oi;
      }
    }
    __syncthreads();
  }
  const scalar_t rowdot = red[0];
  const int m = redi[0];
  __syncthreads();  // everyone has read red[0], redi[0] before they are reused

  // a, b: the sums of P dP and P over the keys other than m
  scalar_t a = 0, b = 0;
  for (int j = tid; j < l; j += SR_SOFTMAX_THREADS)
    if (j != m) { a += prow[j] * dprow[j]; b += prow[j]; }
  red[tid] = a;
  red2[tid] = b;
  __syncthreads();
  for (int w = SR_SOFTMAX_THREADS / 2; w > 0; w >>= 1) {
    if (tid < w) { red[tid] += red[tid + w]; red2[tid] += red2[tid + w]; }
    __syncthreads();
  }
  const scalar_t dsm = rowdot * red2[0] - red[0];
  for (int j = tid; j < l; j += SR_SOFTMAX_THREADS)
    dsrow[j] = j == m ? dsm : prow[j] * (dprow[j] - rowdot);
}
