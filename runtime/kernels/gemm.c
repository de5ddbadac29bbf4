/* gemm.c - FP32 GEMM (OpenBLAS or nibble's own packed kernel), the
 * activation applied to finished blocks, the double reference product and
 * dtype conversion helpers; see gemm.h. The convolutions built on the
 * products are in conv_im2col.c (and the paths it chooses from). */
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/conv_paths.h"
#include "runtime/core/cpu.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
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
  return nbl_cpu_has(NBL_CPU_AVX2 | NBL_CPU_FMA) ? micro_avx2 : micro_generic;
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

/* one row; avx: nbl_cpu_has(NBL_CPU_AVX), asked once per call of
 * nbl_act_apply_2d */
static void act_row(float *y, int64_t n, float lo, float hi, int avx) {
#if defined(__x86_64__)
  if (avx) {
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

/* y[i] += r[i], i < n */
static void add_row(float *restrict y, const float *restrict r, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += r[i];
}

void nbl_act_apply_2d(const nbl_act *act, float *y, int64_t rows, int64_t cols, int64_t ld) {
  if (!nbl_act_on(act)) return;
  int avx = nbl_cpu_has(NBL_CPU_AVX);
  for (int64_t r = 0; r < rows; r++) {
    if (act->res) add_row(y + r * ld, nbl_act_res(act, y + r * ld), cols);
    if (act->kind) act_row(y + r * ld, cols, act->lo, act->hi, avx);
  }
}

static char blas_info[160];

static void blas_info_init(void) {
  char *blas = blas_info;
#if defined(NBL_HAVE_CBLAS) && defined(OPENBLAS_VERSION)
  const char *core = openblas_get_corename(), *v = OPENBLAS_VERSION; /* " OpenBLAS 0.3.21 " */
  while (*v == ' ') v++;
  int vlen = (int)strlen(v);
  while (vlen > 0 && v[vlen - 1] == ' ') vlen--;
  snprintf(blas, sizeof blas_info, "%.*s (%s kernels)", vlen, v, core ? core : "?");
#elif defined(NBL_HAVE_CBLAS)
  snprintf(blas, sizeof blas_info, "a cblas library");
#else
  snprintf(blas, sizeof blas_info, "nibble's own blocked kernel (no BLAS)");
#endif
}

const char *nbl_blas_coretype_hint(void) {
#if defined(NBL_HAVE_CBLAS) && defined(OPENBLAS_VERSION)
  const char *core = openblas_get_corename();
  if (!core || strcmp(core, "Prescott") != 0 || getenv("OPENBLAS_CORETYPE")) return NULL;
  const unsigned f = nbl_cpu_features(), avx512 = NBL_CPU_AVX512F | NBL_CPU_AVX512BW | NBL_CPU_AVX512DQ | NBL_CPU_AVX512VL;
  if ((f & avx512) == avx512) return "SkylakeX";
  if ((f & (NBL_CPU_AVX2 | NBL_CPU_FMA)) == (NBL_CPU_AVX2 | NBL_CPU_FMA)) return "Haswell";
#endif
  return NULL;
}

const char *nbl_gemm_info(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, blas_info_init);
  return blas_info;
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

#if defined(NBL_HAVE_CBLAS) && defined(OPENBLAS_VERSION)
/* OpenBLAS's pthreads build (the one Debian's libopenblas0-pthread ships)
 * exports this: it stops its worker threads (what it does before a fork). */
extern int blas_thread_shutdown_(void) __attribute__((weak));
#endif

void nbl_blas_single_thread(void) {
#if defined(NBL_HAVE_CBLAS) && defined(OPENBLAS_VERSION)
  static _Atomic int done = 0;
  int expect = 0;
  if (!atomic_compare_exchange_strong(&done, &expect, 1)) return;
  openblas_set_num_threads(1);
  /* Its workers, started when the library loaded, would otherwise spin on
   * the cores for their timeout (2^28 cycles, about 0.1 s) before sleeping,
   * against the pool's threads: a 2-thread LeNet-5 training step took
   * 3.0 ms instead of 1.4 during that time on a 2-core machine. */
  if (blas_thread_shutdown_) blas_thread_shutdown_();
#endif
}

void nbl_sgemm(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
               float *C, int64_t ldc) {
  nbl_sgemm_act(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

void nbl_sgemm_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                   float beta, float *C, int64_t ldc, const nbl_act *act) {
  nbl_sgemm_bias_act(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, act);
}

void nbl_sgemm_bias_act(nbl_kctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N,
                        int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float beta, float *C, int64_t ldc, const float *row_bias,
                        const nbl_act *act) {
  if (M <= 0 || N <= 0) return;
  if (!nbl_act_on(act)) act = NULL;
  if (row_bias) beta = 1.0f;
#ifdef NBL_HAVE_CBLAS
  if (K > 0 && M < INT_MAX && N < INT_MAX && K < INT_MAX && lda < INT_MAX && ldb < INT_MAX &&
      ldc < INT_MAX) {
    nbl_blas_single_thread();
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
