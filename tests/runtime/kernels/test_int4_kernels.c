/* test_int4_kernels.c - the fused INT4 fast path: integer GEMM micro-kernels
 * (every variant this CPU has) equal a plain-C integer reference exactly at
 * tile-boundary sizes; activation bytes equal the runtime/formats/int4.h codes bit for bit;
 * fused Conv/Gemm/MatMul sessions agree with the reference path (QuantizeInt4
 * computed literally, then the float op). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/formats/int4.h"
#include "test_data.h"
#include "ck_elem.h"

/* Counter c of the fast paths (runtime/kernels/kdebug.h) so far. */
static long kstat(nbl_kcounter c) {
  nbl_kernel_stats st;
  nbl_kernel_stats_get(&st);
  return st.n[c];
}

/* Setters of the paths compared by check_path_identical. */
static void set_dw_blocked(int mode) { nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, mode); }
static void set_dw_rows(int on) { nbl_kdebug_set(NBL_KS_I4_DW_ROWS, on); }

static uint32_t rng = 2024;
static int irange(int lo, int hi) { return td_xs32_range(&rng, lo, hi); }
static float frand(void) { return td_xs32_float(&rng); }

static const int64_t tsizes[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65};
#define NTS (sizeof tsizes / sizeof tsizes[0])

/* Random codes: qa (na) in [alo, ahi], w (nw) in [wlo, whi], the extreme
 * values at the corners so saturation would show. */
static void random_codes(int8_t *qa, int64_t na, int alo, int ahi, int8_t *w, int64_t nw, int wlo,
                         int whi) {
  for (int64_t i = 0; i < na; i++) qa[i] = (int8_t)irange(alo, ahi);
  for (int64_t i = 0; i < nw; i++) w[i] = (int8_t)irange(wlo, whi);
  qa[0] = (int8_t)alo, qa[na - 1] = (int8_t)ahi;
  w[0] = (int8_t)wlo, w[nw - 1] = (int8_t)whi;
}

/* The plain int64 reference: out[r * ldr + c * ldc] = sum_k (qa[r * K + k] - z)
 * * w[k * sk + c * sc] for r < R, c < Cn (malloc'd). */
static int64_t *int_ref(const int8_t *qa, int z, const int8_t *w, int64_t R, int64_t Cn, int64_t K,
                        int64_t sk, int64_t sc, int64_t ldr, int64_t ldc) {
  int64_t *out = calloc((size_t)(R * Cn + 1), sizeof(int64_t));
  for (int64_t r = 0; r < R; r++)
    for (int64_t c = 0; c < Cn; c++) {
      int64_t s = 0;
      for (int64_t k = 0; k < K; k++) s += (int64_t)(qa[r * K + k] - z) * w[k * sk + c * sc];
      out[r * ldr + c * ldc] = s;
    }
  return out;
}

/* One GEMM case: codes qa in [alo, ahi] with zero point z, weights in [wlo, whi];
 * every variant against sum_k (qa - z) * w computed here in int64. */
static void gemm_case(int64_t M, int64_t N, int64_t K, int alo, int ahi, int z, int wlo, int whi) {
  int8_t *qa = malloc((size_t)(M * K)), *w = malloc((size_t)(K * N));
  random_codes(qa, M * K, alo, ahi, w, K * N, wlo, whi);
  int64_t *ref = int_ref(qa, z, w, M, N, K, N, 1, N, 1);
  nbl_q4_params p = {.scale = 1, .zero = z, .qmin = alo, .qmax = ahi};
  int off = nbl_i4_act_offset(&p);
  ck_assert(alo + off >= 0 && ahi + off <= 255 && z + off >= 0 && z + off <= 255);
  nbl_i4_weights W;
  ck_assert_int_eq(nbl_i4_pack_weights(w, K, N, N, 1, &W), 0);
  int64_t lda = W.Kp + 3; /* an odd row pitch */
  uint8_t *A = malloc((size_t)(M * lda));
  memset(A, 0x5a, (size_t)(M * lda)); /* padding bytes must not matter */
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) A[m * lda + k] = (uint8_t)(qa[m * K + k] + off);
  int32_t *C = malloc(sizeof(int32_t) * (size_t)(M * N));
  for (int isa = NBL_I4_SCALAR; isa <= NBL_I4_VNNI; isa++) {
    if (!nbl_i4_isa_supported((nbl_i4_isa)isa)) continue;
    for (int64_t i = 0; i < M * N; i++) C[i] = 0x7eadbeef;
    /* two row ranges, as threads would split them */
    int64_t mid = M / 2;
    nbl_i4_gemm((nbl_i4_isa)isa, &W, A, lda, 0, mid, z + off, C, N);
    nbl_i4_gemm((nbl_i4_isa)isa, &W, A, lda, mid, M, z + off, C, N);
    for (int64_t i = 0; i < M * N; i++)
      ck_elem_msg(C[i] == ref[i], "%s M=%lld N=%lld K=%lld a[%d,%d] z=%d w[%d,%d] i=%lld: %d vs %lld",
                  nbl_i4_isa_name((nbl_i4_isa)isa), (long long)M, (long long)N, (long long)K, alo,
                  ahi, z, wlo, whi, (long long)i, C[i], (long long)ref[i]);
  }
  nbl_i4_weights_free(&W);
  free(qa), free(w), free(ref), free(A), free(C);
}

START_TEST(test_gemm_int4_tiles) {
  for (size_t a = 0; a < NTS; a++)
    for (size_t b = 0; b < NTS; b++)
      for (size_t k = 0; k < NTS; k++)
        gemm_case(tsizes[a], tsizes[b], tsizes[k], -8, 7, (int)(a + b + k) % 5 - 2, -8, 7);
}
END_TEST

START_TEST(test_gemm_int8_extremes) {
  /* INT8 x INT4 and INT8 x INT8 (8-bit layers); AVX2 must fall back for |w| > 64 */
  for (size_t a = 0; a < NTS; a += 2)
    for (size_t k = 0; k < NTS; k++) {
      gemm_case(tsizes[a], 33, tsizes[k], -128, 127, 0, -8, 7);
      gemm_case(tsizes[a], 17, tsizes[k], -128, 127, 0, -128, 127);
      gemm_case(tsizes[a], 16, tsizes[k], -8, 7, -128, -15, 15); /* affine, far zero point */
      gemm_case(tsizes[a], 9, tsizes[k], -8, 7, 127, -64, 64);
    }
  /* a long K: 255 * 127 * 4608 stays well inside int32 */
  gemm_case(7, 35, 4608, -128, 127, 0, -128, 127);
}
END_TEST

/* One convolution-product case: acc[m][p] = sum_k (X4 byte - a_zero) * W[m][k]
 * for every variant, raw and through the epilogue, against int64 sums here. */
static void conv_gemm_case(int64_t M, int64_t P, int64_t K, int alo, int ahi, int z, int wlo,
                           int whi) {
  int8_t *qa = malloc((size_t)(P * K)), *w = malloc((size_t)(M * K));
  random_codes(qa, P * K, alo, ahi, w, M * K, wlo, whi);
  nbl_q4_params p = {.scale = 1, .zero = z, .qmin = alo, .qmax = ahi};
  int off = nbl_i4_act_offset(&p);
  int64_t *ref = int_ref(qa, z, w, P, M, K, 1, K, 1, P); /* ref[m * P + q] */
  nbl_i4_rows W;
  ck_assert_int_eq(nbl_i4_pack_rows(w, M, K, K, 1, &W), 0);
  int64_t Pp = (P + 31) / 32 * 32;
  uint8_t *X4 = malloc((size_t)(W.Kp * Pp));
  memset(X4, 0xa5, (size_t)(W.Kp * Pp)); /* padding bytes must not matter */
  for (int64_t q = 0; q < P; q++)
    for (int64_t k = 0; k < K; k++)
      X4[((q / 32 * (W.Kp / 4) + k / 4) * 32 + q % 32) * 4 + k % 4] = (uint8_t)(qa[q * K + k] + off);
  int32_t *C = malloc(sizeof(int32_t) * (size_t)(M * P));
  float *Y = malloc(sizeof(float) * (size_t)(M * P)), *bias = malloc(sizeof(float) * (size_t)M);
  for (int64_t m = 0; m < M; m++) bias[m] = frand();
  nbl_i4_epi e = {0.01f, bias, 1, -0.5f, 2.0f};
  for (int isa = NBL_I4_SCALAR; isa <= NBL_I4_VNNI; isa++) {
    if (!nbl_i4_isa_supported((nbl_i4_isa)isa)) continue;
    for (int64_t i = 0; i < M * P; i++) C[i] = 0x7eadbeef;
    /* four blocks, as threads split them: output channels at a multiple of 8,
     * pixels at a multiple of 32 */
    int64_t mm = M / 16 * 8, pm = P / 64 * 32;
    nbl_i4_conv_gemm((nbl_i4_isa)isa, &W, X4, z + off, 0, mm, 0, pm, C, NULL, P, NULL);
    nbl_i4_conv_gemm((nbl_i4_isa)isa, &W, X4, z + off, 0, mm, pm, P, C, NULL, P, NULL);
    nbl_i4_conv_gemm((nbl_i4_isa)isa, &W, X4, z + off, mm, M, 0, pm, C, NULL, P, NULL);
    nbl_i4_conv_gemm((nbl_i4_isa)isa, &W, X4, z + off, mm, M, pm, P, C, NULL, P, NULL);
    for (int64_t i = 0; i < M * P; i++)
      ck_elem_msg(C[i] == ref[i], "%s M=%lld P=%lld K=%lld a[%d,%d] z=%d w[%d,%d] i=%lld: %d vs %lld",
                  nbl_i4_isa_name((nbl_i4_isa)isa), (long long)M, (long long)P, (long long)K, alo,
                  ahi, z, wlo, whi, (long long)i, C[i], (long long)ref[i]);
    nbl_i4_range rg = {INFINITY, -INFINITY, 0};
    e.range = &rg;
    nbl_i4_conv_gemm((nbl_i4_isa)isa, &W, X4, z + off, 0, M, 0, P, NULL, Y, P, &e);
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < M * P; i++) {
      lo = Y[i] < lo ? Y[i] : lo;
      hi = Y[i] > hi ? Y[i] : hi;
    }
    ck_assert_msg(rg.lo == lo && rg.hi == hi && !rg.nan, "%s range [%g, %g], values [%g, %g]",
                  nbl_i4_isa_name((nbl_i4_isa)isa), rg.lo, rg.hi, lo, hi);
    for (int64_t m = 0; m < M; m++)
      for (int64_t q = 0; q < P; q++) {
        float v = e.sc * (float)ref[m * P + q] + bias[m];
        v = v < e.lo ? e.lo : v > e.hi ? e.hi : v;
        ck_elem_msg(Y[m * P + q] == v, "%s epilogue M=%lld P=%lld K=%lld [%lld,%lld]: %.9g vs %.9g",
                    nbl_i4_isa_name((nbl_i4_isa)isa), (long long)M, (long long)P, (long long)K,
                    (long long)m, (long long)q, Y[m * P + q], v);
      }
  }
  nbl_i4_rows_free(&W);
  free(qa), free(w), free(ref), free(X4), free(C), free(Y), free(bias);
}

START_TEST(test_conv_gemm_tiles) {
  for (size_t a = 0; a < NTS; a++)
    for (size_t b = 0; b < NTS; b++)
      for (size_t k = 0; k < NTS; k += 2)
        conv_gemm_case(tsizes[a], tsizes[b], tsizes[k], -8, 7, (int)(a + b + k) % 5 - 2, -8, 7);
  /* 8-bit layers (AVX2 falls back when |w| > 64), far zero points, long K */
  for (size_t a = 0; a < NTS; a += 3)
    for (size_t k = 0; k < NTS; k += 3) {
      conv_gemm_case(tsizes[a], 45, tsizes[k], -128, 127, 0, -128, 127);
      conv_gemm_case(tsizes[a], 33, tsizes[k], -8, 7, 127, -64, 64);
    }
  conv_gemm_case(9, 40, 4608, -128, 127, 0, -128, 127);
}
END_TEST

START_TEST(test_isa_names) {
  ck_assert(nbl_i4_isa_supported(NBL_I4_SCALAR));
  ck_assert(nbl_i4_isa_supported(nbl_i4_best_isa()));
  ck_assert_str_eq(nbl_i4_isa_name(NBL_I4_VNNI), "avx512vnni");
}
END_TEST

/* Activation bytes equal nbl_q4_quantize_codes + off, ties included. */
static void quant_case(nbl_q4_config *cfg, const float *x, size_t n, float alpha) {
  nbl_q4_params p;
  const char *why = NULL;
  ck_assert_msg(nbl_q4_choose(cfg, x, n, alpha, &p, &why) == 0, "%s", why);
  int8_t *q = malloc(n);
  uint8_t *u = malloc(n);
  nbl_q4_quantize_codes(cfg, &p, x, q, n, 5);
  int off = nbl_i4_act_offset(&p);
  nbl_i4_quantizer qz;
  nbl_i4_quantizer_init(&qz, cfg, &p);
  nbl_i4_quantize_u8(&qz, x, u, n, 5, off);
  for (size_t i = 0; i < n; i++)
    ck_elem_msg(u[i] == q[i] + off, "i=%zu x=%.9g: byte %d, code %d + %d", i, x[i], u[i], q[i],
                off);
  float *f = malloc(n * sizeof(float));
  nbl_i4_quantize_centered(&qz, x, f, n, 5);
  for (size_t i = 0; i < n; i++)
    ck_elem_msg(f[i] == (float)(q[i] - p.zero), "i=%zu x=%.9g: centered %g, code %d - %d", i,
                x[i], f[i], q[i], p.zero);
  free(q), free(u), free(f);
}

START_TEST(test_quantize_bytes) {
  size_t n = 1000;
  float *x = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) x[i] = 3.0f * frand();
  x[0] = 3.5f; /* max: s = 0.5, so k*0.25 hits ties */
  for (size_t i = 1; i < 200; i++) x[i] = 0.25f * (float)irange(-14, 14);
  nbl_q4_config cfg;
  nbl_q4_config_default(&cfg);
  quant_case(&cfg, x, n, 0);
  cfg.mode = NBL_Q4_AFFINE;
  quant_case(&cfg, x, n, 0);
  for (size_t i = 0; i < n; i++) x[i] = fabsf(x[i]) + 1.0f; /* zero point far below -8 */
  quant_case(&cfg, x, n, 0);
  cfg.mode = NBL_Q4_SYMMETRIC;
  cfg.narrow = 1;
  quant_case(&cfg, x, n, 0);
  cfg.narrow = 0;
  cfg.bits = 8;
  quant_case(&cfg, x, n, 0);
  cfg.bits = 4;
  cfg.scale_source = NBL_Q4_SCALE_PACT;
  quant_case(&cfg, x, n, 1.7f);
  cfg.scale_source = NBL_Q4_SCALE_SAWB;
  quant_case(&cfg, x, n, 0);
  cfg.scale_source = NBL_Q4_SCALE_MAX;
  /* values a few ulps either side of half-way points of many scales: the
   * vector path multiplies by 1/s and must divide wherever that could round
   * differently */
  cfg.bits = 8;
  for (int rep = 0; rep < 200; rep++) {
    float s = ldexpf(1.0f + 0.999f * (frand() + 1.0f) / 2.0f, irange(-20, 10));
    x[0] = 127.0f * s; /* max: scale s */
    for (size_t i = 1; i < n; i++) {
      float t = ((float)irange(-127, 126) + 0.5f) * s;
      for (int k = irange(-3, 3); k > 0; k--) t = nextafterf(t, INFINITY);
      for (int k = irange(-3, 3); k > 0; k--) t = nextafterf(t, -INFINITY);
      x[i] = t;
    }
    quant_case(&cfg, x, n, 0);
  }
  /* 4 bits with a fixed scale: near-ties of s inside the code range and far
   * beyond it (the vector path's tolerance covers only |x / s| <= R, past
   * which every quotient must clamp to the end code), both modes */
  cfg.bits = 4;
  cfg.scale_source = NBL_Q4_SCALE_FIXED;
  for (int rep = 0; rep < 200; rep++) {
    float s = ldexpf(1.0f + 0.999f * (frand() + 1.0f) / 2.0f, irange(-20, 10));
    cfg.fixed_scale = s;
    cfg.mode = rep % 2 ? NBL_Q4_AFFINE : NBL_Q4_SYMMETRIC;
    for (size_t i = 0; i < n; i++) {
      int k = i % 4 ? irange(-12, 11) : irange(-3000, 3000);
      float t = ((float)k + 0.5f) * s;
      for (int j = irange(-3, 3); j > 0; j--) t = nextafterf(t, INFINITY);
      for (int j = irange(-3, 3); j > 0; j--) t = nextafterf(t, -INFINITY);
      x[i] = t;
    }
    quant_case(&cfg, x, n, 0);
  }
  /* scales whose reciprocal is not a normal float: every lane divides */
  const float odd_scales[3] = {1e-39f, 3e-41f, 9e37f};
  for (int rep = 0; rep < 6; rep++) {
    cfg.fixed_scale = odd_scales[rep % 3];
    cfg.mode = rep >= 3 ? NBL_Q4_AFFINE : NBL_Q4_SYMMETRIC;
    for (size_t i = 0; i < n; i++) {
      float t = ((float)irange(-3, 2) + 0.5f) * cfg.fixed_scale;
      for (int j = irange(-3, 3); j > 0; j--) t = nextafterf(t, INFINITY);
      for (int j = irange(-3, 3); j > 0; j--) t = nextafterf(t, -INFINITY);
      x[i] = t;
    }
    quant_case(&cfg, x, n, 0);
  }
  cfg.mode = NBL_Q4_SYMMETRIC;
  cfg.scale_source = NBL_Q4_SCALE_MAX;
  cfg.rounding = NBL_Q4_ROUND_STOCHASTIC;
  cfg.seed = 77;
  quant_case(&cfg, x, n, 0);
  free(x);
}
END_TEST


/* ------------------------------------------------------------------ fused sessions */

typedef struct mspec {
  const char *op; /* Conv, Gemm, MatMul */
  int xrank;
  int64_t xd[4];
  int wrank;
  int64_t wd[4];
  int brank; /* bias / Gemm C rank, -1 none */
  int64_t bd[2];
  const char *xmode;
  int xbits, wbits;
  int dq; /* weight as DequantizeLinear(INT4 initializer, scale) */
  int64_t strides[2], pads[4], dil[2], group;
  const char *auto_pad;
  int trans_b;
  float alpha, beta;
  const char *act; /* NULL, "Relu" or "Clip" (bounds clo, chi as initializers) */
  float clo, chi;
} mspec;

static nbl_model *build_model(const mspec *sp, const float *w, const float *b) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", sp->dq ? 21 : 13);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, sp->xrank, sp->xd);
  nbl_graph_add_input(g, x);
  nbl_id xq = nbl_graph_add_value(g, "xq");
  nbl_id q = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", "qx", 1, &x, 1, &xq);
  nbl_node_set_attr_string(g, q, "mode", sp->xmode);
  nbl_node_set_attr_int(g, q, "bits", sp->xbits);
  nbl_id wv = nbl_graph_add_value(g, "w");
  nbl_id wq = nbl_graph_add_value(g, "wq");
  int64_t wn = nbl_shape_numel(sp->wrank, sp->wd);
  if (sp->dq) {
    /* quantize here with the runtime/formats/int4.h math, store packed INT4 + scale */
    nbl_q4_config cfg;
    nbl_q4_config_default(&cfg);
    nbl_q4_params p;
    ck_assert_int_eq(nbl_q4_choose(&cfg, w, (size_t)wn, 0, &p, NULL), 0);
    int8_t *codes = malloc((size_t)wn);
    nbl_q4_quantize_codes(&cfg, &p, w, codes, (size_t)wn, 0);
    uint8_t *packed = calloc((size_t)(wn + 1) / 2 + 1, 1);
    nbl_q4_pack(codes, (size_t)wn, packed);
    nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, "w", NBL_DT_INT4, sp->wrank, sp->wd, packed));
    nbl_id sv = nbl_graph_add_value(g, "ws");
    nbl_graph_set_initializer(g, sv, nbl_tensor_new(m->arena, "ws", NBL_DT_FLOAT, 0, NULL, &p.scale));
    nbl_id in2[2] = {wv, sv};
    nbl_graph_add_node(g, "DequantizeLinear", "", "dq", 2, in2, 1, &wq);
    free(codes);
    free(packed);
  } else {
    nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, sp->wrank, sp->wd, w));
    nbl_id qw = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", "qw", 1, &wv, 1, &wq);
    nbl_node_set_attr_int(g, qw, "bits", sp->wbits);
  }
  nbl_id in[3] = {xq, wq, NBL_NONE};
  int n_in = 2;
  if (sp->brank >= 0) {
    in[2] = nbl_graph_add_value(g, "b");
    nbl_graph_set_initializer(g, in[2], nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, sp->brank, sp->bd, b));
    n_in = 3;
  }
  nbl_id y = nbl_graph_add_value(g, "y");
  nbl_id y0 = sp->act ? nbl_graph_add_value(g, "y0") : y;
  nbl_id n = nbl_graph_add_node(g, sp->op, "", "op", n_in, in, 1, &y0);
  if (sp->act && !strcmp(sp->act, "Relu")) {
    nbl_graph_add_node(g, "Relu", "", "act", 1, &y0, 1, &y);
  } else if (sp->act) {
    nbl_id lo = nbl_graph_add_value(g, "clo"), hi = nbl_graph_add_value(g, "chi");
    nbl_graph_set_initializer(g, lo, nbl_tensor_new(m->arena, "clo", NBL_DT_FLOAT, 0, NULL, &sp->clo));
    nbl_graph_set_initializer(g, hi, nbl_tensor_new(m->arena, "chi", NBL_DT_FLOAT, 0, NULL, &sp->chi));
    nbl_id ci[3] = {y0, lo, hi};
    nbl_graph_add_node(g, "Clip", "", "act", 3, ci, 1, &y);
  }
  if (!strcmp(sp->op, "Conv")) {
    if (sp->auto_pad) nbl_node_set_attr_string(g, n, "auto_pad", sp->auto_pad);
    else nbl_node_set_attr_ints(g, n, "pads", 4, sp->pads);
    nbl_node_set_attr_ints(g, n, "strides", 2, sp->strides);
    nbl_node_set_attr_ints(g, n, "dilations", 2, sp->dil);
    nbl_node_set_attr_int(g, n, "group", sp->group);
  } else if (!strcmp(sp->op, "Gemm")) {
    nbl_node_set_attr_int(g, n, "transB", sp->trans_b);
    nbl_node_set_attr_float(g, n, "alpha", sp->alpha);
    nbl_node_set_attr_float(g, n, "beta", sp->beta);
  }
  nbl_graph_add_output(g, y);
  return m;
}

static int g_fast_threads = 2; /* threads of the fast path in run_model */

/* An on_value callback: checks that every intermediate is a finite float
 * tensor (no activation bytes in its place) and counts them. */
static int g_values_seen;
static void value_seen(void *user, const nbl_host_tensor *t) {
  (void)user;
  ck_assert_int_eq(t->dtype, NBL_DT_FLOAT);
  const float *v = t->data;
  size_t n = t->nbytes / sizeof(float), len = strlen(t->name);
  float mx = 0;
  for (size_t i = 0; i < n; i++) {
    ck_elem_msg(isfinite(v[i]) && fabsf(v[i]) < 1e6f, "%s[%zu] = %g", t->name, i, v[i]);
    mx = fabsf(v[i]) > mx ? fabsf(v[i]) : mx;
  }
  if (len > 2 && strcmp(t->name + len - 2, "_a") == 0) /* a Clip(0, 6) output, as floats */
    ck_assert_msg(mx > 0.1f && mx <= 6.0f, "%s: max %g", t->name, mx);
  g_values_seen++;
}
static int g_watch_values; /* run_model sets value_seen as on_value */

static float *run_model(nbl_model *m, const mspec *sp, const float *x, int reference,
                        size_t *ny) {
  nbl_session_options opt = {reference ? 1 : g_fast_threads, reference,
                             g_watch_values ? value_seen : NULL, NULL};
  nbl_session *s = NULL;
  nbl_status st = nbl_session_create(m, &opt, &s);
  ck_elem_msg(st == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor in;
  memset(&in, 0, sizeof in);
  in.name = "x";
  in.dtype = NBL_DT_FLOAT;
  in.rank = sp->xrank;
  for (int i = 0; i < sp->xrank; i++) in.dims[i] = sp->xd[i];
  in.data = (void *)x;
  in.nbytes = sizeof(float) * (size_t)nbl_shape_numel(sp->xrank, sp->xd);
  const nbl_host_tensor *out = NULL;
  st = nbl_session_run(s, 1, &in, &out);
  ck_elem_msg(st == NBL_OK, "%s: %s", reference ? "reference" : "fast", nbl_last_error());
  *ny = out[0].nbytes / sizeof(float);
  float *y = malloc(out[0].nbytes + 4);
  memcpy(y, out[0].data, out[0].nbytes);
  nbl_session_free(s);
  return y;
}

/* Fast (fused, 2 threads) vs reference path; expect_int: the integer path ran. */
static void check_model(const mspec *sp, int expect_int, int with_nan) {
  int64_t xn = nbl_shape_numel(sp->xrank, sp->xd), wn = nbl_shape_numel(sp->wrank, sp->wd);
  int64_t bn = sp->brank >= 0 ? nbl_shape_numel(sp->brank, sp->bd) : 0;
  float *x = malloc(sizeof(float) * (size_t)(xn + 1)), *w = malloc(sizeof(float) * (size_t)(wn + 1));
  float *b = malloc(sizeof(float) * (size_t)(bn + 1));
  for (int64_t i = 0; i < xn; i++) x[i] = 2.0f * frand() + (!strcmp(sp->xmode, "affine") ? 0.7f : 0.0f);
  for (int64_t i = 0; i < wn; i++) w[i] = 0.5f * frand();
  for (int64_t i = 0; i < bn; i++) b[i] = frand();
  if (with_nan && xn > 1) x[xn / 2] = NAN;
  nbl_model *m = build_model(sp, w, b);
  long before = kstat(NBL_KC_I4_INTEGER_RUNS);
  size_t nf, nr;
  float *yf = run_model(m, sp, x, 0, &nf);
  long after = kstat(NBL_KC_I4_INTEGER_RUNS);
  float *yr = run_model(m, sp, x, 1, &nr);
  ck_elem_msg(after - before == expect_int, "%s: integer path runs %ld, expected %d", sp->op,
              after - before, expect_int);
  ck_assert_uint_eq(nf, nr);
  double mx = 0;
  for (size_t i = 0; i < nr; i++)
    if (isfinite(yr[i]) && fabs(yr[i]) > mx) mx = fabs(yr[i]);
  for (size_t i = 0; i < nr; i++) {
    if (isnan(yr[i])) {
      ck_assert_msg(isnan(yf[i]), "%s: elem %zu ref NaN fast %g", sp->op, i, yf[i]);
      continue;
    }
    ck_elem_msg(fabs(yf[i] - yr[i]) <= 1e-5 * mx + 1e-30,
                "%s x[%lld,%lld,%lld,%lld] w[%lld,%lld,%lld,%lld] elem %zu: fast %.9g ref %.9g",
                sp->op, (long long)sp->xd[0], (long long)sp->xd[1], (long long)sp->xd[2],
                (long long)sp->xd[3], (long long)sp->wd[0], (long long)sp->wd[1],
                (long long)sp->wd[2], (long long)sp->wd[3], i, yf[i], yr[i]);
  }
  free(yf), free(yr), free(x), free(w), free(b);
  nbl_model_free(m);
}

static mspec conv_spec(int64_t N, int64_t C, int64_t H, int64_t W, int64_t M, int64_t k,
                       int64_t s, int64_t pad, int64_t d, int64_t group) {
  mspec sp = {.op = "Conv", .xrank = 4, .xd = {N, C, H, W}, .wrank = 4,
              .wd = {M, C / group, k, k}, .brank = 1, .bd = {M}, .xmode = "symmetric",
              .xbits = 4, .wbits = 4, .strides = {s, s}, .pads = {pad, pad, pad, pad},
              .dil = {d, d}, .group = group};
  return sp;
}

START_TEST(test_fused_conv) {
  mspec sp;
  sp = conv_spec(2, 3, 9, 9, 8, 3, 1, 1, 1, 1);
  check_model(&sp, 1, 0);
  sp.brank = -1;
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 4, 11, 10, 6, 3, 2, 0, 1, 1);
  sp.pads[1] = 2, sp.pads[2] = 1; /* asymmetric pads */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 5, 12, 12, 7, 3, 1, 2, 2, 1); /* dilation */
  check_model(&sp, 1, 0);
  sp = conv_spec(2, 4, 8, 8, 6, 3, 1, 1, 1, 2); /* groups */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 6, 9, 9, 6, 3, 2, 1, 1, 6); /* depthwise */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 6, 9, 9, 6, 3, 1, 2, 2, 6); /* depthwise, dilated */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 5, 37, 41, 5, 3, 2, 1, 1, 5); /* depthwise, stride 2, rows > 32 wide */
  check_model(&sp, 1, 0);
  sp = conv_spec(2, 4, 20, 35, 4, 5, 1, 2, 1, 4); /* depthwise 5x5, two images */
  sp.xmode = "affine";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 3, 23, 23, 3, 3, 3, 1, 1, 3); /* depthwise, stride 3 */
  check_model(&sp, 1, 0);
  /* 784+ output pixels: with 2 threads, bands of pixels per thread */
  sp = conv_spec(1, 6, 60, 61, 6, 3, 1, 1, 1, 6); /* depthwise, stride 1 */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 5, 64, 70, 5, 3, 2, 1, 1, 5); /* depthwise, stride 2 */
  sp.act = "Clip", sp.clo = 0.0f, sp.chi = 6.0f;
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 4, 40, 40, 4, 5, 1, 2, 1, 4); /* depthwise 5x5: bands of the plane kernel */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 3, 60, 60, 3, 3, 2, 2, 2, 3); /* depthwise, dilated, stride 2: the same */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 13, 33, 35, 21, 1, 1, 0, 1, 1); /* 1x1: quantized while laid out */
  sp.act = "Relu";
  check_model(&sp, 1, 0);
  sp = conv_spec(2, 5, 31, 30, 9, 3, 1, 1, 1, 1); /* 3x3, two images */
  sp.xmode = "affine";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 8, 62, 60, 12, 3, 2, 1, 1, 2); /* stride 2, groups: 31x30 output */
  check_model(&sp, 1, 0);
  /* column stride 2 from the padded bytes, rows of 32 and more: 38 and 35 wide */
  sp = conv_spec(1, 3, 21, 75, 8, 3, 2, 1, 1, 1);
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 3, 16, 69, 8, 7, 2, 3, 1, 1);
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 4, 9, 9, 8, 3, 1, 1, 1, 4); /* depthwise, multiplier 2 */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 16, 7, 7, 33, 1, 1, 0, 1, 1); /* 1x1 */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 3, 10, 10, 9, 3, 2, 0, 1, 1);
  sp.auto_pad = "SAME_UPPER";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 8, 6, 6, 17, 3, 1, 1, 1, 1);
  sp.xmode = "affine"; /* positive data: zero point far below -8 */
  check_model(&sp, 1, 0);
  sp.xbits = 8, sp.wbits = 8; /* an 8-bit layer */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 8, 6, 6, 17, 3, 1, 1, 1, 1);
  sp.dq = 1; /* packed INT4 weight + DequantizeLinear */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 6, 9, 9, 6, 3, 2, 1, 1, 6);
  sp.dq = 1;
  check_model(&sp, 1, 0);
  /* output channels and pixel counts at tile boundaries */
  for (size_t a = 0; a < NTS; a++) {
    sp = conv_spec(1, 3, tsizes[a] < 3 ? 3 : tsizes[a] % 20 + 3, 5, tsizes[a], 3, 1, 1, 1, 1);
    check_model(&sp, 1, 0);
  }
  /* fused activations */
  sp = conv_spec(1, 8, 9, 9, 16, 3, 1, 1, 1, 1);
  sp.act = "Relu";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 8, 9, 9, 8, 3, 2, 1, 1, 8);
  sp.act = "Clip", sp.clo = -0.25f, sp.chi = 0.5f;
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 16, 5, 5, 24, 1, 1, 0, 1, 1);
  sp.act = "Clip", sp.clo = 0.0f, sp.chi = 6.0f;
  check_model(&sp, 1, 0);
  /* NaN input: the literal composition runs (NaN propagates like the reference) */
  sp = conv_spec(1, 3, 6, 6, 4, 3, 1, 1, 1, 1);
  check_model(&sp, 0, 1);
  sp.act = "Relu";
  check_model(&sp, 0, 1);
}
END_TEST

/* sp on random data, at 1 and 2 threads, with a kernel path on (set_path(on))
 * and off (set_path(off)): bit-identical outputs; the path is left on. */
static void check_path_identical(const mspec *sp, int i, void (*set_path)(int), int on, int off,
                                 const char *name) {
  int64_t xn = nbl_shape_numel(4, sp->xd), wn = nbl_shape_numel(4, sp->wd);
  float *x = malloc(sizeof(float) * (size_t)xn), *w = malloc(sizeof(float) * (size_t)wn);
  float *b = malloc(sizeof(float) * (size_t)sp->wd[0]);
  for (int64_t k = 0; k < xn; k++) x[k] = 2.0f * frand();
  for (int64_t k = 0; k < wn; k++) w[k] = 0.5f * frand();
  for (int64_t k = 0; k < sp->wd[0]; k++) b[k] = frand();
  nbl_model *m = build_model(sp, w, b);
  size_t n1, n0;
  set_path(on);
  for (int t = 1; t <= 2; t++) {
    g_fast_threads = t;
    float *y1 = run_model(m, sp, x, 0, &n1);
    set_path(off);
    float *y0 = run_model(m, sp, x, 0, &n0);
    set_path(on);
    ck_assert_uint_eq(n1, n0);
    for (size_t k = 0; k < n1; k++)
      ck_elem_msg(memcmp(&y1[k], &y0[k], sizeof(float)) == 0,
                  "case %d, %d thread(s), elem %zu: %s %.9g plane %.9g", i, t, k, name, y1[k],
                  y0[k]);
    free(y1), free(y0);
  }
  g_fast_threads = 2;
  nbl_model_free(m);
  free(x), free(w), free(b);
}

static void set_direct(int on) { nbl_kdebug_set(NBL_KS_I4_DIRECT, on); }

/* Convolutions of one group and strides 1 or 2 by the direct kernel shared
 * with the ternary path (code_direct.h: no im2col; AVX-512 VNNI) against the
 * im2col tiles: the same outputs bit for bit (exact sums, the same
 * epilogue), at 1 and 2 threads; within float rounding of the reference
 * path; and the direct kernel ran (where AVX-512 VNNI runs, not on an
 * unpadded or stride-2 1x1 layer, nor a grouped one). Channel counts off the
 * quads and the blocks of 8, rows crossing the 16-lane vectors and the
 * 32-pixel panels, pads (asymmetric too), dilations, 5x5 and 7x7 taps,
 * 8-bit layers (codes up to 255 x -128), affine codes (zero point far from
 * 0), Relu and Clip, two images. */
START_TEST(test_fused_direct) {
  mspec sps[20];
  int ns = 0;
  sps[ns++] = conv_spec(1, 2, 5, 5, 1, 3, 1, 1, 1, 1);
  sps[ns++] = conv_spec(1, 3, 9, 7, 8, 3, 1, 1, 1, 1);
  sps[ns++] = conv_spec(2, 5, 6, 11, 9, 3, 1, 0, 1, 1);
  sps[ns++] = conv_spec(1, 17, 14, 14, 33, 1, 1, 1, 1, 1);  /* padded 1x1 */
  sps[ns++] = conv_spec(1, 8, 10, 13, 17, 3, 1, 2, 2, 1);   /* dilation */
  sps[ns++] = conv_spec(1, 70, 9, 9, 12, 3, 1, 1, 1, 1);    /* long K */
  sps[ns++] = conv_spec(1, 16, 40, 40, 16, 3, 1, 1, 1, 1);
  sps[ns++] = conv_spec(1, 8, 14, 14, 16, 3, 2, 1, 1, 1);   /* stride 2: phase planes */
  sps[ns++] = conv_spec(2, 5, 9, 11, 9, 3, 2, 1, 1, 1);
  sps[ns++] = conv_spec(1, 3, 13, 12, 17, 5, 2, 2, 1, 1);
  sps[ns++] = conv_spec(1, 7, 15, 16, 8, 3, 2, 2, 2, 1);
  sps[ns] = conv_spec(1, 3, 35, 37, 16, 7, 2, 3, 1, 1);     /* a stem: 8-bit, Relu */
  sps[ns].xbits = 8, sps[ns].wbits = 8, sps[ns++].act = "Relu";
  sps[ns] = conv_spec(1, 8, 6, 6, 17, 3, 1, 1, 1, 1);
  sps[ns].xmode = "affine", sps[ns].xbits = 8, sps[ns++].wbits = 8;
  sps[ns] = conv_spec(1, 12, 11, 19, 24, 3, 1, 1, 1, 1);
  sps[ns].xmode = "affine", sps[ns].act = "Clip", sps[ns].clo = 0.0f, sps[ns++].chi = 6.0f;
  sps[ns] = conv_spec(1, 6, 10, 9, 8, 3, 2, 0, 1, 1);
  sps[ns].pads[0] = 0, sps[ns].pads[1] = 1, sps[ns].pads[2] = 2, sps[ns++].pads[3] = 0;
  sps[ns] = conv_spec(1, 64, 28, 28, 16, 3, 2, 1, 1, 1);
  sps[ns].act = "Relu", sps[ns++].brank = -1;
  /* not taken: unpadded 1x1, 1x1 stride 2, groups */
  sps[ns++] = conv_spec(1, 16, 7, 7, 33, 1, 1, 0, 1, 1);
  sps[ns++] = conv_spec(1, 6, 10, 7, 8, 1, 2, 0, 1, 1);
  sps[ns++] = conv_spec(1, 8, 12, 12, 8, 3, 1, 1, 1, 2);
  int vnni = nbl_i4_best_isa() == NBL_I4_VNNI;
  for (int i = 0; i < ns; i++) {
    const mspec *sp = &sps[i];
    int eligible = sp->group == 1 && !(sp->wd[2] == 1 && sp->wd[3] == 1 &&
                                       (sp->strides[0] == 2 || sp->pads[0] + sp->pads[2] == 0));
    long d0 = kstat(NBL_KC_I4_DIRECT_RUNS);
    check_model(sp, 1, 0);
    ck_assert_msg(kstat(NBL_KC_I4_DIRECT_RUNS) - d0 == (vnni && eligible), "case %d: %ld direct runs",
                  i, kstat(NBL_KC_I4_DIRECT_RUNS) - d0);
    check_path_identical(sp, i, set_direct, 1, 0, "direct");
  }
  nbl_kdebug_reset();
}
END_TEST

/* Depthwise layers 16 channels at a time (channel tiles, AVX-512) against the
 * plane-at-a-time kernel: the same exact integer sums, so bit-identical
 * outputs; and both within float rounding of the reference path. Channel
 * counts off the block of 16, strides 1-3, dilation, 5x5, uneven pads,
 * affine codes, a fused Clip, two images. */
START_TEST(test_dw_blocked) {
  mspec sps[9];
  int ns = 0;
  sps[ns++] = conv_spec(1, 32, 14, 14, 32, 3, 1, 1, 1, 32);
  sps[ns++] = conv_spec(1, 20, 9, 11, 20, 3, 2, 1, 1, 20);
  sps[ns++] = conv_spec(2, 33, 7, 7, 33, 3, 1, 1, 1, 33);
  sps[ns++] = conv_spec(1, 16, 12, 10, 16, 5, 1, 2, 1, 16);
  sps[ns++] = conv_spec(1, 17, 13, 13, 17, 3, 1, 2, 2, 17);
  sps[ns++] = conv_spec(1, 24, 23, 23, 24, 3, 3, 1, 1, 24);
  sps[ns] = conv_spec(1, 18, 10, 9, 18, 3, 2, 0, 1, 18);
  sps[ns].pads[0] = 0, sps[ns].pads[1] = 1, sps[ns].pads[2] = 2, sps[ns++].pads[3] = 0;
  sps[ns] = conv_spec(1, 40, 14, 14, 40, 3, 1, 1, 1, 40);
  sps[ns].xmode = "affine", sps[ns].act = "Clip", sps[ns].clo = 0.0f, sps[ns++].chi = 6.0f;
  sps[ns] = conv_spec(1, 64, 7, 7, 64, 3, 1, 1, 1, 64);
  sps[ns].act = "Relu", sps[ns++].brank = -1;
  int vnni = nbl_i4_best_isa() == NBL_I4_VNNI;
  for (int i = 0; i < ns; i++) {
    const mspec *sp = &sps[i];
    long b0 = kstat(NBL_KC_I4_DW_BLOCKED_RUNS);
    nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, 1);
    check_model(sp, 1, 0);
    ck_assert_int_eq(kstat(NBL_KC_I4_DW_BLOCKED_RUNS) - b0, vnni);
    check_path_identical(sp, i, set_dw_blocked, 1, 0, "blocked");
    nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, -1);
  }
}
END_TEST

/* 3x3 depthwise layers of strides 1 and 2 computed a block of output rows at
 * a time straight from the input rows (the default on AVX-512) against the
 * plane kernel and finish: the same exact integer sums and epilogue, so
 * bit-identical outputs; and both within float rounding of the reference
 * path. Plane heights below, at and off the block of 4 rows, widths off the
 * 32 columns of a block, uneven pads, affine codes, Clip and Relu, no bias,
 * two images, and planes of 784+ pixels (whole planes per thread too). */
START_TEST(test_dw_rows) {
  mspec sps[12];
  int ns = 0;
  sps[ns++] = conv_spec(1, 5, 56, 56, 5, 3, 1, 1, 1, 5);
  sps[ns++] = conv_spec(1, 4, 56, 56, 4, 3, 2, 1, 1, 4);
  sps[ns++] = conv_spec(1, 3, 3, 17, 3, 3, 1, 1, 1, 3);   /* 3 rows: one at a time */
  sps[ns++] = conv_spec(1, 3, 2, 33, 3, 3, 1, 1, 1, 3);   /* 2 rows, 33 columns */
  sps[ns++] = conv_spec(2, 6, 9, 31, 6, 3, 2, 1, 1, 6);   /* 5 rows: a block moved back */
  sps[ns++] = conv_spec(1, 3, 30, 65, 3, 3, 1, 0, 1, 3);  /* no padding, 28 x 63 */
  sps[ns] = conv_spec(1, 4, 23, 47, 4, 3, 2, 0, 1, 4);
  sps[ns].pads[0] = 0, sps[ns].pads[1] = 1, sps[ns].pads[2] = 2, sps[ns++].pads[3] = 0;
  sps[ns] = conv_spec(1, 3, 16, 16, 3, 3, 1, 0, 1, 3);
  sps[ns].pads[0] = 2, sps[ns].pads[1] = 0, sps[ns].pads[2] = 0, sps[ns++].pads[3] = 2;
  sps[ns] = conv_spec(1, 6, 40, 40, 6, 3, 1, 1, 1, 6);
  sps[ns].xmode = "affine", sps[ns].act = "Clip", sps[ns].clo = 0.0f, sps[ns++].chi = 6.0f;
  sps[ns] = conv_spec(1, 5, 35, 64, 5, 3, 2, 1, 1, 5);
  sps[ns].act = "Relu", sps[ns++].brank = -1;
  sps[ns] = conv_spec(1, 4, 32, 32, 4, 3, 1, 1, 1, 4);
  sps[ns].act = "Clip", sps[ns].clo = -0.25f, sps[ns++].chi = 0.5f;
  sps[ns++] = conv_spec(1, 2, 1, 16, 2, 3, 2, 1, 1, 2);   /* one input row */
  int vnni = nbl_i4_best_isa() == NBL_I4_VNNI;
  nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, 0); /* small planes here too */
  for (int i = 0; i < ns; i++) {
    const mspec *sp = &sps[i];
    long r0 = kstat(NBL_KC_I4_DW_ROWS_RUNS);
    check_model(sp, 1, 0);
    ck_assert_int_eq(kstat(NBL_KC_I4_DW_ROWS_RUNS) - r0, vnni);
    check_path_identical(sp, i, set_dw_rows, 1, 0, "rows");
  }
  nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, -1);
}
END_TEST

/* x -> [QuantizeInt4 -> Conv 1x1 -> Clip] -> [QuantizeInt4 -> depthwise 3x3
 * -> Clip] -> [QuantizeInt4 -> Conv 1x1] -> y, an inverted-residual block:
 * the second and third quantizers take their ranges from the fused nodes
 * before them instead of scanning, which must not change a single bit. */
static int64_t g_dw_stride = 1; /* strides of the grouped layers chain_layer makes */

static nbl_id chain_layer(nbl_model *m, nbl_id x, const char *name, int64_t M, int64_t C,
                          int64_t k, int64_t group, int clip) {
  nbl_graph *g = m->graph;
  char nm[64];
  snprintf(nm, sizeof nm, "%s_xq", name);
  nbl_id xq = nbl_graph_add_value(g, nm);
  snprintf(nm, sizeof nm, "%s_qx", name);
  nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", nm, 1, &x, 1, &xq);
  int64_t wd[4] = {M, C / group, k, k}, bd[1] = {M}, wn = M * (C / group) * k * k;
  float *w = malloc(sizeof(float) * (size_t)wn), *b = malloc(sizeof(float) * (size_t)M);
  for (int64_t i = 0; i < wn; i++) w[i] = 0.5f * frand();
  for (int64_t i = 0; i < M; i++) b[i] = 0.2f * frand();
  snprintf(nm, sizeof nm, "%s_w", name);
  nbl_id wv = nbl_graph_add_value(g, nm);
  nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, nm, NBL_DT_FLOAT, 4, wd, w));
  snprintf(nm, sizeof nm, "%s_b", name);
  nbl_id bv = nbl_graph_add_value(g, nm);
  nbl_graph_set_initializer(g, bv, nbl_tensor_new(m->arena, nm, NBL_DT_FLOAT, 1, bd, b));
  snprintf(nm, sizeof nm, "%s_wq", name);
  nbl_id wq = nbl_graph_add_value(g, nm);
  snprintf(nm, sizeof nm, "%s_qw", name);
  nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", nm, 1, &wv, 1, &wq);
  snprintf(nm, sizeof nm, "%s_y", name);
  nbl_id y = nbl_graph_add_value(g, nm);
  nbl_id in[3] = {xq, wq, bv};
  snprintf(nm, sizeof nm, "%s_conv", name);
  nbl_id n = nbl_graph_add_node(g, "Conv", "", nm, 3, in, 1, &y);
  int64_t pads[4] = {k / 2, k / 2, k / 2, k / 2};
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_node_set_attr_int(g, n, "group", group);
  if (group > 1 && g_dw_stride > 1) {
    int64_t st[2] = {g_dw_stride, g_dw_stride};
    nbl_node_set_attr_ints(g, n, "strides", 2, st);
  }
  free(w), free(b);
  if (!clip) return y;
  snprintf(nm, sizeof nm, "%s_a", name);
  nbl_id a = nbl_graph_add_value(g, nm);
  float lo = 0, hi = 6;
  nbl_id cl = nbl_graph_add_value(g, "");
  nbl_id ch = nbl_graph_add_value(g, "");
  snprintf(nm, sizeof nm, "%s_lo", name);
  nbl_graph_set_initializer(g, cl, nbl_tensor_new(m->arena, nm, NBL_DT_FLOAT, 0, NULL, &lo));
  snprintf(nm, sizeof nm, "%s_hi", name);
  nbl_graph_set_initializer(g, ch, nbl_tensor_new(m->arena, nm, NBL_DT_FLOAT, 0, NULL, &hi));
  nbl_id ci[3] = {y, cl, ch};
  snprintf(nm, sizeof nm, "%s_clip", name);
  nbl_graph_add_node(g, "Clip", "", nm, 3, ci, 1, &a);
  return a;
}

/* Conv -> Add(conv, r) [-> Relu | Clip]: the Add (and the activation after
 * it) computed in the conv's epilogue when r has the output's shape, by the
 * Add kernel after the conv when it broadcasts (NaN and Inf in r, r the
 * graph input, r made by another node; r made after the conv in the schedule
 * stays a separate Add). Each against the reference path (1e-5), at 1 and 2
 * threads bit-identical, the epilogue's runs counted. */
static nbl_id residual_value(nbl_model *m, int kind, int64_t M, int64_t OH, int64_t OW, nbl_id x) {
  nbl_graph *g = m->graph;
  if (kind == 3) { /* made by a node: Sigmoid(x) */
    nbl_id r = nbl_graph_add_value(g, "r");
    nbl_graph_add_node(g, "Sigmoid", "", "late", 1, &x, 1, &r);
    return r;
  }
  if (kind == 5) { /* made after the conv in the schedule: Neg(Neg(Sigmoid(x))) */
    nbl_id r0 = nbl_graph_add_value(g, "r0"), r1 = nbl_graph_add_value(g, "r1");
    nbl_id r = nbl_graph_add_value(g, "r");
    nbl_graph_add_node(g, "Sigmoid", "", "late0", 1, &x, 1, &r0);
    nbl_graph_add_node(g, "Neg", "", "late1", 1, &r0, 1, &r1);
    nbl_graph_add_node(g, "Neg", "", "late2", 1, &r1, 1, &r);
    return r;
  }
  if (kind == 4) return x; /* the graph input itself */
  int64_t d[4] = {1, M, kind == 1 ? 1 : OH, kind == 1 ? 1 : OW};
  int64_t n = nbl_shape_numel(4, d);
  float *v = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) v[i] = 1.5f * frand();
  if (kind == 2) v[3] = NAN, v[n / 2] = INFINITY, v[n - 2] = -INFINITY;
  nbl_id r = nbl_graph_add_value(g, "r");
  nbl_graph_set_initializer(g, r, nbl_tensor_new(m->arena, "r", NBL_DT_FLOAT, 4, d, v));
  free(v);
  return r;
}

START_TEST(test_fused_residual) {
  /* kind of r: 0 same shape, 1 [1,M,1,1] broadcast, 2 with NaN/Inf, 3 made
   * by a node added after the conv (scheduled before it), 4 the graph input,
   * 5 made by nodes scheduled after the conv (Kahn order: the conv is one
   * step from the input, r three); act: 0 none, 1 Relu, 2 Clip */
  struct { int kind, act, swap; int64_t C, M, H, k, s; } cs[] = {
      {0, 1, 0, 8, 16, 12, 1, 1}, {0, 0, 1, 5, 9, 9, 3, 1},  {0, 2, 0, 6, 24, 40, 1, 1},
      {1, 1, 0, 8, 16, 10, 1, 1}, {2, 1, 1, 4, 8, 11, 3, 2}, {3, 0, 0, 8, 8, 9, 1, 1},
      {4, 1, 1, 8, 8, 10, 3, 1},  {0, 1, 0, 16, 32, 30, 3, 2}, {5, 1, 0, 8, 8, 10, 3, 1},
      {5, 0, 1, 8, 8, 9, 1, 1}};
  for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
    int64_t C = cs[ci].C, M = cs[ci].M, H = cs[ci].H, k = cs[ci].k, st = cs[ci].s;
    int64_t OH = (H + 2 * (k / 2) - k) / st + 1;
    nbl_model *m = nbl_model_new();
    nbl_model_set_opset(m, "", 13);
    nbl_model_set_opset(m, "ai.nibble", 1);
    nbl_graph *g = m->graph;
    int64_t xd[4] = {1, C, H, H};
    nbl_id x = nbl_graph_add_value(g, "x");
    nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 4, xd);
    nbl_graph_add_input(g, x);
    g_dw_stride = 1;
    nbl_id y = chain_layer(m, x, "conv", M, C, k, 1, 0);
    if (st > 1) {
      int64_t sv[2] = {st, st};
      nbl_node_set_attr_ints(g, g->values[y].producer, "strides", 2, sv);
    }
    nbl_id r = residual_value(m, cs[ci].kind, M, OH, OH, x);
    nbl_id ai[2] = {cs[ci].swap ? r : y, cs[ci].swap ? y : r};
    nbl_id a = nbl_graph_add_value(g, "sum");
    nbl_graph_add_node(g, "Add", "", "add", 2, ai, 1, &a);
    if (cs[ci].act) {
      nbl_id o = nbl_graph_add_value(g, "out");
      if (cs[ci].act == 1) {
        nbl_graph_add_node(g, "Relu", "", "relu", 1, &a, 1, &o);
      } else {
        float lo = -0.5f, hi = 0.75f;
        nbl_id cl = nbl_graph_add_value(g, "lo"), ch = nbl_graph_add_value(g, "hi");
        nbl_graph_set_initializer(g, cl, nbl_tensor_new(m->arena, "lo", NBL_DT_FLOAT, 0, NULL, &lo));
        nbl_graph_set_initializer(g, ch, nbl_tensor_new(m->arena, "hi", NBL_DT_FLOAT, 0, NULL, &hi));
        nbl_id cin[3] = {a, cl, ch};
        nbl_graph_add_node(g, "Clip", "", "clip", 3, cin, 1, &o);
      }
      a = o;
    }
    nbl_graph_add_output(g, a);
    mspec sp = {.xrank = 4, .xd = {1, C, H, H}};
    int64_t xn = C * H * H;
    float *xv = malloc(sizeof(float) * (size_t)xn);
    for (int64_t i = 0; i < xn; i++) xv[i] = 2.0f * frand();
    /* epilogue runs expected: same shape 1, broadcast 0, r scheduled after the conv 0 */
    int want = cs[ci].kind == 1 || cs[ci].kind == 5 ? 0 : 1;
    size_t n1, n2, nr;
    long r0 = kstat(NBL_KC_I4_RESIDUAL_RUNS), i0 = kstat(NBL_KC_I4_INTEGER_RUNS);
    g_fast_threads = 2;
    float *y2 = run_model(m, &sp, xv, 0, &n2);
    ck_assert_int_eq(kstat(NBL_KC_I4_INTEGER_RUNS) - i0, 1);
    ck_assert_msg(kstat(NBL_KC_I4_RESIDUAL_RUNS) - r0 == want,
                  "case %zu: %ld residual epilogue runs", ci, kstat(NBL_KC_I4_RESIDUAL_RUNS) - r0);
    g_fast_threads = 1;
    float *y1 = run_model(m, &sp, xv, 0, &n1);
    g_fast_threads = 2;
    float *yr = run_model(m, &sp, xv, 1, &nr);
    /* the im2col tiles (the direct kernel off): the same bits */
    size_t n0;
    nbl_kdebug_set(NBL_KS_I4_DIRECT, 0);
    float *y0 = run_model(m, &sp, xv, 0, &n0);
    nbl_kdebug_set(NBL_KS_I4_DIRECT, 1);
    ck_assert_uint_eq(n0, nr);
    for (size_t i = 0; i < nr; i++)
      ck_elem_msg(memcmp(&y0[i], &y2[i], sizeof(float)) == 0 || (isnan(y0[i]) && isnan(y2[i])),
                  "case %zu elem %zu: im2col %.9g direct %.9g", ci, i, y0[i], y2[i]);
    free(y0);
    ck_assert_uint_eq(n1, nr);
    ck_assert_uint_eq(n2, nr);
    double mx = 0;
    for (size_t i = 0; i < nr; i++)
      if (isfinite(yr[i]) && fabs(yr[i]) > mx) mx = fabs(yr[i]);
    for (size_t i = 0; i < nr; i++) {
      ck_elem_msg(memcmp(&y1[i], &y2[i], sizeof(float)) == 0, "case %zu elem %zu: %.9g vs %.9g",
                  ci, i, y1[i], y2[i]);
      if (isnan(yr[i]) || isinf(yr[i])) {
        ck_assert_msg(memcmp(&y2[i], &yr[i], sizeof(float)) == 0 || (isnan(yr[i]) && isnan(y2[i])),
                      "case %zu elem %zu: fast %g ref %g", ci, i, y2[i], yr[i]);
        continue;
      }
      ck_elem_msg(fabs(y2[i] - yr[i]) <= 1e-5 * mx, "case %zu elem %zu: fast %.9g ref %.9g", ci,
                  i, y2[i], yr[i]);
    }
    free(y1), free(y2), free(yr), free(xv);
    nbl_model_free(m);
  }
}
END_TEST

START_TEST(test_fused_chain_ranges) {
  for (int v = 0; v < 8; v++) {
    int big = v & 1;
    g_dw_stride = v & 2 ? 2 : 1;
    g_fast_threads = v & 4 ? 1 : 2;
    int64_t H = big ? 40 : 9; /* 40x40: pixel bands with 2 threads */
    nbl_model *m = nbl_model_new();
    nbl_model_set_opset(m, "", 13);
    nbl_model_set_opset(m, "ai.nibble", 1);
    nbl_graph *g = m->graph;
    int64_t xd[4] = {1, 8, H, H};
    nbl_id x = nbl_graph_add_value(g, "x");
    nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 4, xd);
    nbl_graph_add_input(g, x);
    nbl_id a = chain_layer(m, x, "expand", 24, 8, 1, 1, 1);
    a = chain_layer(m, a, "dw", 24, 24, 3, 24, 1);
    a = chain_layer(m, a, "project", 8, 24, 1, 1, 0);
    nbl_graph_add_output(g, a);
    mspec sp = {.xrank = 4, .xd = {1, 8, H, H}};
    int64_t xn = 8 * H * H;
    float *xv = malloc(sizeof(float) * (size_t)xn);
    /* the big variants saturate the first Clip at both ends early on: its
     * range-only pass stops there */
    for (int64_t i = 0; i < xn; i++) xv[i] = (big ? 8.0f : 2.0f) * frand();
    size_t n1, n2, nr;
    /* expand hands the depthwise layer activation bytes (AVX-512 VNNI
     * only), whose output range the projection reuses; without reuse every
     * quantizer scans the floats */
    nbl_kdebug_set(NBL_KS_I4_CODE_LINK_MIN, 0); /* small tensors too */
    long r0 = kstat(NBL_KC_I4_RANGE_REUSES), i0 = kstat(NBL_KC_I4_INTEGER_RUNS);
    long l0 = kstat(NBL_KC_I4_CODE_LINKS);
    long s0 = kstat(NBL_KC_I4_RANGE_STOPS);
    int links = nbl_i4_best_isa() == NBL_I4_VNNI;
    float *y1 = run_model(m, &sp, xv, 0, &n1);
    if (big && links) ck_assert_int_gt(kstat(NBL_KC_I4_RANGE_STOPS) - s0, 0);
    ck_assert_int_eq(kstat(NBL_KC_I4_INTEGER_RUNS) - i0, 3);
    ck_assert_int_eq(kstat(NBL_KC_I4_CODE_LINKS) - l0, links);
    ck_assert_int_eq(kstat(NBL_KC_I4_RANGE_REUSES) - r0, 2 - links);
    nbl_kdebug_set(NBL_KS_I4_RANGE_REUSE, 0);
    float *y2 = run_model(m, &sp, xv, 0, &n2);
    nbl_kdebug_set(NBL_KS_I4_RANGE_REUSE, 1);
    ck_assert_int_eq(kstat(NBL_KC_I4_RANGE_REUSES) - r0, 2 - links);
    ck_assert_int_eq(kstat(NBL_KC_I4_CODE_LINKS) - l0, links);
    ck_assert_uint_eq(n1, n2);
    for (size_t i = 0; i < n1; i++)
      ck_elem_msg(memcmp(&y1[i], &y2[i], sizeof(float)) == 0, "variant %d elem %zu: %.9g vs %.9g",
                  v, i, y1[i], y2[i]);
    /* the depthwise layer 16 channels at a time, fed the same bytes */
    long b0 = kstat(NBL_KC_I4_DW_BLOCKED_RUNS);
    nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, 1);
    size_t n3;
    float *y3 = run_model(m, &sp, xv, 0, &n3);
    nbl_kdebug_set(NBL_KS_I4_DW_BLOCKED, -1);
    ck_assert_int_eq(kstat(NBL_KC_I4_DW_BLOCKED_RUNS) - b0, links);
    ck_assert_int_eq(kstat(NBL_KC_I4_CODE_LINKS) - l0, 2 * links);
    ck_assert(n3 == n1 && memcmp(y3, y1, n1 * sizeof(float)) == 0);
    free(y3);
    l0 += links;
    /* with a callback seeing every value, the intermediates stay floats */
    g_watch_values = 1;
    g_values_seen = 0;
    size_t nw;
    float *yw = run_model(m, &sp, xv, 0, &nw);
    g_watch_values = 0;
    ck_assert_int_eq(kstat(NBL_KC_I4_CODE_LINKS) - l0, links);
    ck_assert_int_ge(g_values_seen, 3);
    ck_assert_uint_eq(nw, n1);
    ck_assert(memcmp(yw, y1, n1 * sizeof(float)) == 0);
    free(yw);
    /* and near the reference path (a tie decided differently upstream may
     * move a code by one step, so not to float rounding) */
    float *yr = run_model(m, &sp, xv, 1, &nr);
    double mx = 0, err = 0;
    for (size_t i = 0; i < nr; i++) {
      if (fabs(yr[i]) > mx) mx = fabs(yr[i]);
      if (fabs(yr[i] - y1[i]) > err) err = fabs(yr[i] - y1[i]);
    }
    ck_assert_msg(err <= 0.05 * mx, "variant %d fast vs reference: max error %g of %g", v, err, mx);
    free(y1), free(y2), free(yr), free(xv);
    nbl_model_free(m);
  }
  g_dw_stride = 1;
  g_fast_threads = 2;
  nbl_kdebug_reset(); /* the default link size again */
}
END_TEST

START_TEST(test_fused_gemm_matmul) {
  for (size_t a = 0; a < NTS; a++)
    for (size_t b = 0; b < NTS; b++)
      for (size_t k = 0; k < NTS; k++) {
        int64_t M = tsizes[a], N = tsizes[b], K = tsizes[k];
        int tb = (int)((a + b + k) & 1);
        mspec sp = {.op = "Gemm", .xrank = 2, .xd = {M, K}, .wrank = 2,
                    .wd = {tb ? N : K, tb ? K : N}, .brank = (int)(k % 3) - 1 + (k % 3 == 2),
                    .bd = {k % 3 == 2 ? M : N, N}, .xmode = (a & 1) ? "affine" : "symmetric",
                    .xbits = 4, .wbits = 4, .trans_b = tb, .alpha = (b & 1) ? 0.5f : 1.0f,
                    .beta = 1.5f, .dq = (int)((a * 7 + b * 3 + k) % 4 == 0)};
        if (sp.brank == 1) sp.bd[0] = N;
        check_model(&sp, 1, 0);
        sp.act = (k % 4 == 1) ? "Relu" : (k % 4 == 3) ? "Clip" : NULL;
        sp.clo = -0.5f, sp.chi = 0.75f;
        if (sp.act) check_model(&sp, 1, 0);
        mspec mm = {.op = "MatMul", .xrank = 3, .xd = {2, M, K}, .wrank = 2, .wd = {K, N},
                    .brank = -1, .xmode = (b & 1) ? "affine" : "symmetric", .xbits = (k & 1) ? 8 : 4,
                    .wbits = 4, .dq = (int)((a + b) % 3 == 0)};
        check_model(&mm, 1, 0);
      }
}
END_TEST

Suite *int4_suite(void);
Suite *int4_suite(void) {
  Suite *s = suite_create("int4_kernels");
  TCase *tc = tcase_create("gemm");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_isa_names);
  tcase_add_test(tc, test_gemm_int4_tiles);
  tcase_add_test(tc, test_gemm_int8_extremes);
  tcase_add_test(tc, test_conv_gemm_tiles);
  suite_add_tcase(s, tc);
  /* tagged "capped": what depends on the NBL_ISA cap (the gemm cases
   * above loop over every variant themselves); the suite runs these again
   * with the cap at avx2 and at scalar (CK_INCLUDE_TAGS=capped) */
  TCase *tq = tcase_create("quantize");
  tcase_set_tags(tq, "capped");
  tcase_set_timeout(tq, 300); /* the sanitizer build on a loaded machine */
  tcase_add_test(tq, test_quantize_bytes);
  suite_add_tcase(s, tq);
  TCase *tf = tcase_create("fused");
  tcase_set_tags(tf, "capped");
  tcase_set_timeout(tf, 600);
  tcase_add_test(tf, test_fused_conv);
  tcase_add_test(tf, test_fused_gemm_matmul);
  tcase_add_test(tf, test_fused_chain_ranges);
  tcase_add_test(tf, test_dw_blocked);
  tcase_add_test(tf, test_dw_rows);
  tcase_add_test(tf, test_fused_residual);
  tcase_add_test(tf, test_fused_direct);
  suite_add_tcase(s, tf);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(int4_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
