/* gemm.c - FP32 GEMM (OpenBLAS or nibble's own packed kernel), the double
 * reference product, and the convolution helpers built on them. */
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/simd16.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifdef NBL_HAVE_CBLAS
#include <cblas.h>
#endif

/* ------------------------------------------------------------------ portable blocked kernel */

#define MR 6
#define NR 16
#define KC 256
#define MC 72 /* multiple of MR */
#define NC 2048 /* multiple of NR */

typedef float v8f __attribute__((vector_size(32)));

/* acc = sum_p a[p*MR+i] * b[p*NR+j]; C[i,j] += alpha * acc for i < mr, j < nr. */
#define MICRO_BODY                                                                   \
  v8f acc[MR][2];                                                                    \
  memset(acc, 0, sizeof acc);                                                        \
  for (int64_t p = 0; p < kc; p++) {                                                 \
    v8f b0, b1;                                                                      \
    memcpy(&b0, b + p * NR, sizeof b0);                                              \
    memcpy(&b1, b + p * NR + 8, sizeof b1);                                          \
    for (int i = 0; i < MR; i++) {                                                   \
      float av = a[p * MR + i];                                                      \
      v8f va = {av, av, av, av, av, av, av, av};                                     \
      acc[i][0] += va * b0;                                                          \
      acc[i][1] += va * b1;                                                          \
    }                                                                                \
  }                                                                                  \
  float out[MR][NR];                                                                 \
  memcpy(out, acc, sizeof out);                                                      \
  for (int i = 0; i < mr; i++)                                                       \
    for (int j = 0; j < nr; j++) C[i * ldc + j] += alpha * out[i][j];

__attribute__((target("avx2,fma"))) static void micro_avx2(int64_t kc, const float *a,
                                                           const float *b, float *C,
                                                           int64_t ldc, int mr, int nr,
                                                           float alpha) {
  MICRO_BODY
}

static void micro_generic(int64_t kc, const float *a, const float *b, float *C, int64_t ldc,
                          int mr, int nr, float alpha) {
  MICRO_BODY
}

typedef void (*micro_fn)(int64_t, const float *, const float *, float *, int64_t, int, int, float);

static micro_fn pick_micro(void) {
  static micro_fn _Atomic fn;
  if (!fn) {
    __builtin_cpu_init();
    fn = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? micro_avx2
                                                                         : micro_generic;
  }
  return fn;
}

static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
  if (beta == 1.0f) return;
  for (int64_t i = 0; i < M; i++) {
    float *row = C + i * ldc;
    if (beta == 0.0f)
      memset(row, 0, (size_t)N * sizeof(float));
    else
      for (int64_t j = 0; j < N; j++) row[j] *= beta;
  }
}

/* Single-threaded packed GEMM on a sub-problem. */
static void sgemm_serial(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc) {
  scale_c(M, N, beta, C, ldc);
  if (M == 0 || N == 0 || K == 0) return;
  int64_t kmax = K < KC ? K : KC;
  int64_t mmax = M < MC ? (M + MR - 1) / MR * MR : MC, nmax = N < NC ? (N + NR - 1) / NR * NR : NC;
  size_t abytes = ((size_t)(mmax * kmax) * sizeof(float) + 63) / 64 * 64;
  size_t bbytes = ((size_t)(kmax * nmax) * sizeof(float) + 63) / 64 * 64;
  float *abuf = aligned_alloc(64, abytes);
  float *bbuf = aligned_alloc(64, bbytes);
  if (!abuf || !bbuf) {
    /* no memory for packing: plain loop, same numbers up to summation order */
    free(abuf);
    free(bbuf);
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        float s = 0;
        for (int64_t p = 0; p < K; p++)
          s += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
        C[i * ldc + j] += alpha * s;
      }
    return;
  }
  micro_fn micro = pick_micro();
  for (int64_t jc = 0; jc < N; jc += NC) {
    int64_t nc = N - jc < NC ? N - jc : NC;
    for (int64_t pc = 0; pc < K; pc += KC) {
      int64_t kc = K - pc < KC ? K - pc : KC;
      /* pack B[pc:pc+kc, jc:jc+nc] into NR-wide panels */
      for (int64_t jr = 0; jr < nc; jr += NR) {
        float *bp = bbuf + jr * kc;
        int nr = (int)(nc - jr < NR ? nc - jr : NR);
        for (int64_t p = 0; p < kc; p++) {
          float *dst = bp + p * NR;
          if (!tb) {
            const float *src = B + (pc + p) * ldb + jc + jr;
            memcpy(dst, src, (size_t)nr * sizeof(float));
          } else {
            for (int j = 0; j < nr; j++) dst[j] = B[(jc + jr + j) * ldb + pc + p];
          }
          for (int j = nr; j < NR; j++) dst[j] = 0;
        }
      }
      for (int64_t ic = 0; ic < M; ic += MC) {
        int64_t mc = M - ic < MC ? M - ic : MC;
        for (int64_t ir = 0; ir < mc; ir += MR) {
          float *ap = abuf + ir * kc;
          int mr = (int)(mc - ir < MR ? mc - ir : MR);
          for (int64_t p = 0; p < kc; p++) {
            float *dst = ap + p * MR;
            if (!ta)
              for (int i = 0; i < mr; i++) dst[i] = A[(ic + ir + i) * lda + pc + p];
            else
              for (int i = 0; i < mr; i++) dst[i] = A[(pc + p) * lda + ic + ir + i];
            for (int i = mr; i < MR; i++) dst[i] = 0;
          }
        }
        for (int64_t jr = 0; jr < nc; jr += NR) {
          int nr = (int)(nc - jr < NR ? nc - jr : NR);
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int mr = (int)(mc - ir < MR ? mc - ir : MR);
            micro(kc, abuf + ir * kc, bbuf + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc, mr, nr,
                  alpha);
          }
        }
      }
    }
  }
  free(abuf);
  free(bbuf);
}

typedef struct gemm_task {
  int ta, tb, split_rows;
  int64_t M, N, K, block;
  float alpha, beta;
  const float *A, *B;
  int64_t lda, ldb, ldc;
  float *C;
} gemm_task;

static void gemm_task_run(void *arg, int64_t begin, int64_t end) {
  const gemm_task *t = arg;
  if (t->split_rows) {
    int64_t r0 = begin * t->block, r1 = end * t->block;
    if (r1 > t->M) r1 = t->M;
    const float *A = t->ta ? t->A + r0 : t->A + r0 * t->lda;
    sgemm_serial(t->ta, t->tb, r1 - r0, t->N, t->K, t->alpha, A, t->lda, t->B, t->ldb, t->beta,
                 t->C + r0 * t->ldc, t->ldc);
  } else {
    int64_t c0 = begin * t->block, c1 = end * t->block;
    if (c1 > t->N) c1 = t->N;
    const float *B = t->tb ? t->B + c0 * t->ldb : t->B + c0;
    sgemm_serial(t->ta, t->tb, t->M, c1 - c0, t->K, t->alpha, t->A, t->lda, B, t->ldb, t->beta,
                 t->C + c0, t->ldc);
  }
}

void nbl_sgemm_portable(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                        float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  int threads = ctx ? ctx->threads : 1;
  double flops = (double)M * (double)N * (double)K;
  if (threads <= 1 || flops < 2e5) {
    sgemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  gemm_task t = {trans_a, trans_b, 1, M, N, K, MC, alpha, beta, A, B, lda, ldb, ldc, C};
  int64_t row_blocks = (M + MC - 1) / MC;
  if (row_blocks < threads && N >= 4 * NR * threads) {
    t.split_rows = 0;
    t.block = 4 * NR;
    nbl_parallel_for(ctx, (N + t.block - 1) / t.block, 1, gemm_task_run, &t);
  } else {
    if (row_blocks < threads) t.block = ((M + threads - 1) / threads + MR - 1) / MR * MR;
    nbl_parallel_for(ctx, (M + t.block - 1) / t.block, 1, gemm_task_run, &t);
  }
}

/* y[0..n) = v, 8 lanes at a time. */
static void fill_f32(float *y, int64_t n, float v) {
  v8f vv = {v, v, v, v, v, v, v, v};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) memcpy(y + i, &vv, sizeof vv);
  for (; i < n; i++) y[i] = v;
}

/* ------------------------------------------------------------------ fused activation */

/* Clip's float semantics t = v < lo ? lo : v; t > hi ? hi : t, which are
 * exactly x86's max(lo, v) then min(hi, t): both return their second operand
 * when either is NaN, so NaN passes through. */
#if defined(__x86_64__)
__attribute__((target("avx"))) static void act_row_avx(float *y, int64_t n, float lo, float hi) {
  __m256 vl = _mm256_set1_ps(lo), vh = _mm256_set1_ps(hi);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_min_ps(vh, _mm256_max_ps(vl, _mm256_loadu_ps(y + i))));
  for (; i < n; i++) {
    float t = y[i] < lo ? lo : y[i];
    y[i] = t > hi ? hi : t;
  }
}
#endif

static void act_row(float *y, int64_t n, float lo, float hi) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx")) {
    act_row_avx(y, n, lo, hi);
    return;
  }
  __m128 vl = _mm_set1_ps(lo), vh = _mm_set1_ps(hi);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    _mm_storeu_ps(y + i, _mm_min_ps(vh, _mm_max_ps(vl, _mm_loadu_ps(y + i))));
#else
  int64_t i = 0;
#endif
  for (; i < n; i++) {
    float t = y[i] < lo ? lo : y[i];
    y[i] = t > hi ? hi : t;
  }
}

void nbl_act_apply_2d(const nbl_act *act, float *y, int64_t rows, int64_t cols, int64_t ld) {
  if (!act || !act->kind) return;
  for (int64_t r = 0; r < rows; r++) act_row(y + r * ld, cols, act->lo, act->hi);
}

static char kernel_info[256];

static void kernel_info_init(void) {
  char blas[160];
#if defined(NBL_HAVE_CBLAS) && defined(OPENBLAS_VERSION)
  const char *core = openblas_get_corename(), *v = OPENBLAS_VERSION; /* " OpenBLAS 0.3.21 " */
  while (*v == ' ') v++;
  int vlen = (int)strlen(v);
  while (vlen > 0 && v[vlen - 1] == ' ') vlen--;
  snprintf(blas, sizeof blas, "%.*s (%s kernels)", vlen, v, core ? core : "?");
#elif defined(NBL_HAVE_CBLAS)
  snprintf(blas, sizeof blas, "a cblas library");
#else
  snprintf(blas, sizeof blas, "nibble's own blocked kernel (no BLAS)");
#endif
  int conv512 = 0;
#if defined(__x86_64__)
  conv512 = __builtin_cpu_supports("avx512f");
#endif
  snprintf(kernel_info, sizeof kernel_info, "FP32 products: %s; FP32 convolutions: %s; INT4: %s",
           blas, conv512 ? "avx512" : "as the products", nbl_i4_isa_name(nbl_i4_best_isa()));
}

const char *nbl_kernel_info(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, kernel_info_init);
  return kernel_info;
}

#ifdef NBL_HAVE_CBLAS
typedef struct blas_task {
  int ta, tb, split_n; /* split_n: chunks are column blocks of C, else row blocks */
  int64_t M, N, K, lda, ldb, ldc, blk;
  float alpha, beta;
  const float *A, *B;
  float *C;
  const nbl_act *act; /* applied to each block right after its product */
  const float *row_bias; /* non-NULL: each block's C rows start as row_bias[i], beta 1 */
} blas_task;

/* Items are blocks of t->blk rows (or columns) of C; one single-threaded BLAS
 * call per chunk. */
static void blas_run(void *arg, int64_t begin, int64_t end) {
  const blas_task *t = arg;
  int64_t lo = begin * t->blk, hi = end * t->blk;
  if (t->split_n) {
    if (hi > t->N) hi = t->N;
    if (t->row_bias)
      for (int64_t i = 0; i < t->M; i++) fill_f32(t->C + i * t->ldc + lo, hi - lo, t->row_bias[i]);
    if (t->M == 1) { /* a matrix-vector product: sgemv reads B once, at memory speed */
      float *y = t->C + lo;
      if (!t->row_bias && t->beta == 0.0f)
        memset(y, 0, (size_t)(hi - lo) * sizeof(float)); /* C is not read (NaN stays out) */
      else if (!t->row_bias && t->beta != 1.0f)
        for (int64_t j = 0; j < hi - lo; j++) y[j] *= t->beta;
      int incx = t->ta ? (int)t->lda : 1;
      if (t->tb)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(hi - lo), (int)t->K, t->alpha,
                    t->B + lo * t->ldb, (int)t->ldb, t->A, incx, 1.0f, y, 1);
      else
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)t->K, (int)(hi - lo), t->alpha, t->B + lo,
                    (int)t->ldb, t->A, incx, 1.0f, y, 1);
      nbl_act_apply_2d(t->act, y, 1, hi - lo, t->ldc);
      return;
    }
    const float *B = t->tb ? t->B + lo * t->ldb : t->B + lo;
    cblas_sgemm(CblasRowMajor, t->ta ? CblasTrans : CblasNoTrans,
                t->tb ? CblasTrans : CblasNoTrans, (int)t->M, (int)(hi - lo), (int)t->K, t->alpha,
                t->A, (int)t->lda, B, (int)t->ldb, t->beta, t->C + lo, (int)t->ldc);
    nbl_act_apply_2d(t->act, t->C + lo, t->M, hi - lo, t->ldc);
  } else {
    if (hi > t->M) hi = t->M;
    if (t->row_bias)
      for (int64_t i = lo; i < hi; i++) fill_f32(t->C + i * t->ldc, t->N, t->row_bias[i]);
    const float *A = t->ta ? t->A + lo : t->A + lo * t->lda;
    cblas_sgemm(CblasRowMajor, t->ta ? CblasTrans : CblasNoTrans,
                t->tb ? CblasTrans : CblasNoTrans, (int)(hi - lo), (int)t->N, (int)t->K, t->alpha,
                A, (int)t->lda, t->B, (int)t->ldb, t->beta, t->C + lo * t->ldc, (int)t->ldc);
    nbl_act_apply_2d(t->act, t->C + lo * t->ldc, hi - lo, t->N, t->ldc);
  }
}
#endif

static void sgemm_bias_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N,
                           int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                           int64_t ldb, float beta, float *C, int64_t ldc,
                           const float *row_bias, const nbl_act *act);

void nbl_sgemm(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
               float *C, int64_t ldc) {
  nbl_sgemm_act(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

void nbl_sgemm_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc, const nbl_act *act) {
  sgemm_bias_act(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, act);
}

/* nbl_sgemm_act; with row_bias, C starts as row_bias[i] in row i and beta is 1
 * (the fill happens per block, in the thread that computes the block). */
static void sgemm_bias_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N,
                           int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                           int64_t ldb, float beta, float *C, int64_t ldc,
                           const float *row_bias, const nbl_act *act) {
  if (M <= 0 || N <= 0) return;
  if (act && !act->kind) act = NULL;
  if (row_bias) beta = 1.0f;
#ifdef NBL_HAVE_CBLAS
  if (K > 0 && M < INT_MAX && N < INT_MAX && K < INT_MAX && lda < INT_MAX && ldb < INT_MAX &&
      ldc < INT_MAX) {
    /* OpenBLAS always runs single-threaded: nibble's pool splits large products
     * (OpenBLAS's own workers spin after each call and would fight the pool). */
#ifdef OPENBLAS_VERSION
    static _Atomic int blas_single = 0;
    if (!blas_single) {
      openblas_set_num_threads(1);
      blas_single = 1;
    }
#endif
    int want = ctx && ctx->threads > 0 ? ctx->threads : 1;
    blas_task t = {trans_a, trans_b, 0,    M,     N, K, lda, ldb, ldc, 0, alpha, beta, A, B, C,
                   act,     row_bias};
    if (M == 1) { /* sgemv (blas_run), in column blocks when it is big enough */
      t.split_n = 1;
      int64_t items = want > 1 && (double)N * (double)K >= 5e5 ? want : 1;
      t.blk = (N + items - 1) / items;
      t.blk = (t.blk + 7) / 8 * 8;
      items = (N + t.blk - 1) / t.blk;
      if (items > 1)
        nbl_parallel_for(ctx, items, 1, blas_run, &t);
      else
        blas_run(&t, 0, 1);
      return;
    }
    if (want > 1 && (double)M * (double)N * (double)K >= 2e6) {
      t.split_n = N >= M;
      int64_t len = t.split_n ? N : M, unit = 8; /* blocks of near-equal size */
      int64_t blk = (len + want - 1) / want;
      blk = (blk + unit - 1) / unit * unit;
      t.blk = blk;
      int64_t items = (len + blk - 1) / blk;
      if (items > 1) {
        nbl_parallel_for(ctx, items, 1, blas_run, &t);
        return;
      }
    }
    t.blk = M;
    blas_run(&t, 0, 1);
    return;
  }
#endif
  if (row_bias)
    for (int64_t i = 0; i < M; i++) fill_f32(C + i * ldc, N, row_bias[i]);
  nbl_sgemm_portable(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  nbl_act_apply_2d(act, C, M, N, ldc);
}

void nbl_dgemm_ref(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, double alpha,
                   const double *A, int64_t lda, const double *B, int64_t ldb, double beta,
                   double *C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0;
      for (int64_t p = 0; p < K; p++)
        s += (trans_a ? A[p * lda + i] : A[i * lda + p]) *
             (trans_b ? B[j * ldb + p] : B[p * ldb + j]);
      double *c = &C[i * ldc + j];
      *c = beta == 0 ? alpha * s : alpha * s + beta * *c;
    }
}

/* ------------------------------------------------------------------ convolution geometry */

nbl_status nbl_conv_geom_init(nbl_kctx *ctx, nbl_conv_geom *g, const nbl_rt_tensor *x,
                              const int64_t *kdims, int ceil_mode) {
  memset(g, 0, sizeof *g);
  const nbl_node *n = ctx->node;
  if (x->rank < 3)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input has rank %d, expected at least 3 (N, C, ...)",
                    x->rank);
  int ns = x->rank - 2;
  g->ns = ns;
  g->N = x->dims[0];
  g->C = x->dims[1];
  int cnt;
  const int64_t *ks = nbl_attr_ints(n, "kernel_shape", &cnt);
  if (ks && cnt != ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "kernel_shape has %d values, expected %d", cnt, ns);
  if (!ks && !kdims)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "attribute 'kernel_shape' is required");
  for (int i = 0; i < ns; i++) {
    g->k[i] = ks ? ks[i] : kdims[i];
    if (ks && kdims && ks[i] != kdims[i])
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL,
                      "kernel_shape[%d] = %lld does not match the weight's dim %lld", i,
                      (long long)ks[i], (long long)kdims[i]);
    if (g->k[i] <= 0)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "kernel dim %d is %lld", i, (long long)g->k[i]);
    g->in[i] = x->dims[2 + i];
  }
  const int64_t *st = nbl_attr_ints(n, "strides", &cnt);
  if (st && cnt != ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "strides has %d values, expected %d", cnt, ns);
  const int64_t *dl = nbl_attr_ints(n, "dilations", &cnt);
  if (dl && cnt != ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "dilations has %d values, expected %d", cnt, ns);
  const int64_t *pd = nbl_attr_ints(n, "pads", &cnt);
  if (pd && cnt != 2 * ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "pads has %d values, expected %d", cnt, 2 * ns);
  const char *ap = nbl_attr_string(n, "auto_pad", "NOTSET");
  int mode;
  if (!strcmp(ap, "NOTSET") || !strcmp(ap, "")) mode = 0;
  else if (!strcmp(ap, "SAME_UPPER")) mode = 1;
  else if (!strcmp(ap, "SAME_LOWER")) mode = 2;
  else if (!strcmp(ap, "VALID")) mode = 3;
  else return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "unknown auto_pad '%s'", ap);
  g->in_sz = g->k_sz = g->out_sz = 1;
  for (int i = 0; i < ns; i++) {
    g->s[i] = st ? st[i] : 1;
    g->d[i] = dl ? dl[i] : 1;
    if (g->s[i] <= 0 || g->d[i] <= 0)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "strides and dilations must be positive");
    int64_t dk = (g->k[i] - 1) * g->d[i] + 1;
    if (mode == 1 || mode == 2) {
      g->out[i] = nbl_window_out_same(g->in[i], g->s[i]);
      int64_t total = (g->out[i] - 1) * g->s[i] + dk - g->in[i];
      if (total < 0) total = 0;
      g->pb[i] = mode == 1 ? total / 2 : total - total / 2;
      g->pe[i] = total - g->pb[i];
    } else {
      g->pb[i] = mode == 0 && pd ? pd[i] : 0;
      g->pe[i] = mode == 0 && pd ? pd[ns + i] : 0;
      if (g->pb[i] < 0 || g->pe[i] < 0)
        return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "negative pads are not supported");
      g->out[i] =
          nbl_window_out(g->in[i], g->k[i], g->s[i], g->d[i], g->pb[i], g->pe[i], ceil_mode);
      if (g->out[i] < 0)
        return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL,
                        "kernel extent %lld exceeds the padded input size %lld in spatial dim %d",
                        (long long)dk, (long long)(g->in[i] + g->pb[i] + g->pe[i]), i);
    }
    g->in_sz *= g->in[i];
    g->k_sz *= g->k[i];
    g->out_sz *= g->out[i];
  }
  g->group = 1;
  return NBL_OK;
}

void nbl_conv_ref_f64(const nbl_conv_geom *g, const double *x, const double *w, const double *bias,
                      double *y) {
  int ns = g->ns;
  int64_t Cg = g->C / g->group, Mg = g->M / g->group;
  int64_t o[NBL_CONV_MAX_SP], kk[NBL_CONV_MAX_SP];
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t m = 0; m < g->M; m++) {
      int64_t grp = m / Mg;
      double *yp = y + (n * g->M + m) * g->out_sz;
      for (int64_t oi = 0; oi < g->out_sz; oi++) {
        int64_t r = oi;
        for (int i = ns - 1; i >= 0; i--) {
          o[i] = r % g->out[i];
          r /= g->out[i];
        }
        double s = bias ? bias[m] : 0.0;
        for (int64_t c = 0; c < Cg; c++) {
          const double *xp = x + (n * g->C + grp * Cg + c) * g->in_sz;
          const double *wp = w + (m * Cg + c) * g->k_sz;
          for (int64_t ki = 0; ki < g->k_sz; ki++) {
            int64_t rk = ki;
            for (int i = ns - 1; i >= 0; i--) {
              kk[i] = rk % g->k[i];
              rk /= g->k[i];
            }
            int64_t xi = 0;
            int inside = 1;
            for (int i = 0; i < ns; i++) {
              int64_t p = o[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];
              if (p < 0 || p >= g->in[i]) {
                inside = 0;
                break;
              }
              xi = xi * g->in[i] + p;
            }
            if (inside) s += xp[xi] * wp[ki];
          }
        }
        yp[oi] = s;
      }
    }
}

/* 2-D im2col rows for items [i0, i1), item = c * KH + kh: per (c, kh, kw) row, the output
 * columns whose input column is inside [0, W) form one range [lo, hi); the
 * rest are zero, and stride 1 copies the range in one go. */
static void im2col2d_rows(const nbl_conv_geom *g, const float *x, float *col, int64_t i0,
                          int64_t i1) {
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t sh = g->s[0], sw = g->s[1];
  for (int64_t i = i0; i < i1; i++) { /* item i = (channel c, kernel row kh) */
    int64_t c = i / g->k[0], kh = i % g->k[0];
    for (int64_t kw = 0; kw < g->k[1]; kw++) {
      float *dst = col + ((c * g->k[0] + kh) * g->k[1] + kw) * OH * OW;
      const float *src = x + c * H * W;
      int64_t off = kw * g->d[1] - g->pb[1];
      /* iw = ow*sw + off in [0, W)  <=>  ow in [lo, hi) */
      int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
      int64_t hi = W - off <= 0 ? 0 : (W - off + sw - 1) / sw;
      if (hi > OW) hi = OW;
      if (lo > hi) lo = hi;
      for (int64_t oh = 0; oh < OH; oh++) {
        int64_t ih = oh * sh - g->pb[0] + kh * g->d[0];
        float *d = dst + oh * OW;
        if (ih < 0 || ih >= H) {
          memset(d, 0, (size_t)OW * sizeof(float));
          continue;
        }
        const float *srow = src + ih * W;
        for (int64_t ow = 0; ow < lo; ow++) d[ow] = 0.0f;
        if (sw == 1) {
          if (hi > lo) nbl_copy_row(d + lo, srow + lo + off, hi - lo);
        } else {
          for (int64_t ow = lo; ow < hi; ow++) d[ow] = srow[ow * sw + off];
        }
        for (int64_t ow = hi; ow < OW; ow++) d[ow] = 0.0f;
      }
    }
  }
}

typedef struct im2col_task {
  const nbl_conv_geom *g;
  const float *x;
  float *col;
} im2col_task;

static void im2col_run(void *arg, int64_t begin, int64_t end) {
  const im2col_task *t = arg;
  im2col2d_rows(t->g, t->x, t->col, begin, end);
}

void nbl_im2col_f32(const nbl_conv_geom *g, int64_t Cg, const float *x, float *col) {
  int ns = g->ns;
  if (ns == 2) {
    im2col2d_rows(g, x, col, 0, Cg * g->k[0]);
    return;
  }
  int64_t o[NBL_CONV_MAX_SP], kk[NBL_CONV_MAX_SP];
  for (int64_t c = 0; c < Cg; c++)
    for (int64_t ki = 0; ki < g->k_sz; ki++) {
      int64_t rk = ki;
      for (int i = ns - 1; i >= 0; i--) {
        kk[i] = rk % g->k[i];
        rk /= g->k[i];
      }
      float *dst = col + (c * g->k_sz + ki) * g->out_sz;
      const float *src = x + c * g->in_sz;
      for (int i = 0; i < ns; i++) o[i] = 0;
      for (int64_t oi = 0; oi < g->out_sz; oi++) {
        int64_t xi = 0;
        int inside = 1;
        for (int i = 0; i < ns; i++) {
          int64_t p = o[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];
          if (p < 0 || p >= g->in[i]) inside = 0;
          xi = xi * g->in[i] + p;
        }
        dst[oi] = inside ? src[xi] : 0.0f;
        for (int i = ns - 1; i >= 0; i--) {
          if (++o[i] < g->out[i]) break;
          o[i] = 0;
        }
      }
    }
}

typedef struct dw_task {
  const nbl_conv_geom *g;
  const float *x, *w, *bias;
  float *y;
  int64_t mult; /* output channels per input channel */
  int64_t S, Hp, Wp; /* stride-phase planes: S planes of Hp x Wp (see dw_run) */
  const nbl_act *act;
  const nbl_dw_hooks *h; /* input rows and output planes from the caller (NULL: x, bias, act) */
  int64_t bands; /* 0: work items are (n, m) planes; else bands of output rows of all planes */
  _Atomic int oom;
} dw_task;

/* One output plane from the stride-phase planes ph (S planes of Hp x Wp, where
 * ph[p][r][j] is padded input row r, column j*S + p): y[oh][ow] = b +
 * sum_k w[k] * ph[off[k] + oh*sh*Wp + ow], off[k] the start of tap k =
 * (kh, kw) for output (0, 0). Every read is in range and contiguous in ow, so
 * the ow loop runs 8 lanes at a time; 3x3 taps are unrolled. */
/* VT: a vector of L floats; every load/store is a memcpy of one vector. */
#define DW_TAPS(NT, VT, L)                                                             \
  for (int64_t oh = 0; oh < OH; oh++) {                                                \
    float *yr = y + oh * OW;                                                           \
    const float *base = ph + oh * sh * Wp;                                             \
    int64_t ow = 0;                                                                    \
    for (; ow + 4 * (L) <= OW; ow += 4 * (L)) { /* 4 sums hide the add latency */       \
      VT a0 = bv, a1 = bv, a2 = bv, a3 = bv;                                           \
      for (int k = 0; k < (NT); k++) {                                                 \
        VT x0, x1, x2, x3;                                                             \
        const float *src = base + off[k] + ow;                                         \
        memcpy(&x0, src, sizeof x0);                                                   \
        memcpy(&x1, src + (L), sizeof x1);                                             \
        memcpy(&x2, src + 2 * (L), sizeof x2);                                         \
        memcpy(&x3, src + 3 * (L), sizeof x3);                                         \
        a0 += x0 * wv[k];                                                              \
        a1 += x1 * wv[k];                                                              \
        a2 += x2 * wv[k];                                                              \
        a3 += x3 * wv[k];                                                              \
      }                                                                                \
      memcpy(yr + ow, &a0, sizeof a0);                                                 \
      memcpy(yr + ow + (L), &a1, sizeof a1);                                           \
      memcpy(yr + ow + 2 * (L), &a2, sizeof a2);                                       \
      memcpy(yr + ow + 3 * (L), &a3, sizeof a3);                                       \
    }                                                                                  \
    for (; ow + 2 * (L) <= OW; ow += 2 * (L)) {                                        \
      VT a0 = bv, a1 = bv;                                                             \
      for (int k = 0; k < (NT); k++) {                                                 \
        VT x0, x1;                                                                     \
        memcpy(&x0, base + off[k] + ow, sizeof x0);                                    \
        memcpy(&x1, base + off[k] + ow + (L), sizeof x1);                              \
        a0 += x0 * wv[k];                                                              \
        a1 += x1 * wv[k];                                                              \
      }                                                                                \
      memcpy(yr + ow, &a0, sizeof a0);                                                 \
      memcpy(yr + ow + (L), &a1, sizeof a1);                                           \
    }                                                                                  \
    for (; ow + (L) <= OW; ow += (L)) {                                                \
      VT acc = bv;                                                                     \
      for (int k = 0; k < (NT); k++) {                                                 \
        VT xv;                                                                         \
        memcpy(&xv, base + off[k] + ow, sizeof xv);                                    \
        acc += xv * wv[k];                                                             \
      }                                                                                \
      memcpy(yr + ow, &acc, sizeof acc);                                               \
    }                                                                                  \
    for (; ow < OW; ow++) {                                                            \
      float s = b;                                                                     \
      for (int k = 0; k < (NT); k++) s += base[off[k] + ow] * w[k];                    \
      yr[ow] = s;                                                                      \
    }                                                                                  \
  }
#define DW_PLANE_BODY(VT, L)                                                           \
  VT wv[NBL_DW_MAX_TAPS], bv;                                                          \
  for (int i = 0; i < (L); i++) bv[i] = b;                                             \
  for (int k = 0; k < nt; k++)                                                         \
    for (int i = 0; i < (L); i++) wv[k][i] = w[k];                                     \
  if (nt == 9) {                                                                       \
    DW_TAPS(9, VT, L)                                                                  \
  } else {                                                                             \
    DW_TAPS(nt, VT, L)                                                                 \
  }

typedef float v16f __attribute__((vector_size(64)));

__attribute__((target("avx2,fma"))) static void dw_plane_avx2(const float *ph, int64_t Wp,
                                                              const int64_t *off, int nt,
                                                              const float *w, int64_t sh,
                                                              float b, float *y, int64_t OH,
                                                              int64_t OW) {
  DW_PLANE_BODY(v8f, 8)
}

#if defined(__x86_64__)
/* The same sums 16 lanes wide: every output is the same expression in the
 * same order as in the AVX2 kernel, so the results are identical. */
__attribute__((target("avx512f,fma"))) static void dw_plane_avx512(const float *ph, int64_t Wp,
                                                                   const int64_t *off, int nt,
                                                                   const float *w, int64_t sh,
                                                                   float b, float *y, int64_t OH,
                                                                   int64_t OW) {
  DW_PLANE_BODY(v16f, 16)
}
#endif

static void dw_plane_generic(const float *ph, int64_t Wp, const int64_t *off, int nt,
                             const float *w, int64_t sh, float b, float *y, int64_t OH,
                             int64_t OW) {
  DW_PLANE_BODY(v8f, 8)
}

/* The best depthwise plane kernel this CPU runs. */
typedef void (*dw_plane_fn)(const float *, int64_t, const int64_t *, int, const float *, int64_t,
                            float, float *, int64_t, int64_t);
static dw_plane_fn dw_plane_pick(int no_avx512) {
#if defined(__x86_64__)
  if (!no_avx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
    return dw_plane_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return dw_plane_avx2;
#endif
  return dw_plane_generic;
}

/* ev[k] = x[2k] (k < ceil(W/2)), od[k] = x[2k+1] (k < W/2): one input row
 * split into its even and odd columns for a stride-2 depthwise convolution. */
static void deint2_scalar(const float *x, int64_t W, int64_t from, float *ev, float *od) {
  for (int64_t iw = from; iw < W; iw++) {
    if (iw & 1) od[iw / 2] = x[iw];
    else ev[iw / 2] = x[iw];
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void deint2_avx2(const float *x, int64_t W, float *ev,
                                                       float *od) {
  int64_t iw = 0;
  for (; iw + 16 <= W; iw += 16) {
    __m256 a = _mm256_loadu_ps(x + iw), b = _mm256_loadu_ps(x + iw + 8);
    /* [x0 x2 x8 x10 | x4 x6 x12 x14] -> lanes reordered to x0 x2 x4 ... x14 */
    __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xDD);
    e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
    o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
    _mm256_storeu_ps(ev + iw / 2, e);
    _mm256_storeu_ps(od + iw / 2, o);
  }
  deint2_scalar(x, W, iw, ev, od);
}
#endif

/* Depthwise 2-D convolution, one (n, m) output plane per item: the input plane
 * is copied with its zero padding into stride-phase planes (column phases of
 * the horizontal stride), then every output row is a sum of contiguous rows. */
static void dw_run(void *arg, int64_t begin, int64_t end) {
  dw_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t KH = g->k[0], KW = g->k[1], S = t->S, R = g->s[0], Wp = t->Wp;
  /* phase planes: padded input row r, column pc go to plane (r % R, pc % S)
   * at row r / R, column pc / S, so that every tap reads rows and columns of
   * one plane with stride 1 */
  int64_t Hq = (t->Hp + R - 1) / R, plane = Hq * Wp, pt = g->pb[0], pl = g->pb[1];
  int nt = (int)(KH * KW);
  int64_t off[NBL_DW_MAX_TAPS];
  for (int64_t kh = 0; kh < KH && nt <= NBL_DW_MAX_TAPS; kh++)
    for (int64_t kw = 0; kw < KW; kw++) {
      int64_t q = kw * g->d[1], r = kh * g->d[0];
      off[kh * KW + kw] = ((r % R) * S + q % S) * plane + (r / R) * Wp + q / S;
    }
  /* slack for small planes, computed as one row of OH * Wp on the padded
   * grid: the last tap of the last row reads up to (KW - 1) * d columns past
   * the end of its phase plane */
  int64_t slack = (KW - 1) * g->d[1] + 1;
  float *ph =
      nt <= NBL_DW_MAX_TAPS ? calloc((size_t)(R * S * plane + slack), sizeof(float)) : NULL;
  /* planes narrower than 4 vectors whose width is not a whole number of
   * vectors are computed on the padded grid as one row of OH * Wp outputs
   * (full-width loads, no scalar tail per row); the columns past OW are
   * dropped when copying out */
  dw_plane_fn plane_fn = dw_plane_pick(t->h && t->h->no_avx512);
  int lanes = 8;
#if defined(__x86_64__)
  if (plane_fn == dw_plane_avx512) lanes = 16;
#endif
  int flat = OW < 4 * lanes && OW % lanes != 0;
  float *tq = flat && ph ? malloc((size_t)(OH * Wp) * sizeof(float)) : NULL;
  if (flat && !tq) flat = 0;
  /* hooked input: one loaded row (stride 1 loads straight into its plane) */
  float *lrow = t->h && ph && S > 1 ? malloc((size_t)W * sizeof(float) + sizeof(float)) : NULL;
  if (t->h && (!ph || (S > 1 && !lrow))) { /* no direct fallback without x */
    t->oom = 1;
    free(tq);
    free(ph);
    return;
  }
  int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  /* a unit of work: one (n, m) plane, or with bands one band of output rows
   * of every plane */
  for (int64_t u = begin; u < end; u++) {
    int64_t it0 = u, it1 = u + 1, oh0 = 0, oh1 = OH;
    if (t->bands) {
      it0 = 0, it1 = g->N * g->M;
      nbl_band(OH, u, t->bands, 1, &oh0, &oh1);
      if (oh0 == oh1) continue;
    }
    int64_t nr = oh1 - oh0;
    /* input rows the band reads */
    int64_t ih_lo = oh0 * R - pt, ih_hi = (oh1 - 1) * R + (KH - 1) * g->d[0] - pt + 1;
    if (ih_lo < 0) ih_lo = 0;
    if (ih_hi > H) ih_hi = H;
    int64_t prev_c = -1, prev_n = -1;
    for (int64_t it = it0; it < it1; it++) {
      int64_t n = it / g->M, m = it % g->M, c = m / t->mult;
      const float *xp = t->h ? NULL : t->x + (n * g->C + c) * H * W;
      const float *wp = t->w + m * KH * KW;
      float *yp = t->y + it * OH * OW + oh0 * OW;
      float b = t->bias ? t->bias[m] : 0.0f;
      if (!ph) { /* out of memory for the planes: direct loop with bounds checks */
        for (int64_t oh = oh0; oh < oh1; oh++)
          for (int64_t ow = 0; ow < OW; ow++) {
            float s = b;
            for (int64_t kh = 0; kh < KH; kh++) {
              int64_t ih = oh * g->s[0] - pt + kh * g->d[0];
              if (ih < 0 || ih >= H) continue;
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t iw = ow * g->s[1] - pl + kw * g->d[1];
                if (iw >= 0 && iw < W) s += xp[ih * W + iw] * wp[kh * KW + kw];
              }
            }
            yp[(oh - oh0) * OW + ow] = s;
          }
        nbl_act_apply_2d(t->act, yp, 1, nr * OW, 0);
        continue;
      }
      if (c != prev_c || n != prev_n) {
        /* every plane writes the same positions: the zero padding from the
         * first memset (below, at allocation) stays */
        int rows_done = t->h && t->h->load_rows && S == 1 && R == 1 && ih_lo < ih_hi;
        if (rows_done) t->h->load_rows(t->h->arg, n, c, ih_lo, ih_hi, ph + (ih_lo + pt) * Wp + pl, Wp);
        if (!rows_done && S == 2 && t->h && t->h->load_rows2) {
          /* the rows of each row phase r % R in one call, even columns to
           * column phase pl % 2, odd ones to the other */
          int64_t pe = pl % 2, po = 1 - pe;
          for (int64_t rp = 0; rp < R; rp++) {
            int64_t ih0 = ih_lo + ((rp - (ih_lo + pt) % R) % R + R) % R;
            if (ih0 >= ih_hi) continue;
            float *row = ph + rp * S * plane + ((ih0 + pt) / R) * Wp;
            t->h->load_rows2(t->h->arg, n, c, ih0, (ih_hi - ih0 + R - 1) / R, R,
                             row + pe * plane + pl / 2, row + po * plane + (1 + pl) / 2, Wp);
          }
          rows_done = 1;
        }
        for (int64_t ih = ih_lo; ih < ih_hi && !rows_done; ih++) {
          const float *xr = xp ? xp + ih * W : lrow;
          float *row = ph + ((ih + pt) % R) * S * plane + ((ih + pt) / R) * Wp;
          if (S == 1) {
            if (t->h) t->h->load_row(t->h->arg, n, c, ih, row + pl);
            else memcpy(row + pl, xr, (size_t)W * sizeof(float));
            continue;
          }
          if (t->h) t->h->load_row(t->h->arg, n, c, ih, lrow);
          if (S == 2) { /* even columns go to phase pl % 2, odd ones to the other */
            int64_t pe = pl % 2, po = 1 - pe;
            float *ev = row + pe * plane + pl / 2;
            float *od = row + po * plane + (1 + pl) / 2;
#if defined(__x86_64__)
            if (avx2) {
              deint2_avx2(xr, W, ev, od);
              continue;
            }
#endif
            deint2_scalar(xr, W, 0, ev, od);
            continue;
          }
          for (int64_t p = 0; p < S; p++) { /* padded column pc = iw + pl = j*S + p */
            int64_t iw0 = ((p - pl) % S + S) % S;
            float *dst = row + p * plane + (iw0 + pl) / S;
            for (int64_t iw = iw0; iw < W; iw += S) *dst++ = xr[iw];
          }
        }
        prev_c = c;
        prev_n = n;
      }
      if (t->h && t->h->rows) {
        nbl_dw_phases pp = {ph, plane, Wp, R, S};
        if (t->h->rows(t->h->arg, &pp, n, m, oh0, oh1, yp)) continue;
      }
      /* output row oh reads phase rows from oh on */
      const float *base = ph + oh0 * Wp;
      if (flat) {
        plane_fn(base, Wp, off, nt, wp, 1, b, tq, 1, nr * Wp);
        for (int64_t oh = 0; oh < nr; oh++)
          memcpy(yp + oh * OW, tq + oh * Wp, (size_t)OW * sizeof(float));
      } else {
        plane_fn(base, Wp, off, nt, wp, 1, b, yp, nr, OW);
      }
      if (t->h) t->h->finish(t->h->arg, n, m, yp, nr * OW);
      else nbl_act_apply_2d(t->act, yp, 1, nr * OW, 0);
    }
  }
  free(lrow);
  free(tq);
  free(ph);
}

/* Depthwise on small planes (at most 14 output columns), 16 channels at a
 * time: the 16 input planes go into a zero-padded tile laid out
 * [row][col][16] (in-register 16x16 transposes), each output pixel is one
 * vector of 16 channels, b + w[0] x[0] + w[1] x[1] + ... in tap order with a
 * rounding after every product and sum, exactly the expression of the plane
 * kernel, so the outputs are bit-identical; MobileNetV2's 7x7 and 14x14
 * layers have hundreds of planes that each barely fill a few vectors. */
typedef struct dwb_task {
  const nbl_conv_geom *g;
  const float *x, *w, *bias;
  float *y;
  const nbl_act *act;
  int64_t Hp, Wp, blocks;
  _Atomic int oom;
} dwb_task;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void dwb_run(void *arg, int64_t b, int64_t e) {
  dwb_task *J = arg;
  const nbl_conv_geom *g = J->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1], C = g->C;
  int64_t KH = g->k[0], KW = g->k[1], HW = H * W, P = OH * OW, Wp = J->Wp;
  int64_t sh = g->s[0] * Wp, sw = g->s[1];
  int nt = (int)(KH * KW);
  float *T = calloc((size_t)(J->Hp * Wp * 16), sizeof(float)); /* the padding stays 0 */
  float *O = malloc(sizeof(float) * (size_t)(16 * P));
  if (!T || !O) {
    atomic_store(&J->oom, 1);
    free(T), free(O);
    return;
  }
  int64_t off[NBL_DW_MAX_TAPS];
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++) off[kh * KW + kw] = kh * g->d[0] * Wp + kw * g->d[1];
  const __m512 zero = _mm512_setzero_ps();
  __m512 wv[NBL_DW_MAX_TAPS];
  for (int64_t u = b; u < e; u++) {
    int64_t n = u / J->blocks, c0 = u % J->blocks * 16, nc = C - c0 < 16 ? C - c0 : 16;
    __mmask16 cm = nbl_tail_mask(nc);
    nbl_planes_to_tile(J->x + (n * C + c0) * HW, nc, H, W, T, Wp, g->pb[0], g->pb[1]);
    nbl_tap_vectors(J->w, c0, nt, cm, wv);
    __m512 vb = J->bias ? _mm512_maskz_loadu_ps(cm, J->bias + c0) : zero;
    for (int64_t oh = 0; oh < OH; oh++) {
      const float *t0 = T + oh * sh * 16;
      for (int64_t ow = 0; ow < OW; ow += 4) {
        int64_t cnt = OW - ow < 4 ? OW - ow : 4;
        const float *t = t0 + ow * sw * 16;
        __m512 a[4] = {vb, vb, vb, vb};
        if (cnt == 4) {
          for (int k = 0; k < nt; k++) {
            const float *q = t + off[k] * 16;
            a[0] = _mm512_add_ps(a[0], _mm512_mul_ps(_mm512_loadu_ps(q), wv[k]));
            a[1] = _mm512_add_ps(a[1], _mm512_mul_ps(_mm512_loadu_ps(q + sw * 16), wv[k]));
            a[2] = _mm512_add_ps(a[2], _mm512_mul_ps(_mm512_loadu_ps(q + 2 * sw * 16), wv[k]));
            a[3] = _mm512_add_ps(a[3], _mm512_mul_ps(_mm512_loadu_ps(q + 3 * sw * 16), wv[k]));
          }
        } else {
          for (int64_t i = 0; i < cnt; i++)
            for (int k = 0; k < nt; k++)
              a[i] = _mm512_add_ps(
                  a[i], _mm512_mul_ps(_mm512_loadu_ps(t + (off[k] + i * sw) * 16), wv[k]));
        }
        for (int64_t i = 0; i < cnt; i++) _mm512_storeu_ps(O + (oh * OW + ow + i) * 16, a[i]);
      }
    }
    float *yb = J->y + (n * C + c0) * P;
    nbl_tile_to_planes(O, P, nc, yb);
    nbl_act_apply_2d(J->act, yb, nc, P, P);
  }
  free(T), free(O);
}
#endif

void nbl_dw_tile_dims(const nbl_conv_geom *g, int64_t *Hp, int64_t *Wp) {
  int64_t need_h = (g->out[0] - 1) * g->s[0] + (g->k[0] - 1) * g->d[0] + 1;
  int64_t need_w = (g->out[1] - 1) * g->s[1] + (g->k[1] - 1) * g->d[1] + 1;
  *Hp = g->in[0] + g->pb[0] > need_h ? g->in[0] + g->pb[0] : need_h;
  *Wp = g->in[1] + g->pb[1] > need_w ? g->in[1] + g->pb[1] : need_w;
}

int nbl_dw_blocked_wanted(const nbl_conv_geom *g, int mode) {
  if (mode == 0 || g->ns != 2 || g->M != g->C || g->k[0] * g->k[1] > NBL_DW_MAX_TAPS) return 0;
  /* measured on MobileNetV2: 1.3-3x faster at 7 and 14 columns, no gain at
   * 28, slower at 56 and 112 (there the plane kernel's rows are long) */
  return mode == 1 || (g->out[1] <= 14 && g->C >= 32);
}

static _Atomic int g_dwb_f32 = -1; /* -1 by plane size, 0 never, 1 always (tests) */
static _Atomic long g_dwb_f32_runs;
void nbl_conv_set_dw_blocked(int mode) { atomic_store(&g_dwb_f32, mode < 0 ? -1 : mode != 0); }
long nbl_conv_dw_blocked_runs(void) { return atomic_load(&g_dwb_f32_runs); }

/* The depthwise layer (multiplier 1) 16 channels at a time when that is
 * the faster way here; 0 when it did not run (the caller runs dw_start). */
static int dw_blocked_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                          const float *bias, float *y, const nbl_act *act) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f") || !nbl_dw_blocked_wanted(g, atomic_load(&g_dwb_f32)))
    return 0;
  dwb_task J = {.g = g, .x = x, .w = w, .bias = bias, .y = y, .act = act,
                .blocks = (g->C + 15) / 16};
  nbl_dw_tile_dims(g, &J.Hp, &J.Wp);
  atomic_init(&J.oom, 0);
  nbl_parallel_for(ctx, g->N * J.blocks, 1, dwb_run, &J);
  if (atomic_load(&J.oom)) return 0;
  atomic_fetch_add(&g_dwb_f32_runs, 1);
  return 1;
#else
  (void)ctx, (void)g, (void)x, (void)w, (void)bias, (void)y, (void)act;
  return 0;
#endif
}

/* ------------------------------------------------------------------ Winograd F(2x2, 3x3) */

/* 3x3, stride 1, dilation 1, one group 2-D convolutions with enough channels
 * run as Winograd F(2x2, 3x3): each 2x2 output tile comes from a 4x4 input
 * tile, and the 16 transformed positions are 16 independent [M, C] x [C, T]
 * products (T tiles), 2.25x fewer multiplications than im2col + GEMM. */
#define WINO_MAXT 160 /* most tiles per tile row (output width up to 318) */

#if defined(__x86_64__)
static void c11_pack(const float *w, int64_t M, int64_t K, float *wp);
static void c11_serial(const float *wp, const float *x, int64_t M, int64_t K, int64_t P,
                       float *y);
#endif

static int wino_ok(const nbl_conv_geom *g) {
  return g->ns == 2 && g->group == 1 && g->k[0] == 3 && g->k[1] == 3 && g->s[0] == 1 &&
         g->s[1] == 1 && g->d[0] == 1 && g->d[1] == 1 && g->C >= 16 && g->M >= 16 &&
         g->out[0] >= 2 && g->out[1] >= 2 && (g->out[1] + 1) / 2 + 1 <= WINO_MAXT;
}

typedef struct wino_task {
  const nbl_conv_geom *g;
  const float *x, *w, *bias;
  float *U, *V, *Mo, *y;
  const float *Up; /* non-NULL: U packed for the AVX-512 product, [16][M/8][C][8] */
  int64_t TH, TW, T;
  const nbl_act *act;
  int64_t band; /* tile rows per band (wino_bands) */
  _Atomic int oom;
} wino_task;

/* One of the 16 products: Mo[M][T] = U[M][C] V[C][T]. */
static void wino_product(const wino_task *t, int xi, const float *V, float *Mo, int64_t T) {
  int64_t M = t->g->M, C = t->g->C;
#if defined(__x86_64__)
  if (t->Up) {
    c11_serial(t->Up + xi * ((M + 7) / 8 * 8) * C, V, M, C, T, Mo);
    return;
  }
#endif
  nbl_sgemm(NULL, 0, 0, M, T, C, 1.0f, t->U + xi * M * C, C, V, T, 0.0f, Mo, T);
}

/* U[xi][m][c] = (G w[m][c] G^T)[xi], items m. */
static void wino_weights(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  int64_t C = t->g->C, M = t->g->M;
  for (int64_t m = begin; m < end; m++)
    for (int64_t c = 0; c < C; c++) {
      const float *k = t->w + (m * C + c) * 9;
      float a[4][3], u[4][4];
      for (int j = 0; j < 3; j++) {
        a[0][j] = k[j];
        a[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
        a[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
        a[3][j] = k[6 + j];
      }
      for (int i = 0; i < 4; i++) {
        u[i][0] = a[i][0];
        u[i][1] = 0.5f * (a[i][0] + a[i][1] + a[i][2]);
        u[i][2] = 0.5f * (a[i][0] - a[i][1] + a[i][2]);
        u[i][3] = a[i][2];
      }
      for (int xi = 0; xi < 16; xi++) t->U[(xi * M + m) * C + c] = u[xi / 4][xi % 4];
    }
}

#define WINO_VEC __attribute__((optimize("O3")))

/* One tile row of the input transform: E[r], O[r] (r < 4) are the even and
 * odd padded columns of the tile row's 4 input rows (TW + 1 entries each);
 * v[xi * CT + tw] = (B^T d B)[xi] of tile tw. Loops run across tiles. */
WINO_VEC static void wino_in_row(float (*E)[WINO_MAXT], float (*O)[WINO_MAXT], int64_t TW,
                                 float *v, int64_t CT) {
  float aE[4][WINO_MAXT], aO[4][WINO_MAXT];
  for (int64_t j = 0; j <= TW; j++) {
    aE[0][j] = E[0][j] - E[2][j];
    aE[1][j] = E[1][j] + E[2][j];
    aE[2][j] = E[2][j] - E[1][j];
    aE[3][j] = E[1][j] - E[3][j];
    aO[0][j] = O[0][j] - O[2][j];
    aO[1][j] = O[1][j] + O[2][j];
    aO[2][j] = O[2][j] - O[1][j];
    aO[3][j] = O[1][j] - O[3][j];
  }
  for (int k = 0; k < 4; k++) {
    float *v0 = v + (k * 4 + 0) * CT, *v1 = v + (k * 4 + 1) * CT;
    float *v2 = v + (k * 4 + 2) * CT, *v3 = v + (k * 4 + 3) * CT;
    const float *e = aE[k], *o = aO[k];
    for (int64_t j = 0; j < TW; j++) {
      v0[j] = e[j] - e[j + 1];
      v1[j] = o[j] + e[j + 1];
      v2[j] = e[j + 1] - o[j];
      v3[j] = o[j] - o[j + 1];
    }
  }
}

/* Input transform of tile row th of channel c into v (v[xi * CT + tw]). */
static void wino_in_one(const wino_task *t, const float *xp, int64_t th, float *v, int64_t CT) {
  const nbl_conv_geom *g = t->g;
  int64_t H = g->in[0], W = g->in[1], pt = g->pb[0], pl = g->pb[1];
  float E[4][WINO_MAXT], O[4][WINO_MAXT];
  for (int r = 0; r < 4; r++) {
    int64_t ih = th * 2 - pt + r;
    const float *xr = xp + ih * W;
    int in_row = ih >= 0 && ih < H;
    for (int64_t j = 0; j <= t->TW; j++) {
      int64_t iw = 2 * j - pl;
      E[r][j] = in_row && iw >= 0 && iw < W ? xr[iw] : 0.0f;
      O[r][j] = in_row && iw + 1 >= 0 && iw + 1 < W ? xr[iw + 1] : 0.0f;
    }
  }
  wino_in_row(E, O, t->TW, v, CT);
}

/* V[xi][c][tile] = (B^T d B)[xi] for the 4x4 input tile d, items c. */
static void wino_input(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t CT = g->C * t->T;
  for (int64_t c = begin; c < end; c++)
    for (int64_t th = 0; th < t->TH; th++)
      wino_in_one(t, t->x + c * g->in_sz, th, t->V + c * t->T + th * t->TW, CT);
}

/* One tile row of the output transform: q[xi * MT + tw] are the 16 products
 * of tile tw; y0, y1 the two output rows (OW columns, y1 NULL past the end). */
WINO_VEC static void wino_out_row(const float *q, int64_t MT, int64_t TW, float b, float *y0,
                                  float *y1, int64_t OW) {
  float r[2][2][WINO_MAXT];
  float bt[2][4][WINO_MAXT];
  for (int l = 0; l < 4; l++) {
    const float *q0 = q + l * MT, *q1 = q + (4 + l) * MT, *q2 = q + (8 + l) * MT,
                *q3 = q + (12 + l) * MT;
    for (int64_t j = 0; j < TW; j++) {
      bt[0][l][j] = q0[j] + q1[j] + q2[j];
      bt[1][l][j] = q1[j] - q2[j] - q3[j];
    }
  }
  for (int i = 0; i < 2; i++)
    for (int64_t j = 0; j < TW; j++) {
      r[i][0][j] = bt[i][0][j] + bt[i][1][j] + bt[i][2][j] + b;
      r[i][1][j] = bt[i][1][j] - bt[i][2][j] - bt[i][3][j] + b;
    }
  for (int i = 0; i < 2; i++) {
    float *yr = i ? y1 : y0;
    if (!yr) continue;
    for (int64_t j = 0; j < TW; j++) {
      yr[2 * j] = r[i][0][j];
      if (2 * j + 1 < OW) yr[2 * j + 1] = r[i][1][j];
    }
  }
}

/* y[m] tile = A^T Mo[.][m][tile] A + bias, items m. */
static void wino_output(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t OH = g->out[0], OW = g->out[1], MT = g->M * t->T;
  for (int64_t m = begin; m < end; m++) {
    float b = t->bias ? t->bias[m] : 0.0f;
    float *yp = t->y + m * OH * OW;
    for (int64_t th = 0; th < t->TH; th++) {
      int64_t oh = th * 2;
      wino_out_row(t->Mo + m * t->T + th * t->TW, MT, t->TW, b, yp + oh * OW,
                   oh + 1 < OH ? yp + (oh + 1) * OW : NULL, OW);
    }
    nbl_act_apply_2d(t->act, yp, 1, OH * OW, 0);
  }
}

/* Mo[xi] = U[xi] V[xi] ([M, C] x [C, T]), items xi, each single-threaded. */
static void wino_products(void *arg, int64_t begin, int64_t end) {
  const wino_task *t = arg;
  int64_t M = t->g->M, C = t->g->C, T = t->T;
  for (int64_t xi = begin; xi < end; xi++)
    wino_product(t, (int)xi, t->V + xi * C * T, t->Mo + xi * M * T, T);
}

/* Bands of t->band tile rows through all three stages with band-local V and
 * Mo (items: bands of image t->x): a band's transformed data is produced and
 * consumed by one thread while it is in that thread's caches. */
static void wino_bands(void *arg, int64_t begin, int64_t end) {
  wino_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t C = g->C, M = g->M, TW = t->TW, OH = g->out[0], OW = g->out[1];
  int64_t tbmax = t->band * TW;
  float *V = malloc((size_t)(16 * C * tbmax) * sizeof(float));
  float *Mo = malloc((size_t)(16 * M * tbmax) * sizeof(float));
  if (!V || !Mo) {
    free(V);
    free(Mo);
    atomic_store(&t->oom, 1);
    return;
  }
  for (int64_t b = begin; b < end; b++) {
    int64_t th0 = b * t->band, th1 = th0 + t->band < t->TH ? th0 + t->band : t->TH;
    int64_t tb = (th1 - th0) * TW;
    for (int64_t c = 0; c < C; c++)
      for (int64_t th = th0; th < th1; th++)
        wino_in_one(t, t->x + c * g->in_sz, th, V + c * tb + (th - th0) * TW, C * tb);
    for (int xi = 0; xi < 16; xi++) wino_product(t, xi, V + xi * C * tb, Mo + xi * M * tb, tb);
    int64_t r0 = 2 * th0, r1 = 2 * th1 < OH ? 2 * th1 : OH;
    for (int64_t m = 0; m < M; m++) {
      float bv = t->bias ? t->bias[m] : 0.0f;
      float *yp = t->y + m * OH * OW;
      for (int64_t th = th0; th < th1; th++) {
        int64_t oh = th * 2;
        wino_out_row(Mo + m * tb + (th - th0) * TW, M * tb, TW, bv, yp + oh * OW,
                     oh + 1 < OH ? yp + (oh + 1) * OW : NULL, OW);
      }
      nbl_act_apply_2d(t->act, yp + r0 * OW, 1, (r1 - r0) * OW, 0);
    }
  }
  free(V);
  free(Mo);
}

/* Transformed weights kept in the node's executor cache. */
typedef struct wino_wcache {
  const float *w; /* the weights they came from */
  int64_t M, C;
  float *Up; /* U packed for the AVX-512 product (NULL without it) */
  float U[];
} wino_wcache;

static void wino_cache_free(void *p) {
  wino_wcache *wc = p;
  if (wc) free(wc->Up);
  free(wc);
}

/* 1 when the node's input 1 is a constant initializer (not overridable by a
 * graph input), so its transform can be kept across runs. */
static int weights_const(nbl_kctx *ctx) {
  const nbl_node *n = ctx->node;
  if (!ctx->graph || !n || n->n_inputs < 2 || n->inputs[1] == NBL_NONE) return 0;
  const nbl_value *v = &ctx->graph->values[n->inputs[1]];
  return v->init != NULL && !(v->flags & NBL_VAL_INPUT);
}

/* Returns 0 when it cannot run (out of memory, weights not constant): the
 * caller falls back to im2col. */
static int wino_conv(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                     const float *bias, float *y, const nbl_act *act) {
  int64_t TH = (g->out[0] + 1) / 2, TW = (g->out[1] + 1) / 2, T = TH * TW;
  int64_t C = g->C, M = g->M;
  nbl_kcache *kc = nbl_kctx_cache(ctx);
  if (!kc || !weights_const(ctx)) return 0;
  wino_task t = {g, x, w, bias, NULL, NULL, NULL, y, NULL, TH, TW, T, act, 0, 0};
  wino_wcache *wc = kc->data;
  if (!wc || kc->free_fn != wino_cache_free || wc->w != w || wc->M != M || wc->C != C) {
    if (kc->free_fn) kc->free_fn(kc->data);
    kc->data = NULL;
    kc->free_fn = NULL;
    wc = malloc(sizeof *wc + (size_t)(16 * M * C) * sizeof(float));
    if (!wc) return 0;
    wc->w = w;
    wc->M = M;
    wc->C = C;
    wc->Up = NULL;
    t.U = wc->U;
    nbl_parallel_for(ctx, M, 1, wino_weights, &t);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
      int64_t Mp = (M + 7) / 8 * 8;
      wc->Up = calloc((size_t)(16 * Mp * C), sizeof(float));
      for (int64_t xi = 0; wc->Up && xi < 16; xi++)
        c11_pack(wc->U + xi * M * C, M, C, wc->Up + xi * Mp * C);
    }
#endif
    kc->data = wc;
    kc->free_fn = wino_cache_free;
  }
  float *U = wc->U;
  t.U = U;
  t.Up = wc->Up;
  int threads = ctx->threads > 1 ? ctx->threads : 1;
  if (T >= 128) {
    /* bands of about 128 tiles, as many as a multiple of the thread count,
     * of near-equal height (smaller images take the whole-image path below:
     * bands of a few tiles would make each of the 16 products too narrow) */
    int64_t want = (T + 64) / 128;
    if (want < 1) want = 1;
    want = (want + threads - 1) / threads * threads;
    if (want > TH) want = TH;
    int64_t rows = (TH + want - 1) / want;
    t.band = rows;
    int64_t nb = (TH + rows - 1) / rows;
    for (int64_t n = 0; n < g->N && !atomic_load(&t.oom); n++) {
      t.x = x + n * C * g->in_sz;
      t.y = y + n * M * g->out_sz;
      nbl_parallel_for(ctx, nb, 1, wino_bands, &t);
    }
    return !atomic_load(&t.oom);
  }
  float *V = malloc((size_t)(16 * C * T) * sizeof(float));
  float *Mo = malloc((size_t)(16 * M * T) * sizeof(float));
  if (!V || !Mo) {
    free(V);
    free(Mo);
    return 0;
  }
  t.V = V;
  t.Mo = Mo;
  for (int64_t n = 0; n < g->N; n++) {
    t.x = x + n * C * g->in_sz;
    t.y = y + n * M * g->out_sz;
    nbl_parallel_for(ctx, C, 1, wino_input, &t);
    /* the 16 products are independent: threads take whole products (one
     * parallel region, each product's operands used by one thread) */
    nbl_parallel_for(ctx, 16, 1, wino_products, &t);
    nbl_parallel_for(ctx, M, 1, wino_output, &t);
  }
  free(V);
  free(Mo);
  return 1;
}


/* Plane sizes of t (its g, mult and the rest set) and the run over all (n, m) planes. */
static void dw_start(nbl_kctx *ctx, dw_task *t) {
  const nbl_conv_geom *g = t->g;
  int64_t S = g->s[1], need_h = (g->out[0] - 1) * g->s[0] + (g->k[0] - 1) * g->d[0] + 1;
  int64_t need_w = g->out[1] + ((g->k[1] - 1) * g->d[1]) / S;
  t->S = S;
  t->Hp = g->in[0] + g->pb[0] > need_h ? g->in[0] + g->pb[0] : need_h;
  t->Wp = (g->in[1] - 1 + g->pb[1]) / S + 1 > need_w ? (g->in[1] - 1 + g->pb[1]) / S + 1 : need_w;
  /* large planes: each thread takes a band of output rows of every plane,
   * the rows of the input band it (or the layer before, split the same way)
   * touched last; small ones: whole planes per thread */
  int threads = ctx ? ctx->threads : 1;
  int bands = nbl_pixel_bands(threads, g->out_sz);
  /* the caller's row blocks (INT4) take whole planes: a band re-reads and
   * re-quantizes the input rows at its edges and recomputes rows to fill its
   * last block of 4, which cost more than the band's locality saves
   * (MobileNetV2 INT4 at 2 threads, alternating runs: 3.47 vs 3.70 ms) */
  if (t->h && t->h->rows) bands = 0;
  if (bands && g->out[0] < 2 * bands) bands = g->out[0] >= 2 * threads ? threads : 0;
  if (bands) {
    t->bands = bands;
    nbl_parallel_for(ctx, bands, 1, dw_run, t);
  } else if (ctx) {
    nbl_parallel_for(ctx, g->N * g->M, 1, dw_run, t);
  } else {
    dw_run(t, 0, g->N * g->M);
  }
}

nbl_status nbl_conv_dw_hooked(nbl_kctx *ctx, const nbl_conv_geom *g, const float *w, float *y,
                              const nbl_dw_hooks *h) {
  if (g->ns != 2 || g->C != g->group || g->M != g->C || g->k[0] * g->k[1] > NBL_DW_MAX_TAPS)
    return NBL_ERR_UNSUPPORTED;
  if (g->N == 0 || g->M == 0 || g->out_sz == 0) return NBL_OK;
  dw_task t = {g, NULL, w, NULL, y, 1, 0, 0, 0, NULL, h, 0, 0};
  dw_start(ctx, &t);
  return t.oom ? NBL_ERR_OUT_OF_MEMORY : NBL_OK;
}

/* ------------------------------------------------------------------ convolution products, AVX-512
 * y[m][p] = act(bias[m] + sum_k w[m][k] x[k][p]), x the NCHW input of a 1x1
 * convolution or the im2col matrix of any other one (one group): tiles of
 * 8 output channels x 32 pixels in registers (x rows loaded 16 pixels at a
 * time, weights broadcast from a copy packed [M/8][K][8] and kept in the
 * node's cache), bias and activation applied before the single store. For
 * the 1x1 layers of mobile networks (small K, large P) this reads x once per
 * 8 output channels from cache and writes y once; a BLAS call needs the bias
 * fill and the activation as passes of their own, and an environment that
 * pins OpenBLAS to its AVX2 kernels leaves half of this CPU's vector width
 * unused. */
#if defined(__x86_64__)
typedef struct c11_cache {
  const float *w; /* the weights it was packed from */
  int64_t M, K;
  float wp[]; /* [M/8 rounded up][K][8], rows past M zero */
} c11_cache;

static void c11_cache_free(void *p) { free(p); }

typedef struct c11_task {
  const float *x, *wp, *bias;
  float *y;
  const nbl_act *act;
  int64_t M, K, P;
  int bands;       /* > 0: thread t takes pixel band t, all channels */
  int64_t nmc, mc; /* else: 32-pixel tiles x nmc chunks of mc channels */
  int m_outer;     /* or nmc chunks of mc channels, each over all pixels */
} c11_task;

__attribute__((target("avx512f"))) static void c11_tile(const c11_task *t, int64_t m, int64_t p) {
  int np = t->P - p < 32 ? (int)(t->P - p) : 32, nr = t->M - m < 8 ? (int)(t->M - m) : 8;
  __mmask16 k0 = nbl_tail_mask(np), k1 = np > 16 ? nbl_tail_mask(np - 16) : 0;
  const float *x = t->x + p, *wb = t->wp + m * t->K;
  int64_t P = t->P, K = t->K;
  __m512 a00 = _mm512_setzero_ps(), a10 = a00, a20 = a00, a30 = a00, a40 = a00, a50 = a00,
         a60 = a00, a70 = a00;
  __m512 a01 = a00, a11 = a00, a21 = a00, a31 = a00, a41 = a00, a51 = a00, a61 = a00, a71 = a00;
  for (int64_t k = 0; k < K; k++, x += P, wb += 8) {
    __m512 x0 = _mm512_maskz_loadu_ps(k0, x), x1 = _mm512_maskz_loadu_ps(k1, x + 16), w;
#define C11_ROW(r)                           \
  w = _mm512_set1_ps(wb[r]);                 \
  a##r##0 = _mm512_fmadd_ps(x0, w, a##r##0); \
  a##r##1 = _mm512_fmadd_ps(x1, w, a##r##1);
    C11_ROW(0) C11_ROW(1) C11_ROW(2) C11_ROW(3) C11_ROW(4) C11_ROW(5) C11_ROW(6) C11_ROW(7)
#undef C11_ROW
  }
  __m512 a[8][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31},
                    {a40, a41}, {a50, a51}, {a60, a61}, {a70, a71}};
  const nbl_act *act = t->act;
  for (int r = 0; r < nr; r++) {
    __m512 b = _mm512_set1_ps(t->bias ? t->bias[m + r] : 0.0f);
    __m512 v0 = _mm512_add_ps(a[r][0], b), v1 = _mm512_add_ps(a[r][1], b);
    if (act) { /* Clip's semantics, NaN passing through */
      __m512 lo = _mm512_set1_ps(act->lo), hi = _mm512_set1_ps(act->hi);
      v0 = _mm512_min_ps(hi, _mm512_max_ps(lo, v0));
      v1 = _mm512_min_ps(hi, _mm512_max_ps(lo, v1));
    }
    float *y = t->y + (m + r) * P + p;
    _mm512_mask_storeu_ps(y, k0, v0);
    if (k1) _mm512_mask_storeu_ps(y + 16, k1, v1);
  }
}

static void c11_run(void *arg, int64_t begin, int64_t end) {
  const c11_task *t = arg;
  for (int64_t u = begin; u < end; u++) {
    if (t->bands) {
      int64_t p0, p1;
      nbl_band(t->P, u, t->bands, 32, &p0, &p1);
      for (int64_t p = p0; p < p1; p += 32)
        for (int64_t m = 0; m < t->M; m += 8) c11_tile(t, m, p);
    } else if (t->m_outer) { /* chunk u of channels over every pixel: weights read once */
      int64_t m0 = u * t->mc, m1 = m0 + t->mc < t->M ? m0 + t->mc : t->M;
      for (int64_t m = m0; m < m1; m += 8)
        for (int64_t p = 0; p < t->P; p += 32) c11_tile(t, m, p);
    } else {
      int64_t p = u / t->nmc * 32, m0 = u % t->nmc * t->mc;
      int64_t m1 = m0 + t->mc < t->M ? m0 + t->mc : t->M;
      for (int64_t m = m0; m < m1; m += 8) c11_tile(t, m, p);
    }
  }
}

/* wp = w[M][K] packed for c11_tile: [M/8 rounded up][K][8], wp zeroed by the caller. */
static void c11_pack(const float *w, int64_t M, int64_t K, float *wp) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) wp[(m / 8 * K + k) * 8 + m % 8] = w[m * K + k];
}

/* Few pixels and weights past the L2: each weight block once, over every
 * pixel tile (ResNet-18's last layers: 9.4 MB of weights, 49 pixels). */
static int c11_m_outer(int64_t M, int64_t K, int64_t P) {
  return (P + 31) / 32 <= 8 && M * K >= 32768;
}

/* y[M][P] = wp x[K][P] on the calling thread, wp packed by c11_pack. */
static void c11_serial(const float *wp, const float *x, int64_t M, int64_t K, int64_t P,
                       float *y) {
  c11_task t = {x, wp, NULL, y, NULL, M, K, P, 0, 1, (M + 7) / 8 * 8, c11_m_outer(M, K, P)};
  c11_run(&t, 0, t.m_outer ? 1 : (P + 31) / 32);
}

static int c11_product(nbl_kctx *ctx, const c11_cache *cc, int64_t M, int64_t K, int64_t P, const float *x,
                       const float *bias, float *y, const nbl_act *act);

/* y[M][P] = act(bias + w[M][K] x[K][P]) for one image with the kernel above;
 * 1 when it ran (AVX-512 and memory for the packed weights). Constant weights
 * are packed once into the node's cache; weights that change between runs
 * (a training graph's parameters, a backward op's operands) are packed into
 * *scratch, which the caller keeps across the images of one call and frees
 * (packing costs M K copies against the product's M K P multiply-adds). */
static int conv_gemm_avx512(nbl_kctx *ctx, int64_t M, int64_t K, int64_t P, const float *x,
                            const float *w, const float *bias, float *y, const nbl_act *act,
                            c11_cache **scratch) {
  if (!ctx || !__builtin_cpu_supports("avx512f")) return 0;
  int64_t Mb = (M + 7) / 8;
  c11_cache *cc;
  if (!weights_const(ctx)) {
    cc = *scratch;
    if (!cc || cc->w != w || cc->M != M || cc->K != K) {
      free(cc);
      *scratch = cc = malloc(sizeof *cc + sizeof(float) * (size_t)(Mb * 8 * K));
      if (!cc) return 0;
      cc->w = w, cc->M = M, cc->K = K;
      c11_pack(w, M, K, cc->wp);
    }
    return c11_product(ctx, cc, M, K, P, x, bias, y, act);
  }
  nbl_kcache *kc = nbl_kctx_cache(ctx);
  if (!kc) return 0;
  cc = kc->data;
  if (!cc || kc->free_fn != c11_cache_free || cc->w != w || cc->M != M || cc->K != K) {
    if (kc->free_fn) kc->free_fn(kc->data);
    kc->data = NULL;
    kc->free_fn = NULL;
    cc = calloc(1, sizeof *cc + sizeof(float) * (size_t)(Mb * 8 * K));
    if (!cc) return 0;
    cc->w = w, cc->M = M, cc->K = K;
    c11_pack(w, M, K, cc->wp);
    kc->data = cc;
    kc->free_fn = c11_cache_free;
  }
  return c11_product(ctx, cc, M, K, P, x, bias, y, act);
}

/* The product of conv_gemm_avx512 with the packed weights cc. */
static int c11_product(nbl_kctx *ctx, const c11_cache *cc, int64_t M, int64_t K, int64_t P, const float *x,
                       const float *bias, float *y, const nbl_act *act) {
  int64_t Mb = (M + 7) / 8;
  int threads = ctx->threads > 1 ? ctx->threads : 1;
  c11_task t = {x, cc->wp, bias, y, act, M, K, P, nbl_pixel_bands(threads, P), 1, Mb * 8, 0};
  int64_t tiles = (P + 31) / 32;
  if (!t.bands && c11_m_outer(M, K, P)) {
    t.m_outer = 1;
    nbl_split_rows(M, 8, 2 * threads, &t.nmc, &t.mc);
    nbl_parallel_for(ctx, t.nmc, 1, c11_run, &t);
    return 1;
  }
  if (!t.bands && threads > 1 && tiles < 2 * threads) /* few pixels: split the channels too */
    nbl_split_rows(M, 8, (2 * threads + tiles - 1) / tiles, &t.nmc, &t.mc);
  nbl_parallel_for(ctx, t.bands ? t.bands : tiles * t.nmc, 1, c11_run, &t);
  return 1;
}
#endif

nbl_status nbl_conv_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                        const float *bias, float *y) {
  return nbl_conv_f32_act(ctx, g, x, w, bias, y, NULL);
}

nbl_status nbl_conv_f32_act(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                            const float *bias, float *y, const nbl_act *act) {
  if (act && !act->kind) act = NULL;
  int64_t Cg = g->C / g->group, Mg = g->M / g->group;
  if (g->N == 0 || g->M == 0 || g->out_sz == 0) return NBL_OK;
  if (g->ns == 2 && Cg == 1 && g->group == g->C) {
    if (dw_blocked_f32(ctx, g, x, w, bias, y, act)) return NBL_OK;
    dw_task t = {g, x, w, bias, y, Mg, 0, 0, 0, act, NULL, 0, 0};
    dw_start(ctx, &t);
    return NBL_OK;
  }
#if defined(__x86_64__)
  /* 1x1 and im2col products with one group: the AVX-512 kernel below */
  int own = g->group == 1 && ctx && __builtin_cpu_supports("avx512f");
  c11_cache *scratch = NULL; /* weights packed for this call when they are not constant */
#else
  int own = 0;
#endif
  /* Winograd, except on outputs of 64 pixels or fewer when the AVX-512
   * kernel runs: its 16 products then have too few columns to beat one
   * direct product (ResNet-18's 7x7 layers, measured) */
  if (ctx && wino_ok(g) && !(own && g->out_sz <= 64) && wino_conv(ctx, g, x, w, bias, y, act))
    return NBL_OK;
  int direct = nbl_conv_pointwise(g);
#if defined(__x86_64__)
  if (direct && own) {
    for (int64_t n = 0; n < g->N; n++)
      if (!conv_gemm_avx512(ctx, g->M, g->C, g->out_sz, x + n * g->C * g->in_sz, w, bias,
                            y + n * g->M * g->out_sz, act, &scratch))
        own = 0;
    if (own) {
      free(scratch);
      return NBL_OK;
    }
  }
#endif
  int64_t kdim = Cg * g->k_sz;
  float *col = NULL;
  if (!direct) {
    col = malloc((size_t)(kdim ? kdim : 1) * (size_t)g->out_sz * sizeof(float));
    if (!col) {
      if (ctx) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory for the im2col buffer");
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory for the im2col buffer");
    }
  }
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t gr = 0; gr < g->group; gr++) {
      const float *xg = x + (n * g->C + gr * Cg) * g->in_sz;
      const float *wg = w + gr * Mg * kdim;
      float *yg = y + (n * g->M + gr * Mg) * g->out_sz;
      const float *b = xg;
      if (!direct) {
        if (g->ns == 2 && ctx) {
          im2col_task it = {g, xg, col};
          nbl_parallel_for(ctx, Cg * g->k[0], 1, im2col_run, &it);
        } else {
          nbl_im2col_f32(g, Cg, xg, col);
        }
        b = col;
      }
#if defined(__x86_64__)
      if (own && conv_gemm_avx512(ctx, Mg, kdim, g->out_sz, b, wg, bias, yg, act, &scratch)) continue;
#endif
      /* the bias goes into C first and the product adds to it (beta 1): one
       * pass over the output instead of a zeroing pass and an add pass */
      sgemm_bias_act(ctx, 0, 0, Mg, g->out_sz, kdim, 1.0f, wg, kdim, b, g->out_sz, 0.0f, yg,
                     g->out_sz, bias ? bias + gr * Mg : NULL, act);
    }
  free(col);
#if defined(__x86_64__)
  free(scratch);
#endif
  return NBL_OK;
}

/* ------------------------------------------------------------------ dtype conversion */

double *nbl_to_f64(const nbl_rt_tensor *t) {
  int64_t n = t->numel;
  double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
  if (!v) return NULL;
  if (t->dtype == NBL_DT_FLOAT) {
    const float *f = t->data;
    for (int64_t i = 0; i < n; i++) v[i] = f[i];
  } else if (t->dtype == NBL_DT_DOUBLE) {
    if (n > 0) memcpy(v, t->data, (size_t)n * sizeof(double));
  } else {
    for (int64_t i = 0; i < n; i++) v[i] = nbl_rt_get_f64(t, i);
  }
  return v;
}

void nbl_from_f64(nbl_rt_tensor *t, const double *v) {
  int64_t n = t->numel;
  if (t->dtype == NBL_DT_FLOAT) {
    float *f = t->data;
    for (int64_t i = 0; i < n; i++) f[i] = (float)v[i];
  } else if (t->dtype == NBL_DT_DOUBLE) {
    if (n > 0) memcpy(t->data, v, (size_t)n * sizeof(double));
  } else {
    for (int64_t i = 0; i < n; i++) nbl_rt_set_f64(t, i, v[i]);
  }
}
