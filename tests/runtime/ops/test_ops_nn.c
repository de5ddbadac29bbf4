/* test_ops_nn.c - nn and quant kernels: GEMM fast paths against the double
 * reference at tile-boundary sizes, convolution against a naive loop written
 * here, and numeric edge cases (empty tensors, broadcasting, NaN, rounding)
 * against hand-computed values, run through one-node graphs. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "one_node.h"
#include "test_data.h"
#include "runtime/kernels/gemm.h"
#include "ck_elem.h"

/* ------------------------------------------------------------------ helpers */

static uint32_t rng = 12345;
static float *frandv(int64_t n) { return td_lcg_floats(&rng, n); }

/* Run one node (one_node.h) with every output requested. */
static nbl_status run_node(const char *op, int opset, one_attr_fn af, int n_in,
                           const nbl_host_tensor *ins, int n_out, nbl_host_tensor *outs,
                           int reference, int threads) {
  return one_call(op, opset, af, n_in, ins, n_out, NULL, outs, reference, threads);
}

/* Run on both paths; both must succeed and agree to rtol; returns the fast output 0. */
static nbl_host_tensor run_both(const char *op, int opset, one_attr_fn af, int n_in,
                                const nbl_host_tensor *ins, double tol) {
  nbl_host_tensor f, r;
  nbl_status st = run_node(op, opset, af, n_in, ins, 1, &f, 0, 2);
  ck_assert_msg(st == NBL_OK, "%s fast: %s", op, nbl_last_error());
  st = run_node(op, opset, af, n_in, ins, 1, &r, 1, 1);
  ck_assert_msg(st == NBL_OK, "%s ref: %s", op, nbl_last_error());
  ck_assert_int_eq(f.rank, r.rank);
  ck_assert_uint_eq(f.nbytes, r.nbytes);
  if (f.dtype == NBL_DT_FLOAT) {
    const float *a = f.data, *b = r.data;
    for (size_t i = 0; i < f.nbytes / 4; i++)
      ck_elem_msg(a[i] == b[i] || (isnan(a[i]) && isnan(b[i])) || fabsf(a[i] - b[i]) <= tol * (1 + fabsf(b[i])), "%s: elem %zu fast %g ref %g", op,
                  i, a[i], b[i]);
  }
  free(r.data);
  return f;
}

/* ------------------------------------------------------------------ GEMM */

static const int64_t sizes[] = {1, 7, 8, 9, 15, 16, 17, 63, 64, 65};
#define NS (sizeof sizes / sizeof sizes[0])

static void check_gemm(int use_blas, int ta, int tb) {
  for (size_t a = 0; a < NS; a++)
    for (size_t b = 0; b < NS; b++)
      for (size_t k = 0; k < NS; k++) {
        int64_t M = sizes[a], N = sizes[b], K = sizes[k];
        float *A = frandv(M * K), *B = frandv(K * N), *C = frandv(M * N);
        double *Ad = malloc(sizeof(double) * (size_t)(M * K)), *Bd = malloc(sizeof(double) * (size_t)(K * N)),
               *Cd = malloc(sizeof(double) * (size_t)(M * N));
        for (int64_t i = 0; i < M * K; i++) Ad[i] = A[i];
        for (int64_t i = 0; i < K * N; i++) Bd[i] = B[i];
        for (int64_t i = 0; i < M * N; i++) Cd[i] = C[i];
        float alpha = 0.75f, beta = (k & 1) ? 0.5f : 0.0f;
        if (beta == 0.0f) C[0] = NAN; /* beta == 0: C must not be read */
        int64_t lda = ta ? M : K, ldb = tb ? K : N;
        if (use_blas)
          nbl_sgemm(NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
        else
          nbl_sgemm_portable(NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
        nbl_dgemm_ref(ta, tb, M, N, K, alpha, Ad, lda, Bd, ldb, beta, Cd, N);
        for (int64_t i = 0; i < M * N; i++)
          ck_elem_msg(fabs(C[i] - Cd[i]) <= 1e-5 * (double)K,
                      "M=%lld N=%lld K=%lld ta=%d tb=%d i=%lld: %g vs %g", (long long)M,
                      (long long)N, (long long)K, ta, tb, (long long)i, C[i], Cd[i]);
        free(A), free(B), free(C), free(Ad), free(Bd), free(Cd);
      }
}

START_TEST(test_gemm_portable_tiles) {
  check_gemm(0, _i >> 1, _i & 1);
}
END_TEST

START_TEST(test_gemm_blas_tiles) {
  check_gemm(1, _i >> 1, _i & 1);
}
END_TEST

/* Big enough to be split across threads; fast (threads=2) vs reference. */
static void attr_gemm_tb(nbl_graph *g, nbl_id n) {
  nbl_node_set_attr_int(g, n, "transB", 1);
  nbl_node_set_attr_float(g, n, "alpha", 0.5f);
  nbl_node_set_attr_float(g, n, "beta", 2.0f);
}
START_TEST(test_gemm_node_threads) {
  int64_t M = 130, K = 257, N = 97;
  int64_t da[2] = {M, K}, db[2] = {N, K}, dc[1] = {N};
  float *A = frandv(M * K), *B = frandv(N * K), *C = frandv(N);
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 2, da, A), ht(NBL_DT_FLOAT, 2, db, B),
                           ht(NBL_DT_FLOAT, 1, dc, C)};
  nbl_host_tensor y = run_both("Gemm", 13, attr_gemm_tb, 3, in, 1e-5);
  ck_assert_int_eq(y.dims[0], M);
  ck_assert_int_eq(y.dims[1], N);
  /* spot check element (3, 5) by hand */
  double s = 0;
  for (int64_t p = 0; p < K; p++) s += (double)A[3 * K + p] * B[5 * K + p];
  ck_assert(fabs(((float *)y.data)[3 * N + 5] - (0.5 * s + 2.0 * C[5])) < 1e-4);
  free(y.data), free(A), free(B), free(C);
}
END_TEST

/* One row (a classifier on one image): the matrix-vector path, split across
 * threads by columns, transB = 1 (Gemm) and 0 (MatMul), fast vs reference. */
START_TEST(test_gemm_one_row_threads) {
  int64_t K = 1283, N = 1001;
  int64_t da[2] = {1, K}, db[2] = {N, K}, dbt[2] = {K, N}, dc[1] = {N};
  float *A = frandv(K), *B = frandv(N * K), *C = frandv(N);
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 2, da, A), ht(NBL_DT_FLOAT, 2, db, B),
                           ht(NBL_DT_FLOAT, 1, dc, C)};
  nbl_host_tensor y = run_both("Gemm", 13, attr_gemm_tb, 3, in, 1e-5);
  ck_assert_int_eq(y.dims[0], 1);
  ck_assert_int_eq(y.dims[1], N);
  double s = 0;
  for (int64_t p = 0; p < K; p++) s += (double)A[p] * B[(N - 1) * K + p];
  ck_assert(fabs(((float *)y.data)[N - 1] - (0.5 * s + 2.0 * C[N - 1])) < 1e-4);
  free(y.data);
  nbl_host_tensor in2[2] = {ht(NBL_DT_FLOAT, 2, da, A), ht(NBL_DT_FLOAT, 2, dbt, B)};
  y = run_both("MatMul", 13, NULL, 2, in2, 1e-5);
  ck_assert_int_eq(y.dims[1], N);
  s = 0;
  for (int64_t p = 0; p < K; p++) s += (double)A[p] * B[p * N + 7];
  ck_assert(fabs(((float *)y.data)[7] - s) < 1e-4);
  free(y.data), free(A), free(B), free(C);
}
END_TEST

/* ------------------------------------------------------------------ Conv */

typedef struct conv_case {
  int64_t N, C, H, W, M, KH, KW, group, sh, sw, dh, dw, pt, pl, pb, pr;
} conv_case;

static conv_case cur_conv;
static void attr_conv(nbl_graph *g, nbl_id n) {
  const conv_case *c = &cur_conv;
  int64_t st[2] = {c->sh, c->sw}, dl[2] = {c->dh, c->dw}, pd[4] = {c->pt, c->pl, c->pb, c->pr};
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
  nbl_node_set_attr_ints(g, n, "dilations", 2, dl);
  nbl_node_set_attr_ints(g, n, "pads", 4, pd);
  nbl_node_set_attr_int(g, n, "group", c->group);
}

START_TEST(test_conv_vs_naive) {
  static const conv_case cases[] = {
      {1, 3, 9, 11, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},   /* plain 3x3 pad 1 */
      {2, 4, 10, 7, 6, 3, 2, 2, 2, 1, 1, 2, 0, 1, 2, 0},   /* groups, stride, dilation, asym pads */
      {1, 6, 8, 8, 6, 3, 3, 6, 2, 2, 1, 1, 1, 1, 1, 1},    /* depthwise, stride 2 */
      {1, 3, 8, 8, 6, 3, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2},    /* depthwise multiplier 2, dilation 2 */
      {2, 16, 5, 5, 17, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0},  /* 1x1 direct */
      {1, 5, 13, 13, 65, 5, 5, 1, 3, 2, 1, 1, 2, 0, 1, 3}, /* 65 output channels */
      {0, 3, 5, 5, 2, 3, 3, 1, 1, 1, 1, 1, 0, 0, 0, 0},    /* empty batch */
  };
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    const conv_case *c = &cases[ci];
    cur_conv = *c;
    int64_t Cg = c->C / c->group, Mg = c->M / c->group;
    int64_t dx[4] = {c->N, c->C, c->H, c->W}, dw[4] = {c->M, Cg, c->KH, c->KW}, db[1] = {c->M};
    float *x = frandv(c->N * c->C * c->H * c->W), *w = frandv(c->M * Cg * c->KH * c->KW),
          *b = frandv(c->M);
    nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 4, dx, x), ht(NBL_DT_FLOAT, 4, dw, w),
                             ht(NBL_DT_FLOAT, 1, db, b)};
    nbl_host_tensor y = run_both("Conv", 11, attr_conv, 3, in, 1e-5);
    int64_t OH = (c->H + c->pt + c->pb - (c->KH - 1) * c->dh - 1) / c->sh + 1;
    int64_t OW = (c->W + c->pl + c->pr - (c->KW - 1) * c->dw - 1) / c->sw + 1;
    ck_assert_int_eq(y.dims[0], c->N);
    ck_assert_int_eq(y.dims[2], OH);
    ck_assert_int_eq(y.dims[3], OW);
    const float *yv = y.data;
    for (int64_t n = 0; n < c->N; n++)
      for (int64_t m = 0; m < c->M; m++)
        for (int64_t oh = 0; oh < OH; oh++)
          for (int64_t ow = 0; ow < OW; ow++) {
            double s = b[m];
            int64_t gr = m / Mg;
            for (int64_t cc = 0; cc < Cg; cc++)
              for (int64_t kh = 0; kh < c->KH; kh++)
                for (int64_t kw = 0; kw < c->KW; kw++) {
                  int64_t ih = oh * c->sh - c->pt + kh * c->dh, iw = ow * c->sw - c->pl + kw * c->dw;
                  if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                  s += (double)x[((n * c->C + gr * Cg + cc) * c->H + ih) * c->W + iw] *
                       w[((m * Cg + cc) * c->KH + kh) * c->KW + kw];
                }
            float got = yv[((n * c->M + m) * OH + oh) * OW + ow];
            ck_assert_msg(fabs(got - s) < 1e-4, "case %zu: %g vs %g", ci, got, s);
          }
    free(y.data), free(x), free(w), free(b);
  }
}
END_TEST

/* ------------------------------------------------------------------ MatMul */

START_TEST(test_matmul_shapes) {
  /* 1-D x 1-D = scalar (inner product) */
  float a[3] = {1, 2, 3}, b[3] = {4, -5, 6};
  int64_t d3[1] = {3};
  nbl_host_tensor in[2] = {ht(NBL_DT_FLOAT, 1, d3, a), ht(NBL_DT_FLOAT, 1, d3, b)};
  nbl_host_tensor y = run_both("MatMul", 13, NULL, 2, in, 0);
  ck_assert_int_eq(y.rank, 0);
  ck_assert_float_eq(((float *)y.data)[0], 12.0f);
  free(y.data);
  /* broadcast batch: [2,1,3,4] x [3,4,5] -> [2,3,3,5] */
  int64_t da[4] = {2, 1, 3, 4}, db[3] = {3, 4, 5};
  float *A = frandv(24), *B = frandv(60);
  nbl_host_tensor in2[2] = {ht(NBL_DT_FLOAT, 4, da, A), ht(NBL_DT_FLOAT, 3, db, B)};
  y = run_both("MatMul", 13, NULL, 2, in2, 1e-6);
  ck_assert_int_eq(y.rank, 4);
  ck_assert_int_eq(y.dims[1], 3);
  /* element [1, 2, 1, 3] = sum_k A[1,0,1,k] B[2,k,3] */
  double s = 0;
  for (int k = 0; k < 4; k++) s += (double)A[12 + 4 + k] * B[40 + k * 5 + 3];
  ck_assert(fabs(((float *)y.data)[((1 * 3 + 2) * 3 + 1) * 5 + 3] - s) < 1e-6);
  free(y.data), free(A), free(B);
  /* K = 0: result is all zeros of shape [2, 3] */
  int64_t dk0a[2] = {2, 0}, dk0b[2] = {0, 3};
  float dummy[1] = {0};
  nbl_host_tensor in3[2] = {ht(NBL_DT_FLOAT, 2, dk0a, dummy), ht(NBL_DT_FLOAT, 2, dk0b, dummy)};
  y = run_both("MatMul", 13, NULL, 2, in3, 0);
  ck_assert_int_eq(y.dims[0], 2);
  ck_assert_int_eq(y.dims[1], 3);
  for (int i = 0; i < 6; i++) ck_assert_float_eq(((float *)y.data)[i], 0.0f);
  free(y.data);
  /* int32 MatMul is exact */
  int32_t ia[4] = {100000, 2, -3, 4}, ib[4] = {30000, 1, 1, -1};
  int64_t d22[2] = {2, 2};
  nbl_host_tensor in4[2] = {ht(NBL_DT_INT32, 2, d22, ia), ht(NBL_DT_INT32, 2, d22, ib)};
  y = run_both("MatMul", 13, NULL, 2, in4, 0);
  ck_assert_int_eq(((int32_t *)y.data)[0], (int32_t)(uint32_t)(100000LL * 30000 + 2));
  ck_assert_int_eq(((int32_t *)y.data)[3], -3 - 4);
  free(y.data);
}
END_TEST

/* ------------------------------------------------------------------ pooling and norms */

static void attr_pool22(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {2, 2}, p[4] = {1, 1, 0, 0};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "strides", 2, k);
  nbl_node_set_attr_ints(g, n, "pads", 4, p);
}
/* 2 x 2, stride 2, no padding (LeNet's pooling): the short loop, and with
 * ceil_mode the last row and column of windows past the plane by the scan */
static void attr_pool22_nopad(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {2, 2};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "strides", 2, k);
}
static void attr_pool22_ceil(nbl_graph *g, nbl_id n) {
  attr_pool22_nopad(g, n);
  nbl_node_set_attr_int(g, n, "ceil_mode", 1);
}
static void attr_pool22_incl(nbl_graph *g, nbl_id n) {
  attr_pool22(g, n);
  nbl_node_set_attr_int(g, n, "count_include_pad", 1);
}

static void attr_pool33s2(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {3, 3}, st[2] = {2, 2}, p[4] = {1, 1, 1, 1};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
  nbl_node_set_attr_ints(g, n, "pads", 4, p);
}
static void attr_pool_dil(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {2, 3}, st[2] = {1, 3}, d[2] = {2, 2}, p[4] = {0, 2, 1, 0};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
  nbl_node_set_attr_ints(g, n, "dilations", 2, d);
  nbl_node_set_attr_ints(g, n, "pads", 4, p);
}

static void attr_pool33s1(nbl_graph *g, nbl_id n) { /* GoogLeNet's branch pooling */
  int64_t k[2] = {3, 3}, p[4] = {1, 1, 1, 1};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "pads", 4, p);
}
static void attr_pool33s2_ceil(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {3, 3}, st[2] = {2, 2};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
  nbl_node_set_attr_int(g, n, "ceil_mode", 1);
}
static void attr_pool_far_pads(nbl_graph *g, nbl_id n) { /* windows wholly in the padding */
  int64_t k[2] = {2, 2}, p[4] = {3, 0, 0, 3};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "pads", 4, p);
}

/* The vectorized MaxPool (rows of 8 lanes; 16 with AVX-512 at column
 * strides 1 and 2) against the reference kernel, with NaN inside vectors,
 * in tails and next to the padding, on planes of 37 and 70 columns. */
START_TEST(test_maxpool_vector) {
  const int64_t widths[2] = {37, 70};
  for (int wi = 0; wi < 2; wi++) {
    int64_t W = widths[wi], d[4] = {2, 3, 21, W};
    int64_t n = 2 * 3 * 21 * W;
    float *x = frandv(n);
    for (int64_t i = 0; i < n; i += 97) x[i] = NAN;
    x[W - 1] = NAN; /* last column of the first row */
    nbl_host_tensor in[1] = {ht(NBL_DT_FLOAT, 4, d, x)};
    void (*attrs[])(nbl_graph *, nbl_id) = {attr_pool33s2, attr_pool_dil, attr_pool33s1, attr_pool33s2_ceil,
                                            attr_pool_far_pads};
    for (size_t a = 0; a < sizeof attrs / sizeof attrs[0]; a++) {
      nbl_host_tensor y = run_both("MaxPool", 12, attrs[a], 1, in, 0);
      free(y.data);
    }
    free(x);
  }
}
END_TEST

static void attr_pool33s2_col(nbl_graph *g, nbl_id n) {
  attr_pool33s2(g, n);
  nbl_node_set_attr_int(g, n, "storage_order", 1);
}

/* Stride 1 x 1 (the vector scans' contiguous loads), 3 x 2 with pads. */
static void attr_pool32s1(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {3, 2}, p[4] = {1, 0, 1, 1};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "pads", 4, p);
}
/* Column stride 3: no vector scan (the scalar loop). */
static void attr_pool_s3(nbl_graph *g, nbl_id n) {
  int64_t k[2] = {2, 3}, st[2] = {2, 3};
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, k);
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
}

/* MaxPool with Indices on x [d]: the fast kernel at 1 and 2 threads against
 * the reference, values and indices exactly. */
static void maxpool_idx_check(const int64_t *d, const float *x, one_attr_fn af, const char *what) {
  nbl_host_tensor in[1] = {ht(NBL_DT_FLOAT, 4, d, x)}, r[2];
  ck_assert_msg(run_node("MaxPool", 12, af, 1, in, 2, r, 1, 1) == NBL_OK, "%s", nbl_last_error());
  for (int threads = 1; threads <= 2; threads++) {
    nbl_host_tensor f[2];
    ck_assert_msg(run_node("MaxPool", 12, af, 1, in, 2, f, 0, threads) == NBL_OK, "%s", nbl_last_error());
    ck_assert_uint_eq(f[0].nbytes, r[0].nbytes);
    ck_assert_uint_eq(f[1].nbytes, r[1].nbytes);
    ck_assert_int_eq(f[1].dtype, NBL_DT_INT64);
    const float *fy = f[0].data, *ry = r[0].data;
    const int64_t *fi = f[1].data, *ri = r[1].data;
    for (size_t i = 0; i < f[0].nbytes / 4; i++) {
      ck_elem_msg(fy[i] == ry[i] || (isnan(fy[i]) && isnan(ry[i])), "%s, %d threads, elem %zu: %g vs %g", what,
                  threads, i, fy[i], ry[i]);
      ck_elem_msg(fi[i] == ri[i], "%s, %d threads, index %zu: %lld vs %lld", what, threads, i, (long long)fi[i],
                  (long long)ri[i]);
    }
    for (int k = 0; k < 2; k++) free(f[k].data);
  }
  for (int k = 0; k < 2; k++) free(r[k].data);
}

/* MaxPool with its Indices output (training graphs): the float fast kernel
 * (the vector row scans under the ISA cap of the run, 2 x 2 stride 2 by
 * their own loop) against the reference, values and indices exactly, with
 * NaN, ties (equal values: the first in window order wins), padding,
 * dilation, both storage orders, strides 1, 2 and 3, and 2 x 2 windows of
 * stride 2 without padding on odd planes (with and without ceil_mode), on
 * planes narrower than a vector and wider than two (tails of 16 and 8
 * lanes; two output rows of at most 8 columns per AVX-512 vector). */
START_TEST(test_maxpool_indices) {
  one_attr_fn attrs[8] = {attr_pool22,       attr_pool33s2,     attr_pool_dil, attr_pool33s2_col,
                          attr_pool22_nopad, attr_pool22_ceil, attr_pool32s1, attr_pool_s3};
  const int64_t shapes[4][4] = {{2, 3, 13, 11}, {1, 2, 9, 70}, {1, 1, 4, 37}, {1, 2, 10, 8}};
  for (int sh = 0; sh < 4; sh++) {
    const int64_t *d = shapes[sh];
    int64_t n = d[0] * d[1] * d[2] * d[3];
    float *x = frandv(n);
    for (int64_t i = 0; i < n; i += 53) x[i] = NAN;
    for (int64_t i = 5; i < n; i += 7) x[i] = 0.5f; /* ties */
    for (int64_t i = 100; i < 160 && i < n; i++) x[i] = 0.25f; /* whole windows of ties */
    for (int a = 0; a < 8; a++) {
      char what[64];
      snprintf(what, sizeof what, "shape %d attrs %d", sh, a);
      maxpool_idx_check(d, x, attrs[a], what);
    }
    free(x);
  }
  /* every 2 x 2 window over the values {NaN, -1, 0, 1}: 256 windows of one
   * plane 2 x 512 (ties and NaN at each position, e.g. a NaN c before a
   * greater d) */
  int64_t d[4] = {1, 1, 2, 512};
  float *x = malloc(sizeof(float) * 1024);
  const float val[4] = {NAN, -1.0f, 0.0f, 1.0f};
  for (int w = 0; w < 256; w++) {
    x[2 * w] = val[w & 3], x[2 * w + 1] = val[(w >> 2) & 3];
    x[512 + 2 * w] = val[(w >> 4) & 3], x[512 + 2 * w + 1] = val[(w >> 6) & 3];
  }
  maxpool_idx_check(d, x, attr_pool22_nopad, "all 2x2 windows");
  maxpool_idx_check(d, x, attr_pool22, "all 2x2 windows, padded");
  /* the same windows 4 to a row of a plane 128 x 8 (two output rows per
   * vector on AVX-512) */
  int64_t dn[4] = {1, 1, 128, 8};
  for (int w = 0; w < 256; w++) {
    const int64_t r = 2 * (w / 4) * 8 + 2 * (w % 4);
    x[r] = val[w & 3], x[r + 1] = val[(w >> 2) & 3], x[r + 8] = val[(w >> 4) & 3], x[r + 9] = val[(w >> 6) & 3];
  }
  maxpool_idx_check(dn, x, attr_pool22_nopad, "all 2x2 windows, 4 columns");
  free(x);
}
END_TEST

/* AveragePool's float kernel (kernels/pool_f32.c) against the reference
 * kernel, on the attribute sets below (opset 19: dilations) and planes of
 * several sizes, at 1 and 2 threads (and, as a capped test, at each ISA).
 * The reference sums each window in double and rounds the mean to float;
 * the fast kernel sums in float, rows then columns. So:
 *   - on values that are multiples of 1/32 in [-2, 2] every float sum is
 *     exact in any order, and float division of the exact sum by the count
 *     rounds as the reference's double division then rounding does (double
 *     rounding is harmless for division when 53 >= 2 * 24 + 2): equal bits
 *     (NaN where the reference has NaN: windows with no counted position,
 *     Inf and NaN inputs);
 *   - on general floats the float sum of n terms is within (n - 1) 2^-24
 *     sum |x| of the exact one, and each side rounds its mean once more:
 *     |fast - ref| <= n 2^-24 mean|x| + 2^-23 |ref|, with mean|x| over the
 *     window taken from the reference kernel on |x|. */
typedef struct avg_case {
  int64_t k[2], s[2], d[2], p[4];
  int ceil, incl;
  const char *auto_pad;
} avg_case;
static const avg_case avg_cases[] = {
    {{3, 3}, {1, 1}, {1, 1}, {0, 0, 0, 0}, 0, 0, NULL},     /* Inception's, unpadded */
    {{3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 0, 0, NULL},     /* Inception's, padded */
    {{3, 3}, {1, 1}, {1, 1}, {1, 1, 1, 1}, 0, 1, NULL},
    {{2, 2}, {2, 2}, {1, 1}, {0, 0, 0, 0}, 0, 0, NULL},
    {{2, 2}, {2, 2}, {1, 1}, {0, 0, 0, 0}, 1, 0, NULL},     /* ceil_mode: partial windows on odd planes */
    {{3, 3}, {2, 2}, {1, 1}, {1, 1, 1, 1}, 1, 1, NULL},     /* windows past the end padding */
    {{3, 2}, {1, 1}, {1, 1}, {2, 0, 1, 2}, 0, 0, NULL},     /* pads above kernel / 2, asymmetric */
    {{2, 2}, {1, 1}, {1, 1}, {2, 2, 2, 2}, 0, 0, NULL},     /* windows all padding: NaN */
    {{2, 2}, {1, 1}, {1, 1}, {2, 2, 2, 2}, 0, 1, NULL},     /* ... counted: 0 */
    {{2, 3}, {1, 3}, {2, 2}, {0, 2, 1, 0}, 0, 0, NULL},     /* dilations, column stride 3 */
    {{3, 3}, {1, 1}, {3, 2}, {3, 2, 3, 2}, 0, 1, NULL},
    {{3, 3}, {2, 1}, {2, 2}, {1, 1, 0, 2}, 1, 0, NULL},
    {{5, 7}, {1, 1}, {1, 1}, {2, 3, 2, 3}, 0, 0, NULL},     /* a wide window */
    {{1, 1}, {1, 1}, {1, 1}, {0, 0, 0, 0}, 0, 0, NULL},
    {{3, 3}, {1, 1}, {1, 1}, {0, 0, 0, 0}, 0, 0, "SAME_UPPER"},
    {{4, 4}, {2, 3}, {1, 1}, {0, 0, 0, 0}, 0, 1, "SAME_LOWER"},
    {{3, 2}, {2, 2}, {1, 1}, {0, 0, 0, 0}, 0, 0, "VALID"},
    {{9, 11}, {1, 1}, {1, 1}, {0, 0, 0, 0}, 0, 0, NULL},    /* the whole plane of 9 x 11: 1 x 1 */
};
static const avg_case *cur_avg;
static void attr_avg(nbl_graph *g, nbl_id n) {
  const avg_case *a = cur_avg;
  nbl_node_set_attr_ints(g, n, "kernel_shape", 2, a->k);
  nbl_node_set_attr_ints(g, n, "strides", 2, a->s);
  nbl_node_set_attr_ints(g, n, "dilations", 2, a->d);
  if (a->auto_pad) nbl_node_set_attr_string(g, n, "auto_pad", a->auto_pad);
  else nbl_node_set_attr_ints(g, n, "pads", 4, a->p);
  nbl_node_set_attr_int(g, n, "ceil_mode", a->ceil);
  nbl_node_set_attr_int(g, n, "count_include_pad", a->incl);
}

START_TEST(test_avgpool_fast) {
  const int64_t shapes[][4] = {{2, 3, 13, 11}, {1, 2, 9, 70}, {1, 1, 4, 37}, {1, 5, 35, 35},
                               {1, 1, 1, 1},   {0, 3, 8, 8},  {1, 2, 9, 11}, {3, 1, 2, 17}};
  const int nsh = (int)(sizeof shapes / sizeof shapes[0]);
  const int nca = (int)(sizeof avg_cases / sizeof avg_cases[0]);
  int compared = 0;
  for (int sh = 0; sh < nsh; sh++) {
    const int64_t *d = shapes[sh];
    const int64_t n = d[0] * d[1] * d[2] * d[3];
    float *xe = malloc(sizeof(float) * (size_t)(n + 1)), *xr = frandv(n), *xa = malloc(sizeof(float) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++) {
      xe[i] = (float)((i * 37 + sh) % 129 - 64) / 32.0f;
      xa[i] = fabsf(xr[i]);
    }
    if (n > 40) xe[17] = NAN, xe[n - 3] = INFINITY, xe[n / 2] = -INFINITY;
    for (int ca = 0; ca < nca; ca++) {
      cur_avg = &avg_cases[ca];
      for (int data = 0; data < 2; data++) {
        const float *x = data ? xr : xe;
        nbl_host_tensor in[1] = {ht(NBL_DT_FLOAT, 4, d, x)}, r = {0}, a = {0}, f = {0};
        nbl_status rs = run_node("AveragePool", 19, attr_avg, 1, in, 1, &r, 1, 1);
        for (int threads = 1; threads <= 2; threads++) {
          nbl_status fs = run_node("AveragePool", 19, attr_avg, 1, in, 1, &f, 0, threads);
          ck_assert_msg(fs == rs, "shape %d case %d: fast status %d, reference %d (%s)", sh, ca, fs, rs,
                        nbl_last_error());
          if (rs != NBL_OK) continue;
          ck_assert_uint_eq(f.nbytes, r.nbytes);
          for (int i = 0; i < 4; i++) ck_assert_int_eq(f.dims[i], r.dims[i]);
          const float *fy = f.data, *ry = r.data;
          if (data) {
            in[0].data = xa;
            ck_assert(run_node("AveragePool", 19, attr_avg, 1, in, 1, &a, 1, 1) == NBL_OK);
            in[0].data = (void *)x;
          }
          const int64_t nk = cur_avg->k[0] * cur_avg->k[1];
          for (size_t i = 0; i < f.nbytes / 4; i++) {
            if (!data) {
              ck_elem_msg(memcmp(&fy[i], &ry[i], 4) == 0 || (isnan(fy[i]) && isnan(ry[i])),
                          "shape %d case %d, %d threads, elem %zu: %.9g vs %.9g", sh, ca, threads, i, fy[i], ry[i]);
            } else {
              const double tol = (double)nk * ldexp(((float *)a.data)[i], -24) + ldexp(fabs(ry[i]), -23);
              ck_elem_msg(fabs((double)fy[i] - ry[i]) <= tol || (isnan(fy[i]) && isnan(ry[i])),
                          "shape %d case %d, %d threads, random elem %zu: %.9g vs %.9g (tol %g)", sh, ca, threads,
                          i, fy[i], ry[i], tol);
            }
          }
          if (data) free(a.data);
          free(f.data);
          compared++;
        }
        if (rs == NBL_OK) free(r.data);
      }
    }
    free(xe), free(xr), free(xa);
  }
  ck_assert_int_ge(compared, 400); /* most cases run on most shapes */
}
END_TEST

START_TEST(test_pooling_hand) {
  /* x = [[1,2,3],[4,NaN,6],[7,8,9]], kernel 2 stride 2, pads top/left 1 -> 2x2 windows:
   * (0,0): {1}; (0,1): {2,3}; (1,0): {4,7}; (1,1): {NaN,6,8,9} */
  float x[9] = {1, 2, 3, 4, NAN, 6, 7, 8, 9};
  int64_t d[4] = {1, 1, 3, 3};
  nbl_host_tensor in[1] = {ht(NBL_DT_FLOAT, 4, d, x)};
  nbl_host_tensor y = run_both("MaxPool", 12, attr_pool22, 1, in, 0);
  float *v = y.data;
  ck_assert_float_eq(v[0], 1);
  ck_assert_float_eq(v[1], 3);
  ck_assert_float_eq(v[2], 7);
  ck_assert(isnan(v[3]));
  free(y.data);
  x[4] = 5;
  y = run_both("AveragePool", 11, attr_pool22, 1, in, 0);
  v = y.data;
  ck_assert_float_eq(v[0], 1);
  ck_assert_float_eq(v[1], 2.5f);
  ck_assert_float_eq(v[2], 5.5f);
  ck_assert_float_eq(v[3], 7);
  free(y.data);
  y = run_both("AveragePool", 11, attr_pool22_incl, 1, in, 0);
  v = y.data;
  ck_assert_float_eq(v[0], 0.25f);
  ck_assert_float_eq(v[1], 1.25f);
  ck_assert_float_eq(v[2], 2.75f);
  ck_assert_float_eq(v[3], 7);
  free(y.data);
  /* GlobalAveragePool over an Inf */
  x[0] = INFINITY;
  y = run_both("GlobalAveragePool", 1, NULL, 1, in, 0);
  ck_assert(isinf(((float *)y.data)[0]));
  ck_assert_int_eq(y.dims[2], 1);
  free(y.data);
}
END_TEST

/* GlobalAveragePool over 2 x 9 planes (two blocks of 8 planes summed side
 * by side, then two alone), an Inf and a NaN in planes of a block: each
 * mean the double sum of its plane in order over the count, as float. */
START_TEST(test_global_avgpool_planes) {
  enum { P = 18, S = 15 };
  float x[P * S];
  for (int i = 0; i < P * S; i++) x[i] = (float)((i * 29) % 83) / 9.0f - 4.0f;
  x[2 * S + 4] = INFINITY, x[5 * S + 7] = NAN;
  int64_t d[4] = {2, 9, 3, 5};
  nbl_host_tensor in[1] = {ht(NBL_DT_FLOAT, 4, d, x)};
  nbl_host_tensor y = run_both("GlobalAveragePool", 1, NULL, 1, in, 0);
  ck_assert_int_eq(y.dims[0], 2);
  ck_assert_int_eq(y.dims[1], 9);
  for (int p = 0; p < P; p++) {
    double s = 0;
    for (int i = 0; i < S; i++) s += x[p * S + i];
    float want = (float)(s / S), got = ((float *)y.data)[p];
    ck_assert_msg(memcmp(&want, &got, 4) == 0 || (isnan(want) && isnan(got)),
                  "plane %d: %.9g want %.9g", p, got, want);
  }
  free(y.data);
}
END_TEST

START_TEST(test_batchnorm_layernorm_hand) {
  float x[4] = {1, 3, -2, 2}; /* N=1, C=2, 2 elements each */
  float sc[2] = {2, 1}, bi[2] = {0.5f, -1}, mu[2] = {1, 0}, var[2] = {4, 1};
  int64_t dx[3] = {1, 2, 2}, dc[1] = {2};
  nbl_host_tensor in[5] = {ht(NBL_DT_FLOAT, 3, dx, x), ht(NBL_DT_FLOAT, 1, dc, sc),
                           ht(NBL_DT_FLOAT, 1, dc, bi), ht(NBL_DT_FLOAT, 1, dc, mu),
                           ht(NBL_DT_FLOAT, 1, dc, var)};
  nbl_host_tensor y = run_both("BatchNormalization", 15, NULL, 5, in, 1e-6);
  float *v = y.data;
  double e = 1e-5;
  ck_assert(fabs(v[0] - (0 * 2 / sqrt(4 + e) + 0.5)) < 1e-6);
  ck_assert(fabs(v[1] - (2 * 2 / sqrt(4 + e) + 0.5)) < 1e-6);
  ck_assert(fabs(v[2] - (-2 / sqrt(1 + e) - 1)) < 1e-6);
  free(y.data);
  /* LayerNorm over the last axis of [2, 2]: rows {1,3} and {-2,2} */
  int64_t d22[2] = {2, 2};
  nbl_host_tensor li[2] = {ht(NBL_DT_FLOAT, 2, d22, x), ht(NBL_DT_FLOAT, 1, dc, sc)};
  y = run_both("LayerNormalization", 17, NULL, 2, li, 1e-6);
  v = y.data;
  ck_assert(fabs(v[0] - (-1 / sqrt(1 + e) * 2)) < 1e-5);
  ck_assert(fabs(v[3] - (2 / sqrt(4 + e) * 1)) < 1e-5);
  free(y.data);
}
END_TEST

/* ------------------------------------------------------------------ Einsum */

static const char *cur_eq;
static void attr_eq(nbl_graph *g, nbl_id n) { nbl_node_set_attr_string(g, n, "equation", cur_eq); }

START_TEST(test_einsum_hand) {
  float a[6] = {1, 2, 3, 4, 5, 6}; /* [2,3] */
  int64_t d23[2] = {2, 3};
  nbl_host_tensor in[2] = {ht(NBL_DT_FLOAT, 2, d23, a), ht(NBL_DT_FLOAT, 2, d23, a)};
  cur_eq = "ij->ji";
  nbl_host_tensor y = run_both("Einsum", 12, attr_eq, 1, in, 0);
  ck_assert_int_eq(y.dims[0], 3);
  ck_assert_float_eq(((float *)y.data)[1], 4);
  free(y.data);
  cur_eq = "ij,kj"; /* implicit output "ik": A A^T */
  y = run_both("Einsum", 12, attr_eq, 2, in, 0);
  ck_assert_int_eq(y.dims[0], 2);
  ck_assert_int_eq(y.dims[1], 2);
  ck_assert_float_eq(((float *)y.data)[1], 1 * 4 + 2 * 5 + 3 * 6);
  free(y.data);
  float sq[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  int64_t d33[2] = {3, 3};
  nbl_host_tensor in2[1] = {ht(NBL_DT_FLOAT, 2, d33, sq)};
  cur_eq = "ii->i"; /* diagonal */
  y = run_both("Einsum", 12, attr_eq, 1, in2, 0);
  ck_assert_float_eq(((float *)y.data)[2], 9);
  free(y.data);
  cur_eq = "...j->..."; /* row sums with ellipsis */
  y = run_both("Einsum", 12, attr_eq, 1, in2, 0);
  ck_assert_int_eq(y.rank, 1);
  ck_assert_float_eq(((float *)y.data)[1], 15);
  free(y.data);
}
END_TEST

/* ------------------------------------------------------------------ quantization */

START_TEST(test_quantize_hand) {
  /* round half to even and saturation to uint8 with zero point 10 */
  float x[7] = {2.5f, 3.5f, -2.5f, 1000, -1000, NAN, 0.49f};
  float s[1] = {1};
  uint8_t zp[1] = {10};
  int64_t d7[1] = {7};
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 1, d7, x), ht(NBL_DT_FLOAT, 0, NULL, s),
                           ht(NBL_DT_UINT8, 0, NULL, zp)};
  nbl_host_tensor y;
  ck_assert_int_eq(run_node("QuantizeLinear", 13, NULL, 3, in, 1, &y, 1, 1), NBL_OK);
  uint8_t *q = y.data;
  uint8_t want[7] = {12, 14, 8, 255, 0, 0, 10};
  for (int i = 0; i < 6; i++) ck_assert_int_eq(q[i], want[i]);
  ck_assert_int_eq(q[6], want[6]);
  free(y.data);
  /* int4 output (opset 21): codes clamp to [-8, 7], packed low nibble first */
  float x4[4] = {-9, 7.5f, 1, -1};
  int64_t d4[1] = {4};
  uint8_t zp4[1] = {0}; /* int4 zero point 0 */
  nbl_host_tensor in4[3] = {ht(NBL_DT_FLOAT, 1, d4, x4), ht(NBL_DT_FLOAT, 0, NULL, s),
                            ht(NBL_DT_INT4, 0, NULL, zp4)};
  ck_assert_int_eq(run_node("QuantizeLinear", 21, NULL, 3, in4, 1, &y, 1, 1), NBL_OK);
  ck_assert_int_eq(y.dtype, NBL_DT_INT4);
  q = y.data;
  ck_assert_int_eq(q[0], 0x78); /* -8 -> 0x8, 8 -> saturates to 7 */
  ck_assert_int_eq(q[1], 0xf1); /* 1, -1 -> 0xf */
  free(y.data);
  /* per-axis DequantizeLinear on [2, 2], axis 0 */
  int8_t xq[4] = {1, -2, 3, 4};
  float sa[2] = {0.5f, 2};
  int8_t za[2] = {1, -1};
  int64_t d22[2] = {2, 2}, d2[1] = {2};
  nbl_host_tensor dq[3] = {ht(NBL_DT_INT8, 2, d22, xq), ht(NBL_DT_FLOAT, 1, d2, sa),
                           ht(NBL_DT_INT8, 1, d2, za)};
  ck_assert_int_eq(run_node("DequantizeLinear", 13, NULL, 3, dq, 1, &y, 1, 1), NBL_OK);
  float *f = y.data;
  /* attribute axis defaults to 1, so scale index follows the column */
  ck_assert_float_eq(f[0], (1 - 1) * 0.5f);
  ck_assert_float_eq(f[1], (-2 + 1) * 2.0f);
  ck_assert_float_eq(f[2], (3 - 1) * 0.5f);
  ck_assert_float_eq(f[3], (4 + 1) * 2.0f);
  free(y.data);
}
END_TEST

START_TEST(test_matmulinteger_hand) {
  uint8_t a[4] = {10, 20, 30, 40};
  int8_t b[4] = {1, -1, 2, 3};
  uint8_t azp[1] = {10};
  int64_t d22[2] = {2, 2};
  nbl_host_tensor in[3] = {ht(NBL_DT_UINT8, 2, d22, a), ht(NBL_DT_INT8, 2, d22, b),
                           ht(NBL_DT_UINT8, 0, NULL, azp)};
  nbl_host_tensor y;
  ck_assert_int_eq(run_node("MatMulInteger", 10, NULL, 3, in, 1, &y, 1, 1), NBL_OK);
  int32_t *v = y.data;
  /* A - 10 = [[0,10],[20,30]] times [[1,-1],[2,3]] */
  ck_assert_int_eq(v[0], 20);
  ck_assert_int_eq(v[1], 30);
  ck_assert_int_eq(v[2], 80);
  ck_assert_int_eq(v[3], 70);
  free(y.data);
}
END_TEST

START_TEST(test_bad_input_errors) {
  /* rank mismatch in Conv is a clear error, not a crash */
  float x[4] = {0};
  int64_t dx[4] = {1, 1, 2, 2}, dw[3] = {1, 1, 2};
  nbl_host_tensor in[2] = {ht(NBL_DT_FLOAT, 4, dx, x), ht(NBL_DT_FLOAT, 3, dw, x)};
  nbl_host_tensor y;
  ck_assert_int_ne(run_node("Conv", 11, NULL, 2, in, 1, &y, 0, 1), NBL_OK);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "Conv"));
  /* int8 Conv is unsupported, with the type named */
  int8_t xi[4] = {0};
  nbl_host_tensor in2[2] = {ht(NBL_DT_INT8, 4, dx, xi), ht(NBL_DT_INT8, 4, dx, xi)};
  ck_assert_int_ne(run_node("Conv", 11, NULL, 2, in2, 1, &y, 1, 1), NBL_OK);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "int8"));
}
END_TEST

/* Einsum's fast kernel (two float operands as batched GEMM) against its
 * reference kernel (every product in double), and by hand on one case:
 * batch, m, n and summed labels in every order, a transposed output,
 * ellipses with broadcast dims of size 1, a size-1 label, and equations it
 * hands back to the reference loop (a diagonal, a label summed in one
 * operand only, an empty summed label, three operands). */
static void einsum_case(const char *eq, int n_in, int r0, const int64_t *d0, int r1, const int64_t *d1) {
  static uint32_t s = 4242;
  int64_t n0 = nbl_shape_numel(r0, d0), n1 = n_in > 1 ? nbl_shape_numel(r1, d1) : 0;
  float *x0 = malloc(sizeof(float) * (size_t)(n0 + 1)), *x1 = malloc(sizeof(float) * (size_t)(n1 + 1));
  for (int64_t i = 0; i < n0; i++) x0[i] = td_lcg_float(&s) * 2 - 1;
  for (int64_t i = 0; i < n1; i++) x1[i] = td_lcg_float(&s) * 2 - 1;
  float *want = NULL;
  size_t nb = 0;
  for (int ref = 1; ref >= 0; ref--) {
    one *o = one_new("Einsum", 12, n_in, 1);
    nbl_node_set_attr_string(G(o), o->node, "equation", eq);
    one_in(o, 0, NBL_DT_FLOAT, r0, d0, x0);
    if (n_in > 1) one_in(o, 1, NBL_DT_FLOAT, r1, d1, x1);
    if (n_in > 2) one_in(o, 2, NBL_DT_FLOAT, r1, d1, x1);
    ck_assert_msg(one_run(o, ref) == NBL_OK, "%s: %s", eq, nbl_last_error());
    if (ref) {
      nb = o->out[0].nbytes;
      want = malloc(nb + 1);
      memcpy(want, o->out[0].data, nb);
    } else {
      ck_assert_uint_eq(o->out[0].nbytes, nb);
      double mx = 1e-30, err = 0;
      for (size_t i = 0; i < nb / sizeof(float); i++) {
        mx = fmax(mx, fabs(want[i]));
        err = fmax(err, fabs((double)want[i] - outf(o, 0)[i]));
      }
      ck_assert_msg(err <= 1e-5 * mx, "%s: fast vs reference %g of %g", eq, err, mx);
    }
    one_free(o);
  }
  free(want);
  free(x0);
  free(x1);
}

START_TEST(test_einsum_fast) {
  /* by hand: [[1,2],[3,4]] x [[5,6],[7,8]] with the output transposed: (AB)^T = [[19,43],[22,50]] */
  float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
  const int64_t d22[2] = {2, 2};
  for (int ref = 0; ref < 2; ref++) {
    one *o = one_new("Einsum", 12, 2, 1);
    nbl_node_set_attr_string(G(o), o->node, "equation", "ij,jk->ki");
    one_in(o, 0, NBL_DT_FLOAT, 2, d22, a);
    one_in(o, 1, NBL_DT_FLOAT, 2, d22, b);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    const float w[4] = {19, 43, 22, 50};
    for (int i = 0; i < 4; i++) ck_assert_float_eq(outf(o, 0)[i], w[i]);
    one_free(o);
  }
  einsum_case("bhid,bhjd->bhij", 2, 4, (int64_t[]){2, 3, 17, 8}, 4, (int64_t[]){2, 3, 19, 8});
  einsum_case("bhij,bhjd->bihd", 2, 4, (int64_t[]){2, 3, 17, 19}, 4, (int64_t[]){2, 3, 19, 8});
  einsum_case("ik,kj", 2, 2, (int64_t[]){33, 65}, 2, (int64_t[]){65, 7});
  einsum_case("nchw,ck->nkhw", 2, 4, (int64_t[]){2, 5, 6, 7}, 2, (int64_t[]){5, 9});
  einsum_case("...ij,...jk->...ik", 2, 4, (int64_t[]){3, 1, 4, 5}, 3, (int64_t[]){2, 5, 6}); /* broadcast batch */
  einsum_case("ab,cb->ca", 2, 2, (int64_t[]){1, 6}, 2, (int64_t[]){4, 6}); /* a of size 1 */
  einsum_case("i,j->ij", 2, 1, (int64_t[]){7}, 1, (int64_t[]){5});          /* outer product: K = 1 */
  einsum_case("ij,ij->", 2, 2, (int64_t[]){4, 6}, 2, (int64_t[]){4, 6});    /* a full contraction */
  einsum_case("ii,ij->j", 2, 2, (int64_t[]){5, 5}, 2, (int64_t[]){5, 3});   /* a diagonal: reference */
  einsum_case("ij,jk->k", 2, 2, (int64_t[]){4, 3}, 2, (int64_t[]){3, 2});   /* i summed in A only: reference */
  einsum_case("ij,jk->ik", 2, 2, (int64_t[]){3, 0}, 2, (int64_t[]){0, 2});  /* an empty sum: zeros */
  einsum_case("ij,jk,kl->il", 3, 2, (int64_t[]){4, 4}, 2, (int64_t[]){4, 4}); /* three operands: reference */
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ops_nn");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, test_gemm_portable_tiles, 0, 4);
  tcase_add_loop_test(tc, test_gemm_blas_tiles, 0, 4);
  tcase_add_test(tc, test_gemm_node_threads);
  tcase_add_test(tc, test_global_avgpool_planes);
  tcase_add_test(tc, test_gemm_one_row_threads);
  tcase_add_test(tc, test_conv_vs_naive);
  tcase_add_test(tc, test_matmul_shapes);
  tcase_add_test(tc, test_pooling_hand);
  tcase_add_test(tc, test_maxpool_vector);
  tcase_add_test(tc, test_maxpool_indices);
  tcase_add_test(tc, test_avgpool_fast);
  tcase_add_test(tc, test_batchnorm_layernorm_hand);
  tcase_add_test(tc, test_einsum_hand);
  tcase_add_test(tc, test_quantize_hand);
  tcase_add_test(tc, test_matmulinteger_hand);
  tcase_add_test(tc, test_bad_input_errors);
  tcase_add_test(tc, test_einsum_fast);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
