/* test_ternary_kernels.c - the ternary fast path: the tile and vector
 * kernels (every variant this CPU has) equal the plain-C reference
 * (nbl_t_ref) exactly at tile-boundary sizes and at the extremes; the
 * activation bytes equal the codes of runtime/formats/ternary.h bit for bit;
 * fused Conv/Gemm/MatMul sessions agree with the reference path
 * (QuantizeAbsmax8 / QuantizeTernary computed literally, then the float op),
 * with QuantizeTernary or pack-ternary's DequantizeTernary weights. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "runtime/formats/ternary.h"
#include "runtime/kernels/ternary_fused.h"
#include "runtime/kernels/kdebug.h"
#include "runtime/kernels/ternary_gemm.h"
#include "test_data.h"
#include "ck_elem.h"

static uint32_t rng = 1158;
static int irange(int lo, int hi) { return td_xs32_range(&rng, lo, hi); }
static float frand(void) { return td_xs32_float(&rng); }

static const int64_t tsizes[] = {1, 7, 8, 9, 31, 32, 33, 63, 64, 65};
#define NTS (sizeof tsizes / sizeof tsizes[0])
static const nbl_t_isa isas[] = {NBL_T_SCALAR, NBL_T_AVX2, NBL_T_AVX512};

/* codes: activations in [-127, 127] (extreme: all at +-127), weights -1..1 (extreme: all 1) */
static void codes(int8_t *q, int64_t nq, int8_t *w, int64_t nw, int extreme) {
  for (int64_t i = 0; i < nq; i++) q[i] = (int8_t)(extreme ? (extreme > 0 ? 127 : -127) : irange(-127, 127));
  for (int64_t i = 0; i < nw; i++) w[i] = (int8_t)(extreme ? 1 : irange(-1, 1));
  if (!extreme && nq > 1) q[0] = -127, q[nq - 1] = 127;
}

/* The panels of P pixels x K codes q (row-major [P][K]) as the tiles read them. */
static uint8_t *panels(const int8_t *q, int64_t P, int64_t K, int64_t Kp) {
  int64_t Pp = (P + 31) / 32 * 32;
  uint8_t *X4 = malloc((size_t)(Kp * Pp));
  for (int64_t i = 0; i < Kp * Pp; i++) X4[i] = (uint8_t)irange(0, 255); /* padding: anything */
  for (int64_t p = 0; p < P; p++)
    for (int64_t k = 0; k < K; k++)
      X4[((p / 32) * (Kp / 4) + k / 4) * 128 + (p % 32) * 4 + k % 4] = (uint8_t)(q[p * K + k] + 128);
  return X4;
}

/* Every variant's tiles (raw accumulators and the epilogue) and vectors
 * against nbl_t_ref for M channels, P pixels, K. */
static void product_case(int64_t M, int64_t P, int64_t K, int extreme) {
  int8_t *q = malloc((size_t)(P * K)), *w = malloc((size_t)(M * K));
  codes(q, P * K, w, M * K, extreme);
  int32_t *ref = malloc(sizeof(int32_t) * (size_t)(M * P));
  nbl_t_ref(q, w, P, M, K, ref);
  nbl_t_weights W;
  ck_assert_int_eq(nbl_t_pack(w, M, K, K, 1, 1, &W), 0);
  uint8_t *X4 = panels(q, P, K, W.Kp);
  int32_t *Ci = malloc(sizeof(int32_t) * (size_t)(M * P));
  float *Y = malloc(sizeof(float) * (size_t)(M * P)), *bias = malloc(sizeof(float) * (size_t)M);
  for (int64_t m = 0; m < M; m++) bias[m] = frand();
  nbl_t_epi e = {0.01f, bias, 1, -0.5f, 2.0f};
  int8_t *a = malloc((size_t)W.Kv);
  int32_t *vo = malloc(sizeof(int32_t) * (size_t)M);
  for (size_t i = 0; i < 3; i++) {
    nbl_t_isa isa = isas[i];
    if (!nbl_t_isa_supported(isa)) continue;
    memset(Ci, 0x7f, sizeof(int32_t) * (size_t)(M * P));
    nbl_t_tile(isa, &W, X4, 0, M, 0, P, Ci, NULL, P, NULL);
    for (int64_t j = 0; j < M * P; j++)
      ck_elem_msg(Ci[j] == ref[j], "%s tile M=%lld P=%lld K=%lld elem %lld: %d, reference %d",
                  nbl_t_isa_name(isa), (long long)M, (long long)P, (long long)K, (long long)j,
                  Ci[j], ref[j]);
    uint32_t amax = 0;
    e.amax = &amax;
    nbl_t_tile(isa, &W, X4, 0, M, 0, P, NULL, Y, P, &e);
    e.amax = NULL;
    uint32_t want_max = 0;
    for (int64_t j = 0; j < M * P; j++) {
      uint32_t bits;
      memcpy(&bits, Y + j, 4);
      bits &= 0x7fffffffu;
      want_max = bits > want_max ? bits : want_max;
    }
    ck_assert_uint_eq(amax, want_max);
    for (int64_t m = 0; m < M; m++)
      for (int64_t p = 0; p < P; p++) {
        float v = e.sc * (float)ref[m * P + p];
        v = v + bias[m];
        v = v < e.lo ? e.lo : v > e.hi ? e.hi : v;
        ck_elem_msg(Y[m * P + p] == v, "%s epilogue M=%lld P=%lld K=%lld: %g, want %g",
                    nbl_t_isa_name(isa), (long long)M, (long long)P, (long long)K,
                    (double)Y[m * P + p], (double)v);
      }
    for (int64_t p = 0; p < P && p < 3; p++) { /* the vector kernel, a row at a time */
      int32_t qs = nbl_t_gemv_prep(q + p * K, K, W.Kv, a);
      nbl_t_gemv(isa, &W, a, qs, 0, M, vo);
      for (int64_t m = 0; m < M; m++)
        ck_elem_msg(vo[m] == ref[m * P + p], "%s vector M=%lld K=%lld row %lld: %d, want %d",
                    nbl_t_isa_name(isa), (long long)M, (long long)K, (long long)m, vo[m],
                    ref[m * P + p]);
    }
  }
  nbl_t_weights_free(&W);
  free(q), free(w), free(ref), free(X4), free(Ci), free(Y), free(bias), free(a), free(vo);
}

START_TEST(test_tiles_boundaries) {
  for (size_t a = 0; a < NTS; a++)
    for (size_t b = 0; b < NTS; b++)
      for (size_t k = 0; k < NTS; k++) product_case(tsizes[a], tsizes[b], tsizes[k], 0);
}
END_TEST

START_TEST(test_tiles_long_k) {
  /* past the AVX2 kernel's int16 stretch (64 k-quads) and the vector kernel's (32 blocks) */
  static const int64_t ks[] = {255, 256, 257, 511, 512, 2047, 2048, 2049, 4608};
  for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
    product_case(9, 33, ks[i], 0);
    product_case(8, 32, ks[i], 1);  /* every product +127: the largest sums */
    product_case(17, 31, ks[i], -1); /* every product -127 */
  }
}
END_TEST

START_TEST(test_pack_rejects) {
  int8_t bad[4] = {0, 1, 2, -1};
  nbl_t_weights W;
  ck_assert_int_eq(nbl_t_pack(bad, 1, 4, 4, 1, 0, &W), -1);
  ck_assert_ptr_null(W.w);
  ck_assert_str_eq(nbl_t_isa_name(NBL_T_AVX512), "avx512vnni");
  ck_assert_int_eq(nbl_t_isa_supported(NBL_T_SCALAR), 1);
}
END_TEST

/* Activation bytes: every variant gives the codes of nbl_absmax8_fake_quant. */
START_TEST(test_quant_bytes) {
  enum { N = 1000 };
  float x[N], y[N];
  uint8_t u[N];
  for (int i = 0; i < N; i++) x[i] = 3.0f * frand();
  x[7] = 3.0f, x[8] = -3.0f;
  float s = nbl_absmax8_scale(x, N);
  /* exact ties: k + 0.5 times the scale, where representable */
  for (int i = 20; i < 60; i++) x[i] = s * ((float)(i - 40) + 0.5f);
  nbl_absmax8_fake_quant(x, y, N, 0, 0);
  for (size_t v = 0; v < 3; v++) {
    if (!nbl_t_isa_supported(isas[v])) continue;
    for (int off = 0; off <= 128; off += 128) {
      for (int n = 1; n <= N; n = n < 40 ? n + 1 : n * 3) {
        memset(u, 0xAA, sizeof u);
        nbl_t_quant(isas[v], x, u, n, s, off);
        for (int i = 0; i < n; i++) {
          int code = off ? (int)u[i] - 128 : (int)(int8_t)u[i];
          ck_elem_msg(s * (float)code == y[i], "%s n=%d x[%d]=%.9g: code %d, fake quant %.9g",
                      nbl_t_isa_name(isas[v]), n, i, (double)x[i], code, (double)y[i]);
        }
        if (n < N) ck_assert_uint_eq(u[n], 0xAA);
      }
    }
    /* the codes as floats */
    float fq[N];
    nbl_t_quant_f(isas[v], x, fq, N, s);
    for (int i = 0; i < N; i++) ck_assert_msg(s * fq[i] == y[i], "%s quant_f x[%d]", nbl_t_isa_name(isas[v]), i);
    /* a denormal scale (1 / s overflows): still the codes of x / s */
    float tiny[40], ty[40];
    for (int i = 0; i < 40; i++) tiny[i] = 1e-40f * (float)(i - 20);
    float ts = nbl_absmax8_scale(tiny, 40);
    nbl_absmax8_fake_quant(tiny, ty, 40, 0, 0);
    nbl_t_quant_f(isas[v], tiny, fq, 40, ts);
    for (int i = 0; i < 40; i++) ck_assert_msg(ts * fq[i] == ty[i], "%s tiny x[%d]", nbl_t_isa_name(isas[v]), i);
    /* the epilogue on floats against the scalar formula, and its max |y| bits */
    for (int n = 1; n <= 70; n += 3) {
      float yv[70], rv[70], want[70];
      uint32_t wmax = 0;
      for (int i = 0; i < n; i++) {
        yv[i] = (float)irange(-300, 300), rv[i] = frand();
        float t = 0.037f * yv[i];
        t = t + 0.25f;
        t = t + rv[i];
        t = t < -1.0f ? -1.0f : t > 4.0f ? 4.0f : t;
        want[i] = t;
        uint32_t bits;
        memcpy(&bits, &t, 4);
        bits &= 0x7fffffffu;
        wmax = bits > wmax ? bits : wmax;
      }
      uint32_t got = nbl_t_finish(isas[v], yv, n, 0.037f, 0.25f, rv, 1, -1.0f, 4.0f);
      ck_assert_uint_eq(got, wmax);
      for (int i = 0; i < n; i++) ck_assert_msg(yv[i] == want[i], "%s finish n=%d [%d]", nbl_t_isa_name(isas[v]), n, i);
    }
    float mx;
    ck_assert_int_eq(nbl_t_absmax(isas[v], x, N, &mx), 1);
    ck_assert_float_eq(mx, 3.0f);
    for (int bad = 0; bad < 3; bad++) {
      float z[37];
      for (int i = 0; i < 37; i++) z[i] = frand();
      z[bad * 17] = bad == 0 ? NAN : bad == 1 ? INFINITY : -INFINITY;
      ck_assert_int_eq(nbl_t_absmax(isas[v], z, 37, &mx), 0);
    }
  }
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
  int per_row;
  int packed; /* 0: QuantizeTernary(W); 1: DequantizeTernary base 3; 2: 2 bits */
  int64_t strides[2], pads[4], dil[2], group;
  int trans_b;
  float alpha, beta;
  const char *act; /* NULL, "Relu" or "Clip" */
  /* Conv only: an Add of the output and a second graph input r before the
   * activation: 1 r of the output's shape, 2 r of shape [1, M, 1, 1]
   * (broadcast); res_first: r is the Add's first operand */
  int res, res_first;
  int64_t rd[4];
} mspec;

static nbl_model *build_model(const mspec *sp, const float *w, const float *b) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, sp->xrank, sp->xd);
  nbl_graph_add_input(g, x);
  nbl_id xq = nbl_graph_add_value(g, "xq");
  nbl_id q = nbl_graph_add_node(g, "QuantizeAbsmax8", "ai.nibble", "qx", 1, &x, 1, &xq);
  if (sp->per_row) nbl_node_set_attr_int(g, q, "per_row", 1);
  nbl_id wv = nbl_graph_add_value(g, "w"), wq = nbl_graph_add_value(g, "wq");
  int64_t wn = nbl_shape_numel(sp->wrank, sp->wd);
  if (sp->packed) {
    nbl_tern_packing pk = sp->packed == 2 ? NBL_TERN_PACK_2BIT : NBL_TERN_PACK_BASE3;
    float s = nbl_tern_scale(w, (size_t)wn);
    int8_t *c = malloc((size_t)wn);
    nbl_tern_codes(w, c, (size_t)wn, s);
    int64_t nb = (int64_t)nbl_tern_packed_bytes(pk, (size_t)wn);
    uint8_t *p = malloc((size_t)nb + 1);
    nbl_tern_pack(pk, c, (size_t)wn, p);
    nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, "w", NBL_DT_UINT8, 1, &nb, p));
    nbl_id sv = nbl_graph_add_value(g, "ws");
    nbl_graph_set_initializer(g, sv, nbl_tensor_new(m->arena, "ws", NBL_DT_FLOAT, 0, NULL, &s));
    nbl_id in2[2] = {wv, sv};
    nbl_id d = nbl_graph_add_node(g, "DequantizeTernary", "ai.nibble", "dq", 2, in2, 1, &wq);
    nbl_node_set_attr_ints(g, d, "shape", sp->wrank, sp->wd);
    if (sp->packed == 2) nbl_node_set_attr_string(g, d, "packing", "2bit");
    free(c);
    free(p);
  } else {
    nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, sp->wrank, sp->wd, w));
    nbl_graph_add_node(g, "QuantizeTernary", "ai.nibble", "qw", 1, &wv, 1, &wq);
  }
  nbl_id in[3] = {xq, wq, NBL_NONE};
  int n_in = 2;
  if (sp->brank >= 0) {
    in[2] = nbl_graph_add_value(g, "b");
    nbl_graph_set_initializer(g, in[2], nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, sp->brank, sp->bd, b));
    n_in = 3;
  }
  nbl_id y = nbl_graph_add_value(g, "y");
  nbl_id y0 = sp->act || sp->res ? nbl_graph_add_value(g, "y0") : y;
  nbl_id n = nbl_graph_add_node(g, sp->op, "", "op", n_in, in, 1, &y0);
  if (sp->res) {
    nbl_id r = nbl_graph_add_value(g, "r");
    nbl_type_set_tensor(m->arena, &g->values[r].type, NBL_DT_FLOAT, 4, sp->rd);
    nbl_graph_add_input(g, r);
    nbl_id sum = sp->act ? nbl_graph_add_value(g, "sum") : y;
    nbl_id ai[2] = {sp->res_first ? r : y0, sp->res_first ? y0 : r};
    nbl_graph_add_node(g, "Add", "", "add", 2, ai, 1, &sum);
    y0 = sum;
  }
  if (sp->act && !strcmp(sp->act, "Relu")) {
    nbl_graph_add_node(g, "Relu", "", "act", 1, &y0, 1, &y);
  } else if (sp->act) {
    float lo = -0.5f, hi = 0.75f;
    nbl_id vl = nbl_graph_add_value(g, "clo"), vh = nbl_graph_add_value(g, "chi");
    nbl_graph_set_initializer(g, vl, nbl_tensor_new(m->arena, "clo", NBL_DT_FLOAT, 0, NULL, &lo));
    nbl_graph_set_initializer(g, vh, nbl_tensor_new(m->arena, "chi", NBL_DT_FLOAT, 0, NULL, &hi));
    nbl_id ci[3] = {y0, vl, vh};
    nbl_graph_add_node(g, "Clip", "", "act", 3, ci, 1, &y);
  }
  if (!strcmp(sp->op, "Conv")) {
    nbl_node_set_attr_ints(g, n, "pads", 4, sp->pads);
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

static const float *g_r; /* the residual input's data, when the model has one */

static float *run_model(nbl_model *m, const mspec *sp, const float *x, int reference, int threads,
                        size_t *ny) {
  nbl_session_options opt = {.threads = threads, .reference = reference};
  nbl_session *s = NULL;
  nbl_status st = nbl_session_create(m, &opt, &s);
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor in[2];
  memset(in, 0, sizeof in);
  in[0].name = "x";
  in[0].dtype = NBL_DT_FLOAT;
  in[0].rank = sp->xrank;
  for (int i = 0; i < sp->xrank; i++) in[0].dims[i] = sp->xd[i];
  in[0].data = (void *)x;
  in[0].nbytes = sizeof(float) * (size_t)nbl_shape_numel(sp->xrank, sp->xd);
  if (sp->res) {
    in[1].name = "r";
    in[1].dtype = NBL_DT_FLOAT;
    in[1].rank = 4;
    for (int i = 0; i < 4; i++) in[1].dims[i] = sp->rd[i];
    in[1].data = (void *)g_r;
    in[1].nbytes = sizeof(float) * (size_t)nbl_shape_numel(4, sp->rd);
  }
  const nbl_host_tensor *out = NULL;
  st = nbl_session_run(s, sp->res ? 2 : 1, in, &out);
  ck_assert_msg(st == NBL_OK, "%s: %s", reference ? "reference" : "fast", nbl_last_error());
  *ny = out[0].nbytes / sizeof(float);
  float *y = malloc(out[0].nbytes + 4);
  memcpy(y, out[0].data, out[0].nbytes);
  nbl_session_free(s);
  return y;
}

/* The variant the fused nodes must take under this process's NBL_ISA cap
 * (the suite runs the "capped" cases with avx2 and scalar): the best the
 * CPU has at or below the cap. */
static nbl_t_isa expected_isa(void) {
  const char *cap = getenv("NBL_ISA");
  nbl_t_isa want = cap && !strcmp(cap, "scalar") ? NBL_T_SCALAR
                   : cap && !strcmp(cap, "avx2") ? NBL_T_AVX2
                                                 : NBL_T_AVX512;
  while (want > NBL_T_SCALAR && !nbl_t_isa_supported(want)) want = (nbl_t_isa)(want - 1);
  return want;
}

START_TEST(test_capped_variant) {
  /* the cap in force is the one the suite asked for */
  ck_assert_str_eq(nbl_t_isa_name(nbl_t_best_isa()), nbl_t_isa_name(expected_isa()));
}
END_TEST

/* Fast (fused, 1 and 2 threads) vs reference path within 1e-5 of the
 * largest output; expect_int: the integer path ran (per fast run). */
static void check_model(const mspec *sp, int expect_int, int with_nan) {
  int64_t xn = nbl_shape_numel(sp->xrank, sp->xd), wn = nbl_shape_numel(sp->wrank, sp->wd);
  int64_t bn = sp->brank >= 0 ? nbl_shape_numel(sp->brank, sp->bd) : 0;
  float *x = malloc(sizeof(float) * (size_t)(xn + 1)), *w = malloc(sizeof(float) * (size_t)(wn + 1));
  float *b = malloc(sizeof(float) * (size_t)(bn + 1));
  for (int64_t i = 0; i < xn; i++) x[i] = 2.0f * frand();
  for (int64_t i = 0; i < wn; i++) w[i] = 0.5f * frand();
  for (int64_t i = 0; i < bn; i++) b[i] = frand();
  if (with_nan && xn > 1) x[xn / 2] = NAN;
  int64_t rn = sp->res ? nbl_shape_numel(4, sp->rd) : 0;
  float *r = malloc(sizeof(float) * (size_t)(rn + 1));
  for (int64_t i = 0; i < rn; i++) r[i] = 3.0f * frand();
  g_r = r;
  nbl_model *m = build_model(sp, w, b);
  size_t nr;
  float *yr = run_model(m, sp, x, 1, 1, &nr);
  double mx = 0;
  for (size_t i = 0; i < nr; i++)
    if (isfinite(yr[i]) && fabs(yr[i]) > mx) mx = fabs(yr[i]);
  for (int threads = 1; threads <= 2; threads++) {
    long before = nbl_t_integer_runs(), before_isa = nbl_t_isa_runs(expected_isa());
    size_t nf;
    float *yf = run_model(m, sp, x, 0, threads, &nf);
    long runs = nbl_t_integer_runs() - before;
    ck_assert_msg(runs == expect_int, "%s: integer path runs %ld, expected %d", sp->op, runs,
                  expect_int);
    ck_assert_msg(nbl_t_isa_runs(expected_isa()) - before_isa == expect_int,
                  "%s: the integer runs did not take the %s variant", sp->op,
                  nbl_t_isa_name(expected_isa()));
    ck_assert_uint_eq(nf, nr);
    for (size_t i = 0; i < nr; i++) {
      if (isnan(yr[i])) {
        ck_assert_msg(isnan(yf[i]), "%s: elem %zu ref NaN fast %g", sp->op, i, yf[i]);
        continue;
      }
      ck_elem_msg(fabs(yf[i] - yr[i]) <= 1e-5 * mx + 1e-30,
                  "%s (threads %d) x[%lld,%lld,%lld,%lld] w[%lld,%lld,%lld,%lld] packed %d elem %zu: fast %.9g "
                  "ref %.9g",
                  sp->op, threads, (long long)sp->xd[0], (long long)sp->xd[1], (long long)sp->xd[2],
                  (long long)sp->xd[3], (long long)sp->wd[0], (long long)sp->wd[1],
                  (long long)sp->wd[2], (long long)sp->wd[3], sp->packed, i, yf[i], yr[i]);
    }
    free(yf);
  }
  free(yr), free(x), free(w), free(b), free(r);
  nbl_model_free(m);
}

static mspec conv_spec(int64_t N, int64_t C, int64_t H, int64_t W, int64_t M, int64_t k,
                       int64_t s, int64_t pad, int64_t d, int64_t group) {
  mspec sp = {.op = "Conv", .xrank = 4, .xd = {N, C, H, W}, .wrank = 4,
              .wd = {M, C / group, k, k}, .brank = 1, .bd = {M}, .strides = {s, s},
              .pads = {pad, pad, pad, pad}, .dil = {d, d}, .group = group};
  return sp;
}

START_TEST(test_fused_conv) {
  mspec sp;
  sp = conv_spec(2, 3, 9, 9, 8, 3, 1, 1, 1, 1);
  check_model(&sp, 1, 0);
  sp.brank = -1;
  sp.act = "Relu";
  check_model(&sp, 1, 0);
  sp.packed = 1;
  sp.act = "Clip";
  check_model(&sp, 1, 0);
  /* tile boundaries in channels and pixels, strided, padded, dilated, grouped */
  static const int64_t ms[] = {1, 7, 8, 9, 17, 33};
  for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
    sp = conv_spec(1, 5, 11, 7, ms[i], 3, (int64_t)(i % 2) + 1, (int64_t)(i % 3), 1, 1);
    sp.packed = (int)(i % 3);
    check_model(&sp, 1, 0);
  }
  sp = conv_spec(1, 16, 14, 14, 24, 1, 1, 0, 1, 1); /* pointwise */
  sp.act = "Relu";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 16, 6, 5, 40, 1, 1, 0, 1, 1); /* pointwise, 30 pixels: one partial panel */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 70, 9, 9, 12, 3, 1, 1, 1, 1); /* K = 630: past 64 k-quads */
  check_model(&sp, 1, 0);
  sp = conv_spec(2, 8, 10, 10, 8, 3, 1, 2, 2, 1); /* dilated */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 8, 9, 9, 12, 3, 2, 1, 1, 4); /* grouped */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 32, 12, 12, 32, 3, 1, 1, 1, 32); /* depthwise */
  sp.act = "Clip";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 24, 13, 13, 24, 3, 2, 1, 1, 24); /* depthwise, stride 2 */
  sp.packed = 2;
  check_model(&sp, 1, 0);
  sp = conv_spec(2, 16, 15, 15, 16, 3, 1, 2, 2, 16); /* depthwise, dilated */
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 16, 17, 17, 16, 5, 2, 2, 1, 16); /* depthwise 5x5, stride 2 */
  sp.act = "Relu";
  check_model(&sp, 1, 0);
  sp = conv_spec(1, 8, 40, 40, 16, 3, 1, 1, 1, 1); /* several pixel blocks */
  check_model(&sp, 1, 0);
  /* a NaN in X: the literal path (NaN propagates as in the reference) */
  sp = conv_spec(1, 3, 6, 6, 4, 3, 1, 1, 1, 1);
  check_model(&sp, 0, 1);
}
END_TEST

/* A Conv's residual Add (and the Relu/Clip after it) in the epilogue; a
 * residual that broadcasts goes through the Add kernel after the Conv. */
START_TEST(test_fused_residual) {
  static const struct { int64_t C, H, M, k, s, pad, group; } L[] = {
      {8, 9, 16, 3, 1, 1, 1}, {16, 7, 8, 1, 1, 0, 1}, {6, 10, 12, 3, 2, 1, 1},
      {16, 8, 16, 3, 1, 1, 16} /* depthwise */};
  for (size_t i = 0; i < sizeof L / sizeof L[0]; i++)
    for (int kind = 1; kind <= 2; kind++)
      for (int first = 0; first <= 1; first++) {
        mspec sp = conv_spec(2, L[i].C, L[i].H, L[i].H, L[i].M, L[i].k, L[i].s, L[i].pad, 1,
                             L[i].group);
        int64_t oh = (L[i].H + 2 * L[i].pad - L[i].k) / L[i].s + 1;
        sp.res = kind;
        sp.res_first = first;
        int64_t rd[4] = {kind == 1 ? 2 : 1, L[i].M, kind == 1 ? oh : 1, kind == 1 ? oh : 1};
        memcpy(sp.rd, rd, sizeof rd);
        sp.act = first ? "Clip" : "Relu";
        sp.packed = (int)(i % 3);
        check_model(&sp, 1, 0);
      }
}
END_TEST

/* Convolutions of one group and strides 1 or 2 by the direct kernel (no
 * im2col; AVX-512 VNNI) against the im2col tiles: the same outputs bit for
 * bit (exact sums, the same epilogue), at channel quads (C), channel blocks
 * (M), padded rows crossing the 16-lane vectors and the 32-pixel panels,
 * pads, dilations, taps 1 to 5 x 3, long K, residuals, 1 and 2 threads;
 * and the direct kernel ran (only where AVX-512 runs, not on an unpadded
 * or stride-2 1x1 layer). */
START_TEST(test_fused_direct) {
  static const struct { int64_t N, C, H, W, M, kh, kw, pad, d, s; int res; const char *act; } L[] = {
      {1, 2, 5, 5, 1, 3, 3, 1, 1, 1, 0, NULL},       {1, 3, 9, 7, 8, 3, 3, 1, 1, 1, 0, "Relu"},
      {2, 5, 6, 11, 9, 3, 3, 0, 1, 1, 1, "Clip"},    {1, 4, 7, 7, 7, 1, 1, 0, 1, 1, 0, "Relu"},
      {1, 17, 14, 14, 33, 1, 1, 1, 1, 1, 1, "Relu"}, {1, 8, 10, 13, 17, 3, 3, 2, 2, 1, 0, NULL},
      {1, 6, 12, 9, 16, 5, 3, 2, 1, 1, 1, "Clip"},   {1, 70, 9, 9, 12, 3, 3, 1, 1, 1, 0, "Relu"},
      {1, 16, 40, 40, 16, 3, 3, 1, 1, 1, 1, "Relu"}, {2, 9, 3, 33, 24, 1, 3, 0, 1, 1, 0, NULL},
      /* strides 2: the input in four phase planes */
      {1, 8, 14, 14, 16, 3, 3, 1, 1, 2, 1, "Relu"},  {2, 5, 9, 11, 9, 3, 3, 1, 1, 2, 0, "Clip"},
      {1, 6, 10, 7, 8, 1, 1, 0, 1, 2, 0, NULL},      {1, 3, 13, 12, 17, 5, 3, 2, 1, 2, 1, NULL},
      {1, 7, 15, 16, 8, 3, 3, 2, 2, 2, 0, "Relu"},   {1, 64, 56, 56, 16, 3, 3, 1, 1, 2, 0, "Relu"}};
  int avx512 = nbl_t_best_isa() == NBL_T_AVX512;
  for (size_t i = 0; i < sizeof L / sizeof L[0]; i++) {
    mspec sp = conv_spec(L[i].N, L[i].C, L[i].H, L[i].W, L[i].M, L[i].kh, L[i].s, L[i].pad, L[i].d, 1);
    sp.wd[3] = L[i].kw;
    sp.pads[1] = sp.pads[3] = L[i].kw == 1 ? 0 : L[i].pad;
    sp.act = L[i].act;
    sp.packed = (int)(i % 3);
    int64_t oh = (L[i].H + 2 * L[i].pad - (L[i].kh - 1) * L[i].d - 1) / L[i].s + 1;
    int64_t ow = (L[i].W + 2 * sp.pads[1] - (L[i].kw - 1) * L[i].d - 1) / L[i].s + 1;
    if (L[i].res) {
      sp.res = 1;
      int64_t rd[4] = {L[i].N, L[i].M, oh, ow};
      memcpy(sp.rd, rd, sizeof rd);
    }
    int64_t xn = nbl_shape_numel(4, sp.xd), wn = nbl_shape_numel(4, sp.wd);
    float *x = malloc(sizeof(float) * (size_t)xn), *w = malloc(sizeof(float) * (size_t)wn);
    float *b = malloc(sizeof(float) * (size_t)L[i].M);
    for (int64_t k = 0; k < xn; k++) x[k] = 2.0f * frand();
    for (int64_t k = 0; k < wn; k++) w[k] = 0.5f * frand();
    for (int64_t k = 0; k < L[i].M; k++) b[k] = frand();
    int64_t rn = L[i].N * L[i].M * oh * ow;
    float *r = malloc(sizeof(float) * (size_t)rn);
    for (int64_t k = 0; k < rn; k++) r[k] = 3.0f * frand();
    g_r = r;
    nbl_model *m = build_model(&sp, w, b);
    for (int threads = 1; threads <= 2; threads++) {
      size_t n0, n1;
      nbl_kdebug_set(NBL_KS_T_DIRECT, 0);
      float *y0 = run_model(m, &sp, x, 0, threads, &n0);
      nbl_kernel_stats k0, k1;
      nbl_kernel_stats_get(&k0);
      nbl_kdebug_set(NBL_KS_T_DIRECT, 1);
      float *y1 = run_model(m, &sp, x, 0, threads, &n1);
      nbl_kernel_stats_get(&k1);
      nbl_kdebug_reset();
      /* unpadded pointwise layers keep their panels (no im2col there), and 1x1 stride-2 ones */
      int pointwise = L[i].kh == 1 && L[i].kw == 1 && (L[i].pad == 0 || L[i].s == 2);
      ck_assert_int_eq(k1.n[NBL_KC_T_DIRECT_RUNS] - k0.n[NBL_KC_T_DIRECT_RUNS],
                       avx512 && !pointwise ? 1 : 0);
      ck_assert_uint_eq(n0, (size_t)(L[i].N * L[i].M * oh * ow));
      ck_assert_uint_eq(n1, n0);
      for (size_t k = 0; k < n0; k++)
        ck_elem_msg(!memcmp(y0 + k, y1 + k, sizeof(float)),
                    "case %zu (threads %d) elem %zu: direct %.9g, im2col %.9g", i, threads, k,
                    y1[k], y0[k]);
      free(y0), free(y1);
    }
    nbl_model_free(m);
    free(x), free(w), free(b), free(r);
  }
}
END_TEST

/* A chain of convolutions made by the quantize-ternary pass: each fused
 * layer takes its scale from the one before it (no scan), with the same
 * outputs as the reference path. */
static nbl_id chain_conv_k(nbl_model *m, nbl_id x, const char *name, int64_t M, int64_t C,
                           int64_t group, int relu, int64_t k);
static nbl_id chain_conv(nbl_model *m, nbl_id x, const char *name, int64_t M, int64_t C,
                         int64_t group, int relu) {
  return chain_conv_k(m, x, name, M, C, group, relu, 3);
}

/* Conv k x k (pads (k - 1) / 2) of x [C channels] -> M channels, [+ Relu]. */
static nbl_id chain_conv_k(nbl_model *m, nbl_id x, const char *name, int64_t M, int64_t C,
                           int64_t group, int relu, int64_t k) {
  nbl_graph *g = m->graph;
  char nm[64];
  int64_t wd[4] = {M, C / group, k, k};
  int64_t wn = nbl_shape_numel(4, wd);
  float *w = malloc(sizeof(float) * (size_t)wn), b[128];
  for (int64_t i = 0; i < wn; i++) w[i] = 0.3f * frand();
  for (int64_t i = 0; i < M; i++) b[i] = 0.1f * frand();
  snprintf(nm, sizeof nm, "%s_w", name);
  nbl_id wv = nbl_graph_add_value(g, nm);
  nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, nm, NBL_DT_FLOAT, 4, wd, w));
  snprintf(nm, sizeof nm, "%s_b", name);
  nbl_id bv = nbl_graph_add_value(g, nm);
  nbl_graph_set_initializer(g, bv, nbl_tensor_new(m->arena, nm, NBL_DT_FLOAT, 1, &M, b));
  snprintf(nm, sizeof nm, "%s_y", name);
  nbl_id y = nbl_graph_add_value(g, nm);
  nbl_id in[3] = {x, wv, bv};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", name, 3, in, 1, &y);
  int64_t pp = (k - 1) / 2, pads[4] = {pp, pp, pp, pp};
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_node_set_attr_int(g, n, "group", group);
  free(w);
  if (!relu) return y;
  snprintf(nm, sizeof nm, "%s_r", name);
  nbl_id r = nbl_graph_add_value(g, nm);
  nbl_graph_add_node(g, "Relu", "", nm, 1, &y, 1, &r);
  return r;
}

START_TEST(test_fused_chain_handover) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  mspec sp = {.xrank = 4, .xd = {1, 8, 12, 12}};
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 4, sp.xd);
  nbl_graph_add_input(g, x);
  nbl_id v = chain_conv(m, x, "c1", 16, 8, 1, 1);
  v = chain_conv(m, v, "c2", 16, 16, 16, 1); /* depthwise */
  v = chain_conv(m, v, "c3", 24, 16, 1, 0);
  nbl_graph_add_output(g, v);
  nbl_pipeline *pipe = NULL;
  ck_assert_int_eq(nbl_pipeline_parse("quantize-ternary{skip-first-last=0}", &pipe), NBL_OK);
  ck_assert_msg(nbl_pipeline_run(pipe, m, NULL) == NBL_OK, "%s", nbl_last_error());
  nbl_pipeline_free(pipe);
  float xin[8 * 12 * 12];
  for (size_t i = 0; i < sizeof xin / sizeof xin[0]; i++) xin[i] = frand();
  size_t nr, nf;
  float *yr = run_model(m, &sp, xin, 1, 1, &nr);
  long runs = nbl_t_integer_runs(), reuses = nbl_t_amax_reuses();
  float *yf = run_model(m, &sp, xin, 0, 2, &nf);
  ck_assert_int_eq(nbl_t_integer_runs() - runs, 3);
  ck_assert_int_eq(nbl_t_amax_reuses() - reuses, 2);
  double mx = 0;
  for (size_t i = 0; i < nr; i++) mx = fabs(yr[i]) > mx ? fabs(yr[i]) : mx;
  for (size_t i = 0; i < nr; i++)
    ck_assert_msg(fabs(yf[i] - yr[i]) <= 1e-5 * mx, "elem %zu: %g vs %g", i, yf[i], yr[i]);
  free(yr), free(yf);
  nbl_model_free(m);
}
END_TEST

/* The fused depthwise layers' three ways (the plane kernel and its rows,
 * 16 channels at a time, 3x3 blocks of 4 rows) give bit-identical outputs,
 * each within the tolerance of the reference path, at the boundaries of
 * their blocks: channels around 16, columns around 4, 16 and 32, rows
 * around 4, strides 1 and 2, with activations and a residual. Under an
 * AVX2 or scalar cap only the plane kernel runs (the others need AVX-512). */
static float *run_switched(nbl_model *m, const mspec *sp, const float *x, int blocked, int rows3,
                           int threads, size_t *ny) {
  nbl_kdebug_set(NBL_KS_T_DW_BLOCKED, blocked);
  nbl_kdebug_set(NBL_KS_T_DW_ROWS3, rows3);
  float *y = run_model(m, sp, x, 0, threads, ny);
  nbl_kdebug_reset();
  return y;
}

START_TEST(test_fused_depthwise_paths) {
  static const struct { int64_t C, H, W, k, s, pad, d; } L[] = {
      {1, 5, 5, 3, 1, 1, 1},    {15, 7, 7, 3, 1, 1, 1},  {16, 14, 14, 3, 2, 1, 1},
      {17, 9, 3, 3, 1, 1, 1},   {33, 4, 6, 3, 2, 1, 1},  {20, 33, 33, 3, 1, 1, 1},
      {18, 65, 64, 3, 2, 1, 1}, {16, 10, 31, 3, 1, 1, 1}, {16, 16, 36, 3, 1, 0, 1},
      {24, 11, 17, 5, 2, 2, 1}, {17, 13, 20, 3, 1, 2, 2}, {32, 6, 6, 3, 1, 1, 1}};
  int avx512 = nbl_t_best_isa() == NBL_T_AVX512;
  for (size_t i = 0; i < sizeof L / sizeof L[0]; i++)
    for (int variant = 0; variant < 3; variant++) {
      mspec sp = conv_spec(1 + (int64_t)(i % 2), L[i].C, L[i].H, L[i].W, L[i].C, L[i].k, L[i].s,
                           L[i].pad, L[i].d, L[i].C);
      int64_t oh = (L[i].H + 2 * L[i].pad - L[i].d * (L[i].k - 1) - 1) / L[i].s + 1;
      int64_t ow = (L[i].W + 2 * L[i].pad - L[i].d * (L[i].k - 1) - 1) / L[i].s + 1;
      sp.act = variant == 0 ? "Clip" : variant == 1 ? "Relu" : NULL;
      sp.packed = (int)((i + (size_t)variant) % 3);
      if (variant == 2) { /* a residual of the output's shape, then the Add in the epilogue */
        sp.res = 1;
        int64_t rd[4] = {sp.xd[0], L[i].C, oh, ow};
        memcpy(sp.rd, rd, sizeof rd);
        sp.act = "Relu";
      }
      check_model(&sp, 1, 0); /* the default choice against the reference */
      int64_t xn = nbl_shape_numel(4, sp.xd), wn = nbl_shape_numel(4, sp.wd);
      int64_t rn = sp.res ? nbl_shape_numel(4, sp.rd) : 0;
      float *x = malloc(sizeof(float) * (size_t)xn), *w = malloc(sizeof(float) * (size_t)wn);
      float *b = malloc(sizeof(float) * (size_t)L[i].C), *r = malloc(sizeof(float) * (size_t)(rn + 1));
      for (int64_t k = 0; k < xn; k++) x[k] = 2.0f * frand();
      for (int64_t k = 0; k < wn; k++) w[k] = 0.5f * frand();
      for (int64_t k = 0; k < L[i].C; k++) b[k] = frand();
      for (int64_t k = 0; k < rn; k++) r[k] = 3.0f * frand();
      g_r = r;
      nbl_model *m = build_model(&sp, w, b);
      size_t n0, n1, n2;
      for (int threads = 1; threads <= 2; threads++) {
        nbl_kernel_stats k0, k1;
        float *y0 = run_switched(m, &sp, x, 0, 0, threads, &n0); /* plane kernel, its rows */
        nbl_kernel_stats_get(&k0);
        float *y1 = run_switched(m, &sp, x, 1, 0, threads, &n1); /* 16 channels at a time */
        nbl_kernel_stats_get(&k1);
        float *y2 = run_switched(m, &sp, x, 0, 1, threads, &n2); /* 3x3: blocks of rows */
        ck_assert_int_eq(k1.n[NBL_KC_T_DW_BLOCKED_RUNS] - k0.n[NBL_KC_T_DW_BLOCKED_RUNS],
                         avx512 ? 1 : 0);
        ck_assert_uint_eq(n0, n1);
        ck_assert_uint_eq(n0, n2);
        ck_assert_msg(!memcmp(y0, y1, n0 * sizeof(float)),
                      "layer %zu variant %d: 16 channels at a time differs from the plane kernel",
                      i, variant);
        ck_assert_msg(!memcmp(y0, y2, n0 * sizeof(float)),
                      "layer %zu variant %d: 3x3 row blocks differ from the plane kernel", i,
                      variant);
        free(y0), free(y1), free(y2);
      }
      nbl_model_free(m);
      free(x), free(w), free(b), free(r);
    }
}
END_TEST

/* A fused 1x1 Conv handing its output to the fused depthwise Conv after it
 * as that layer's INT8 codes (forced for every size here): the same outputs
 * bit for bit as through the floats, within the tolerance of the reference
 * path, at channel and pixel tile boundaries; only where AVX-512 runs. */
START_TEST(test_fused_code_handover) {
  static const struct { int64_t N, C, M, H, W; int relu; } L[] = {
      {1, 5, 1, 5, 6, 1},  {1, 8, 7, 4, 8, 1},  {2, 3, 8, 3, 11, 0}, {1, 16, 9, 9, 9, 1},
      {1, 4, 17, 7, 9, 1}, {2, 9, 33, 6, 6, 1}, {1, 12, 96, 14, 14, 1}};
  int avx512 = nbl_t_best_isa() == NBL_T_AVX512;
  /* the producer 1x1 (its panels) or 3x3 (the direct kernel) */
  for (size_t i = 0; i < 2 * (sizeof L / sizeof L[0]); i++) {
    int64_t ks = i % 2 ? 3 : 1;
    nbl_model *m = nbl_model_new();
    nbl_model_set_opset(m, "", 13);
    nbl_graph *g = m->graph;
    nbl_id x = nbl_graph_add_value(g, "x");
    mspec sp = {.xrank = 4, .xd = {L[i / 2].N, L[i / 2].C, L[i / 2].H, L[i / 2].W}};
    nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 4, sp.xd);
    nbl_graph_add_input(g, x);
    nbl_id v = chain_conv_k(m, x, "f", L[i / 2].M, L[i / 2].C, 1, L[i / 2].relu, ks);
    v = chain_conv_k(m, v, "g", L[i / 2].M, L[i / 2].M, L[i / 2].M, 1, 3); /* depthwise */
    nbl_graph_add_output(g, v);
    nbl_pipeline *pipe = NULL;
    ck_assert_int_eq(nbl_pipeline_parse("quantize-ternary{skip-first-last=0}", &pipe), NBL_OK);
    ck_assert_msg(nbl_pipeline_run(pipe, m, NULL) == NBL_OK, "%s", nbl_last_error());
    nbl_pipeline_free(pipe);
    int64_t xn = nbl_shape_numel(4, sp.xd);
    float *xin = malloc(sizeof(float) * (size_t)xn);
    for (int64_t k = 0; k < xn; k++) xin[k] = 2.0f * frand();
    size_t nr, n0, n1;
    float *yr = run_model(m, &sp, xin, 1, 1, &nr);
    double mx = 0;
    for (size_t k = 0; k < nr; k++) mx = fabs(yr[k]) > mx ? fabs(yr[k]) : mx;
    for (int threads = 1; threads <= 2; threads++) {
      nbl_kdebug_set(NBL_KS_T_CODE_LINK_MIN, 1LL << 40); /* never: floats */
      float *y0 = run_model(m, &sp, xin, 0, threads, &n0);
      nbl_kernel_stats k0, k1;
      nbl_kernel_stats_get(&k0);
      nbl_kdebug_set(NBL_KS_T_CODE_LINK_MIN, 0); /* always: codes */
      long runs = nbl_t_integer_runs();
      float *y1 = run_model(m, &sp, xin, 0, threads, &n1);
      nbl_kernel_stats_get(&k1);
      nbl_kdebug_reset();
      ck_assert_int_eq(nbl_t_integer_runs() - runs, 2);
      ck_assert_int_eq(k1.n[NBL_KC_T_CODE_LINKS] - k0.n[NBL_KC_T_CODE_LINKS], avx512 ? 1 : 0);
      ck_assert_uint_eq(n0, nr);
      ck_assert_uint_eq(n1, nr);
      ck_assert_msg(!memcmp(y0, y1, nr * sizeof(float)), "case %zu: codes differ from floats", i);
      for (size_t k = 0; k < nr; k++)
        ck_elem_msg(fabs(y1[k] - yr[k]) <= 1e-5 * mx, "case %zu elem %zu: %g vs %g", i, k,
                    y1[k], yr[k]);
      free(y0), free(y1);
    }
    free(yr), free(xin);
    nbl_model_free(m);
  }
}
END_TEST

START_TEST(test_fused_gemm_matmul) {
  static const int64_t gs[] = {1, 7, 8, 9, 33, 65};
  int i = 0;
  for (size_t a = 0; a < 6; a++)
    for (size_t b = 0; b < 6; b++)
      for (size_t k = 0; k < 6; k++, i++) {
        int64_t M = gs[a], N = gs[b], K = gs[k];
        int tb = (int)((a + b + k) & 1);
        mspec sp = {.op = "Gemm", .xrank = 2, .xd = {M, K}, .wrank = 2, .wd = {tb ? N : K, tb ? K : N},
                    .brank = (int)(k % 3) - 1 + (k % 3 == 2), .bd = {k % 3 == 2 ? M : N, N},
                    .trans_b = tb, .alpha = (b & 1) ? 0.5f : 1.0f, .beta = 1.5f,
                    .packed = i % 3, .per_row = (int)(a & 1)};
        if (sp.brank == 1) sp.bd[0] = N;
        sp.act = (k % 4 == 1) ? "Relu" : (k % 4 == 3) ? "Clip" : NULL;
        check_model(&sp, 1, 0);
        mspec mm = {.op = "MatMul", .xrank = 3, .xd = {2, M, K}, .wrank = 2, .wd = {K, N},
                    .brank = -1, .packed = (i + 1) % 3, .per_row = (int)(b & 1)};
        check_model(&mm, 1, 0);
      }
  /* long rows, vector and tile forms */
  mspec big = {.op = "MatMul", .xrank = 2, .xd = {3, 2100}, .wrank = 2, .wd = {2100, 40},
               .brank = -1, .per_row = 1};
  check_model(&big, 1, 0);
  big.xd[0] = 40;
  big.packed = 1;
  check_model(&big, 1, 0);
  mspec nan = {.op = "MatMul", .xrank = 2, .xd = {4, 9}, .wrank = 2, .wd = {9, 5}, .brank = -1,
               .per_row = 1};
  check_model(&nan, 0, 1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ternary_kernels");
  TCase *tc = tcase_create("products");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_pack_rejects);
  tcase_add_test(tc, test_tiles_boundaries);
  tcase_add_test(tc, test_tiles_long_k);
  tcase_add_test(tc, test_quant_bytes);
  suite_add_tcase(s, tc);
  /* tagged "capped": the fused sessions take the variant of the NBL_ISA cap;
   * the suite runs them again capped at avx2 and at scalar */
  TCase *tf = tcase_create("fused");
  tcase_set_tags(tf, "capped");
  tcase_set_timeout(tf, 600);
  tcase_add_test(tf, test_capped_variant);
  tcase_add_test(tf, test_fused_conv);
  tcase_add_test(tf, test_fused_gemm_matmul);
  tcase_add_test(tf, test_fused_residual);
  tcase_add_test(tf, test_fused_direct);
  tcase_add_test(tf, test_fused_depthwise_paths);
  tcase_add_test(tf, test_fused_chain_handover);
  tcase_add_test(tf, test_fused_code_handover);
  suite_add_tcase(s, tf);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
