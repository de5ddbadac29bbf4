/* test_quant4.c - the INT4 quantizer (runtime/formats/int4.c), the ai.nibble
 * QuantizeInt4 kernel, and the pack-int4 / lower-to-onnx / quantize-int4
 * passes, on hand-computed cases. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "ir/ir.h"
#include "runtime/formats/int4.h"
#include "ck_elem.h"

static nbl_q4_config cfg4(void) {
  nbl_q4_config c;
  nbl_q4_config_default(&c);
  return c;
}

/* Fake-quantize x with cfg; returns the params used. */
static nbl_q4_params fq(const nbl_q4_config *c, const float *x, float *y, size_t n) {
  nbl_q4_params p;
  const char *why = NULL;
  ck_assert_int_eq(nbl_q4_choose(c, x, n, 0.0f, &p, &why), 0);
  nbl_q4_fake_quant(c, &p, x, y, n, 0);
  return p;
}

START_TEST(test_symmetric_ties) {
  /* max|x| = 7 -> s = 1; x/s are exact halves: half to even */
  const float x[] = {7, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, -7, 1.25f};
  const float want[] = {7, 0, 2, 2, -0.0f, -2, -2, 4, -7, 1};
  float y[10];
  nbl_q4_config c = cfg4();
  nbl_q4_params p = fq(&c, x, y, 10);
  ck_assert_float_eq(p.scale, 1.0f);
  ck_assert_int_eq(p.zero, 0);
  ck_assert_int_eq(p.qmin, -8);
  ck_assert_int_eq(p.qmax, 7);
  for (int i = 0; i < 10; i++) ck_assert_float_eq(y[i], want[i]);
  /* s = 14/7 = 2: -16 saturates at -8 only when the scale is fixed */
  c.scale_source = NBL_Q4_SCALE_FIXED;
  c.fixed_scale = 2.0f;
  const float x2[] = {-16, 15, 3, 100};
  float y2[4];
  fq(&c, x2, y2, 4);
  ck_assert_float_eq(y2[0], -16.0f); /* q = -8 */
  ck_assert_float_eq(y2[1], 14.0f);  /* 7.5 -> 8 -> clamp 7 */
  ck_assert_float_eq(y2[2], 4.0f);   /* 1.5 -> 2 */
  ck_assert_float_eq(y2[3], 14.0f);
  /* narrow: codes in [-7, 7] */
  c.narrow = 1;
  fq(&c, x2, y2, 4);
  ck_assert_float_eq(y2[0], -14.0f);
}
END_TEST

START_TEST(test_affine_min_max) {
  /* min -1, max 2: s = 3/15 = 0.2, z = round(-8 + 5) = -3 */
  const float x[] = {-1, 0, 0.5f, 2};
  float y[4];
  nbl_q4_config c = cfg4();
  c.mode = NBL_Q4_AFFINE;
  nbl_q4_params p = fq(&c, x, y, 4);
  ck_assert_float_eq_tol(p.scale, 0.2f, 1e-7f);
  ck_assert_int_eq(p.zero, -3);
  ck_assert_int_eq(nbl_q4_code(&c, &p, -1.0f, 0), -8);
  ck_assert_int_eq(nbl_q4_code(&c, &p, 2.0f, 0), 7);
  ck_assert_int_eq(nbl_q4_code(&c, &p, 0.0f, 0), -3);
  ck_assert_float_eq_tol(y[0], -1.0f, 1e-6f);
  ck_assert_float_eq(y[1], 0.0f);
  ck_assert_float_eq_tol(y[2], 0.4f, 1e-6f); /* 2.5 -> 2 (even) */
  ck_assert_float_eq_tol(y[3], 2.0f, 1e-6f);
  /* all positive data: min still maps to -8 and max to 7 */
  const float x2[] = {1, 2, 1.5f};
  fq(&c, x2, y, 3);
  ck_assert_float_eq_tol(y[0], 1.0f, 1e-6f);
  ck_assert_float_eq_tol(y[1], 2.0f, 1e-6f);
}
END_TEST

START_TEST(test_all_zero_outlier_nan) {
  float z[6] = {0}, y[6];
  nbl_q4_config c = cfg4();
  nbl_q4_params p = fq(&c, z, y, 6);
  ck_assert_float_eq(p.scale, 1.0f);
  for (int i = 0; i < 6; i++) ck_assert_float_eq(y[i], 0.0f);
  c.mode = NBL_Q4_AFFINE;
  p = fq(&c, z, y, 6);
  ck_assert_float_eq(p.scale, 1.0f);
  ck_assert_int_eq(p.zero, -8);
  for (int i = 0; i < 6; i++) ck_assert_float_eq(y[i], 0.0f);
  /* one huge outlier: s = 1000/7, everything else rounds to 0 */
  c = cfg4();
  const float o[] = {1000, 1, -1, 0.5f, -60};
  float yo[5];
  p = fq(&c, o, yo, 5);
  ck_assert_float_eq_tol(p.scale, 1000.0f / 7.0f, 1e-3f);
  ck_assert_float_eq_tol(yo[0], 1000.0f, 1e-3f);
  ck_assert_float_eq(yo[1], 0.0f);
  ck_assert_float_eq(yo[2], -0.0f);
  ck_assert_float_eq(yo[3], 0.0f);
  ck_assert_float_eq(yo[4], -0.0f); /* -60 / 142.9 = -0.42 -> 0 */
}
END_TEST

START_TEST(test_nan_inf) {
  const float x[] = {NAN, 1.5f, -INFINITY, 7, INFINITY};
  float y[5];
  nbl_q4_config c = cfg4();
  nbl_q4_params p = fq(&c, x, y, 5);
  ck_assert_float_eq(p.scale, 1.0f); /* statistics skip NaN/Inf: max|x| = 7 */
  ck_assert(isnan(y[0]));
  ck_assert(isinf(y[2]) && y[2] < 0);
  ck_assert(isinf(y[4]) && y[4] > 0);
  ck_assert_float_eq(y[1], 2.0f); /* 1.5 -> 2 */
  ck_assert_float_eq(y[3], 7.0f);
}
END_TEST

START_TEST(test_sawb) {
  enum { N = 1000 };
  float x[N], y[N];
  double s2 = 0, s1 = 0;
  for (int i = 0; i < N; i++) {
    x[i] = (float)(((i * 37) % 201) - 100) / 100.0f;
    s2 += (double)x[i] * x[i];
    s1 += fabs(x[i]);
  }
  double c = 12.68 * sqrt(s2 / N) - 12.80 * (s1 / N);
  ck_assert(c > 0.5 && c < 1.0); /* the clip lies inside the data range */
  ck_assert_double_eq_tol(nbl_q4_sawb_clip(x, N, 4), c, 1e-9);
  nbl_q4_config cf = cfg4();
  cf.scale_source = NBL_Q4_SCALE_SAWB;
  nbl_q4_params p = fq(&cf, x, y, N);
  ck_assert_float_eq_tol(p.scale, (float)(c / 7), 1e-7f);
  /* values beyond the clip saturate at +-7 s / -8 s */
  for (int i = 0; i < N; i++) {
    if (x[i] >= 1.0f) ck_assert_float_eq(y[i], 7 * p.scale);
    if (x[i] <= -1.0f) ck_assert_float_eq(y[i], -8 * p.scale);
  }
  /* 8-bit coefficients */
  double c8 = 31.76 * sqrt(s2 / N) - 35.04 * (s1 / N);
  ck_assert(c8 > s1 / N); /* inside the fit's domain: the formula itself */
  ck_assert_double_eq_tol(nbl_q4_sawb_clip(x, N, 8), c8, 1e-9);
  /* A flat tensor (|x| spread evenly over [0.1, 1]): E[x^2] / E|x|^2 = 1.223,
   * just above (35.04 / 31.76)^2 = 1.217, so the 8-bit formula gives a clip
   * of 0.05 (5 % of max|x|, below E|x| = 0.55) that would saturate every
   * weight to +-0.05 (a first layer whose outputs are then its bias alone,
   * the LeNet-5 run that never trained). A clip below E|x| is outside the
   * fit's domain: max|x|. */
  enum { NF = 901 };
  float xf[NF];
  double f2 = 0, f1 = 0;
  for (int i = 0; i < NF; i++) {
    xf[i] = (float)(100 + i) / 1000.0f * (i % 2 ? -1.0f : 1.0f);
    f2 += (double)xf[i] * xf[i];
    f1 += fabs(xf[i]);
  }
  double cf8 = 31.76 * sqrt(f2 / NF) - 35.04 * (f1 / NF);
  ck_assert(cf8 > 0.0 && cf8 < 0.1 && cf8 < f1 / NF); /* the degenerate fit */
  ck_assert_double_eq_tol(nbl_q4_sawb_clip(xf, NF, 8), 1.0, 1e-12);
  /* the 4-bit fit stays in its domain there (E|x| = 0.55 < c < max) */
  double cf4 = 12.68 * sqrt(f2 / NF) - 12.80 * (f1 / NF);
  ck_assert(cf4 > f1 / NF && cf4 < 1.0);
  ck_assert_double_eq_tol(nbl_q4_sawb_clip(xf, NF, 4), cf4, 1e-9);
  /* c <= 0 falls back to max|x|: |x| constant gives 12.68 - 12.80 < 0 */
  const float pm[] = {0.5f, -0.5f, 0.5f, -0.5f};
  ck_assert_double_eq_tol(nbl_q4_sawb_clip(pm, 4, 4), 0.5, 1e-12);
  /* no coefficients for 5 bits: max */
  ck_assert_double_eq_tol(nbl_q4_sawb_clip(pm, 4, 5), 0.5, 1e-12);
  /* affine SAWB is refused */
  cf.mode = NBL_Q4_AFFINE;
  const char *why = NULL;
  ck_assert_int_eq(nbl_q4_choose(&cf, x, N, 0, &p, &why), -1);
  ck_assert_ptr_nonnull(why);
}
END_TEST

START_TEST(test_stochastic_unbiased) {
  enum { N = 100000 };
  float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
  float *y2 = malloc(sizeof(float) * N);
  nbl_q4_config c = cfg4();
  c.scale_source = NBL_Q4_SCALE_FIXED;
  c.fixed_scale = 1.0f;
  c.rounding = NBL_Q4_ROUND_STOCHASTIC;
  c.seed = 42;
  for (int i = 0; i < N; i++) x[i] = (i & 1) ? 0.3f : -2.7f;
  fq(&c, x, y, N);
  double m_pos = 0, m_neg = 0;
  for (int i = 0; i < N; i++) {
    if (i & 1) {
      ck_elem(y[i] == 0.0f || y[i] == 1.0f);
      m_pos += y[i];
    } else {
      ck_elem(y[i] == -3.0f || y[i] == -2.0f);
      m_neg += y[i];
    }
  }
  m_pos /= N / 2;
  m_neg /= N / 2;
  /* std of each mean is sqrt(0.21 / 50000) = 0.002; bound 0.01 is 5 sigma */
  ck_assert_double_eq_tol(m_pos, 0.3, 0.01);
  ck_assert_double_eq_tol(m_neg, -2.7, 0.01);
  /* reproducible, chunk-independent, seed-dependent */
  nbl_q4_params p;
  ck_assert_int_eq(nbl_q4_choose(&c, x, N, 0, &p, NULL), 0);
  nbl_q4_fake_quant(&c, &p, x, y2, 1000, 0);
  nbl_q4_fake_quant(&c, &p, x + 1000, y2 + 1000, N - 1000, 1000);
  ck_assert_int_eq(memcmp(y, y2, sizeof(float) * N), 0);
  c.seed = 43;
  nbl_q4_fake_quant(&c, &p, x, y2, N, 0);
  ck_assert_int_ne(memcmp(y, y2, sizeof(float) * N), 0);
  free(x);
  free(y);
  free(y2);
}
END_TEST

START_TEST(test_pact_and_bits) {
  /* pact alpha 3, 4 bits: s = 3/15 = 0.2, z = -8; clamp to [0, 3] */
  const float x[] = {-1, 0, 1.1f, 3, 10};
  float y[5];
  nbl_q4_config c = cfg4();
  c.scale_source = NBL_Q4_SCALE_PACT;
  nbl_q4_params p;
  ck_assert_int_eq(nbl_q4_choose(&c, x, 5, 3.0f, &p, NULL), 0);
  ck_assert_float_eq_tol(p.scale, 0.2f, 1e-7f);
  ck_assert_int_eq(p.zero, -8);
  nbl_q4_fake_quant(&c, &p, x, y, 5, 0);
  ck_assert_float_eq(y[0], 0.0f);
  ck_assert_float_eq(y[1], 0.0f);
  ck_assert_float_eq_tol(y[2], 1.2f, 1e-6f); /* 5.5 -> 6 */
  ck_assert_float_eq_tol(y[3], 3.0f, 1e-6f);
  ck_assert_float_eq_tol(y[4], 3.0f, 1e-6f);
  ck_assert_int_eq(nbl_q4_choose(&c, x, 5, 0.0f, &p, NULL), -1); /* alpha must be > 0 */
  /* 8 bits: s = max/127 */
  c = cfg4();
  c.bits = 8;
  const float x8[] = {127, -200, 0.5f};
  float y8[3];
  p = fq(&c, x8, y8, 3);
  ck_assert_float_eq_tol(p.scale, 200.0f / 127.0f, 1e-6f);
  ck_assert_int_eq(p.qmin, -128);
  c.bits = 9;
  ck_assert_int_eq(nbl_q4_choose(&c, x8, 3, 0, &p, NULL), -1);
}
END_TEST

START_TEST(test_pack_bytes) {
  const int8_t q[] = {-8, 7, -1, 0, 3};
  uint8_t b[3];
  nbl_q4_pack(q, 5, b);
  ck_assert_uint_eq(b[0], 0x78); /* low nibble first: -8 = 0x8, 7 = 0x7 */
  ck_assert_uint_eq(b[1], 0x0F);
  ck_assert_uint_eq(b[2], 0x03);
  int8_t back[5];
  nbl_q4_unpack(b, 5, back);
  ck_assert_int_eq(memcmp(q, back, 5), 0);
}
END_TEST

/* ------------------------------------------------------------------ graphs */

/* Model: input x float[n] -> QuantizeInt4(attrs) -> y; or with a constant
 * weight w (then the output is QuantizeInt4(w) + x). */
static nbl_model *q_model(int n, const float *w, const char *mode, const char *src, int bits,
                          int narrow) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  int64_t d = n;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 1, &d);
  nbl_graph_add_input(g, x);
  nbl_id y = nbl_graph_add_value(g, "y");
  nbl_id qin = x;
  if (w) {
    qin = nbl_graph_add_value(g, "w");
    nbl_graph_set_initializer(g, qin, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 1, &d, w));
  }
  nbl_id qo = w ? nbl_graph_add_value(g, "wq") : y;
  nbl_id ins[2] = {qin, NBL_NONE};
  int n_in = 1;
  if (!strcmp(src, "pact")) {
    float a = 2.0f;
    ins[1] = nbl_graph_add_value(g, "alpha");
    nbl_graph_set_initializer(g, ins[1], nbl_tensor_new(m->arena, "alpha", NBL_DT_FLOAT, 0, NULL, &a));
    n_in = 2;
  }
  nbl_id q = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", "q", n_in, ins, 1, &qo);
  nbl_node_set_attr_string(g, q, "mode", mode);
  nbl_node_set_attr_string(g, q, "scale_source", src);
  nbl_node_set_attr_int(g, q, "bits", bits);
  nbl_node_set_attr_int(g, q, "narrow", narrow);
  if (!strcmp(src, "fixed")) nbl_node_set_attr_float(g, q, "scale", 0.75f);
  if (w) {
    nbl_id a[2] = {qo, x};
    nbl_graph_add_node(g, "Add", "", "add", 2, a, 1, &y);
  }
  nbl_type_set_tensor(m->arena, &g->values[y].type, NBL_DT_FLOAT, 1, &d);
  nbl_graph_add_output(g, y);
  return m;
}

static void run_model(nbl_model *m, const float *x, int n, float *y) {
  nbl_session *s = NULL;
  nbl_session_options o = {.threads = 1, .reference = 1};
  ck_assert_msg(nbl_session_create(m, &o, &s) == NBL_OK, "%s", nbl_last_error());
  nbl_host_tensor in = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .dims = {n},
                        .data = (void *)x, .nbytes = sizeof(float) * (size_t)n};
  ck_assert_msg(nbl_session_run(s, 1, &in, NULL) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(nbl_session_copy_output(s, 0, y, sizeof(float) * (size_t)n), NBL_OK);
  nbl_session_free(s);
}

static void run_pipeline(nbl_model *m, const char *spec) {
  nbl_pipeline *p = NULL;
  ck_assert_msg(nbl_pipeline_parse(spec, &p) == NBL_OK, "%s", nbl_last_error());
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options o = {.verify_each = 1, .log = devnull};
  ck_assert_msg(nbl_pipeline_run(p, m, &o) == NBL_OK, "%s", nbl_last_error());
  fclose(devnull);
  nbl_pipeline_free(p);
}

START_TEST(test_kernel_and_lowering) {
  /* The kernel on the tie vector, then lower-to-onnx (QuantizeLinear /
   * DequantizeLinear at opset 21) must give identical outputs. */
  static const struct {
    const char *mode, *src;
    int bits, narrow;
  } cases[] = {{"symmetric", "max", 4, 0}, {"affine", "max", 4, 0}, {"symmetric", "max", 8, 0},
               {"symmetric", "max", 3, 1}, {"affine", "pact", 4, 0}, {"affine", "fixed", 4, 0},
               {"symmetric", "fixed", 2, 0}};
  const float x[] = {7, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f, -7, 1.25f, 0.1f, -3.3f};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    nbl_model *m = q_model(12, NULL, cases[k].mode, cases[k].src, cases[k].bits, cases[k].narrow);
    float y0[12], y1[12];
    run_model(m, x, 12, y0);
    if (k == 0) { /* hand-computed: s = 1 */
      const float want[] = {7, 0, 2, 2, 0, -2, -2, 4, -7, 1, 0, -3};
      for (int i = 0; i < 12; i++) ck_assert_float_eq(y0[i], want[i]);
    }
    run_pipeline(m, "lower-to-onnx");
    ck_assert_int_eq(nbl_model_opset(m, ""), 21);
    ck_assert_int_eq(nbl_model_opset(m, "ai.nibble"), 0);
    for (int i = 0; i < m->graph->n_nodes; i++)
      ck_assert_str_eq(m->graph->nodes[i].domain, "");
    run_model(m, x, 12, y1);
    for (int i = 0; i < 12; i++)
      ck_assert_msg(y0[i] == y1[i], "case %zu element %d: %g vs %g", k, i, y0[i], y1[i]);
    nbl_model_free(m);
  }
}
END_TEST

START_TEST(test_pack_pass) {
  /* max|w| = 3.5 -> s = 0.5 */
  const float w[] = {3.5f, -3.5f, 0.25f, 1.0f, -0.75f};
  const float x[] = {0, 0, 0, 0, 10};
  nbl_model *m = q_model(5, w, "symmetric", "max", 4, 0);
  float y0[5], y1[5];
  run_model(m, x, 5, y0);
  /* codes: 7, -7, 0 (0.5 -> 0), 2, -2 (-1.5 -> -2) */
  const float want[] = {3.5f, -3.5f, 0.0f, 1.0f, 9.0f};
  for (int i = 0; i < 5; i++) ck_assert_float_eq(y0[i], want[i]);
  run_pipeline(m, "pack-int4");
  nbl_graph *g = m->graph;
  const nbl_tensor *codes = NULL, *scale = NULL;
  for (int i = 0; i < g->n_values; i++) {
    const nbl_tensor *t = g->values[i].init;
    if (t && t->dtype == NBL_DT_INT4) codes = t;
    if (t && t->dtype == NBL_DT_FLOAT && t->rank == 0) scale = t;
    ck_assert(!t || t->dtype != NBL_DT_FLOAT || t->rank == 0); /* the FP32 weight is gone */
  }
  ck_assert_ptr_nonnull(codes);
  ck_assert_ptr_nonnull(scale);
  ck_assert_uint_eq(codes->nbytes, 3);
  const uint8_t *b = codes->data;
  ck_assert_uint_eq(b[0], 0x97); /* 7 | (-7 & 0xF) << 4 */
  ck_assert_uint_eq(b[1], 0x20); /* 0 | 2 << 4 */
  ck_assert_uint_eq(b[2], 0x0E); /* -2 */
  float sv;
  memcpy(&sv, scale->data, 4);
  ck_assert_float_eq(sv, 0.5f);
  int deq = 0;
  for (int i = 0; i < g->n_nodes; i++)
    deq += !g->nodes[i].dead && !strcmp(g->nodes[i].op_type, "DequantizeLinear");
  ck_assert_int_eq(deq, 1);
  run_model(m, x, 5, y1);
  for (int i = 0; i < 5; i++) ck_assert_float_eq(y0[i], y1[i]);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_quantize_pass) {
  /* x -> MatMul(w1) -> MatMul(w2) -> MatMul(w1): three layers, w1 shared
   * (one quantizer per bit width: first/last at 8 bits share one). */
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t d[2] = {2, 2};
  const float w[] = {1, 2, 3, 4};
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 2, d);
  nbl_graph_add_input(g, x);
  nbl_id w1 = nbl_graph_add_value(g, "w1"), w2 = nbl_graph_add_value(g, "w2");
  nbl_graph_set_initializer(g, w1, nbl_tensor_new(m->arena, "w1", NBL_DT_FLOAT, 2, d, w));
  nbl_graph_set_initializer(g, w2, nbl_tensor_new(m->arena, "w2", NBL_DT_FLOAT, 2, d, w));
  nbl_id a = nbl_graph_add_value(g, "a"), b = nbl_graph_add_value(g, "b"),
         y = nbl_graph_add_value(g, "y");
  nbl_id i0[2] = {x, w1}, i1[2] = {a, w2}, i2[2] = {b, w1};
  nbl_graph_add_node(g, "MatMul", "", "mm0", 2, i0, 1, &a);
  nbl_graph_add_node(g, "MatMul", "", "mm1", 2, i1, 1, &b);
  nbl_graph_add_node(g, "MatMul", "", "mm2", 2, i2, 1, &y);
  nbl_graph_add_output(g, y);
  run_pipeline(m, "quantize-int4{exclude=mm9*}");
  int n4 = 0, n8 = 0, sawb = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->op_type, "QuantizeInt4")) continue;
    if (nbl_attr_int(n, "bits", 4) == 8) n8++;
    else n4++;
    sawb += !strcmp(nbl_attr_string(n, "scale_source", ""), "sawb");
  }
  /* 8 bits: w1 (shared by mm0/mm2), x, b; 4 bits: w2, a */
  ck_assert_int_eq(n8, 3);
  ck_assert_int_eq(n4, 2);
  ck_assert_int_eq(sawb, 2);
  ck_assert_int_eq(nbl_model_opset(m, "ai.nibble"), 1);
  nbl_model_free(m);
}
END_TEST

/* A weight computed from constants only (here Transpose(Constant), as
 * exporters that do not fold write them) is a constant too: quantize-int4
 * and quantize-ternary fold it into an initializer and quantize it as a
 * weight (recomputed-per-run activation quantizers before); the summary
 * names an unnamed layer by its op and output. The chain x -> mm0(w1) ->
 * mm1(Transpose(Constant)) -> mm2(w1), 2x2. */
static nbl_model *const_weight_model(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t d[2] = {2, 2};
  const float w[] = {1, 2, 3, 4}, wc[] = {0.5f, -1, 2, 0.25f};
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 2, d);
  nbl_graph_add_input(g, x);
  nbl_id w1 = nbl_graph_add_value(g, "w1"), w2 = nbl_graph_add_value(g, "w2");
  nbl_graph_set_initializer(g, w1, nbl_tensor_new(m->arena, "w1", NBL_DT_FLOAT, 2, d, w));
  nbl_id wt = nbl_graph_add_value(g, "wt");
  nbl_id c = nbl_graph_add_node(g, "Constant", "", "wconst", 0, NULL, 1, &wt);
  nbl_node_set_attr_tensor(g, c, "value", nbl_tensor_new(m->arena, "", NBL_DT_FLOAT, 2, d, wc));
  nbl_graph_add_node(g, "Transpose", "", "wtrans", 1, &wt, 1, &w2);
  nbl_id a = nbl_graph_add_value(g, "a"), b = nbl_graph_add_value(g, "b"), y = nbl_graph_add_value(g, "y");
  nbl_id i0[2] = {x, w1}, i1[2] = {a, w2}, i2[2] = {b, w1};
  nbl_graph_add_node(g, "MatMul", "", "mm0", 2, i0, 1, &a);
  nbl_graph_add_node(g, "MatMul", "", "", 2, i1, 1, &b);
  nbl_graph_add_node(g, "MatMul", "", "mm2", 2, i2, 1, &y);
  nbl_graph_add_output(g, y);
  return m;
}

START_TEST(test_quantize_constant_weight) {
  const char *passes[2] = {"quantize-int4{skip-first-last=0}", "quantize-ternary{skip-first-last=0}"};
  const char *qop[2] = {"QuantizeInt4", "QuantizeTernary"};
  for (int k = 0; k < 2; k++) {
    nbl_model *m = const_weight_model();
    nbl_graph *g = m->graph;
    char *log = NULL;
    size_t loglen = 0;
    FILE *lf = open_memstream(&log, &loglen);
    nbl_pipeline *p = NULL;
    ck_assert_int_eq(nbl_pipeline_parse(passes[k], &p), NBL_OK);
    nbl_pipeline_options o = {.verify_each = 1, .log = lf};
    ck_assert_msg(nbl_pipeline_run(p, m, &o) == NBL_OK, "%s", nbl_last_error());
    nbl_pipeline_free(p);
    fclose(lf);
    const nbl_id w2 = nbl_graph_find(g, "w2");
    ck_assert_ptr_nonnull(g->values[w2].init); /* the transposed Constant, now an initializer */
    ck_assert_float_eq(((const float *)g->values[w2].init->data)[1], 2.0f);
    int consts = 0, wq = 0;
    for (int i = 0; i < g->n_nodes; i++) {
      const nbl_node *n = &g->nodes[i];
      if (n->dead) continue;
      consts += !strcmp(n->op_type, "Constant") || !strcmp(n->op_type, "Transpose");
      /* a weight quantizer reads an initializer */
      if (!strcmp(n->op_type, qop[k]) && g->values[n->inputs[0]].init) wq++;
    }
    ck_assert_int_eq(consts, 0);
    ck_assert_int_eq(wq, 2); /* w1 (shared) and w2 */
    if (k == 1) ck_assert_msg(!strstr(log, "not constant"), "%s", log);
    else ck_assert_msg(strstr(log, "(2 weights, 3 activations)"), "%s", log);
    free(log);
    nbl_model_free(m);
  }
  /* an unnamed layer kept in 8 bits is named by its op and output */
  nbl_model *m = const_weight_model();
  char *log = NULL;
  size_t loglen = 0;
  FILE *lf = open_memstream(&log, &loglen);
  nbl_pipeline *p = NULL;
  ck_assert_int_eq(nbl_pipeline_parse("quantize-int4{exclude=mm0}", &p), NBL_OK);
  nbl_pipeline_options o = {.log = lf};
  ck_assert_int_eq(nbl_pipeline_run(p, m, &o), NBL_OK);
  nbl_pipeline_free(p);
  fclose(lf);
  ck_assert_msg(strstr(log, "kept in 8 bits: MatMul -> 'b', mm2;"), "%s", log);
  ck_assert_msg(strstr(log, "skipped: mm0 (excluded)"), "%s", log);
  free(log);
  nbl_model_free(m);
}
END_TEST

/* ------------------------------------------------------------------ attribute decoder */

/* One broken QuantizeInt4 attribute set: applied to the node of q_model. */
typedef struct bad_attr {
  const char *what;   /* the attribute the message must name */
  nbl_status st;      /* the status every consumer must return */
  void (*apply)(nbl_graph *g, nbl_id q);
} bad_attr;

static void a_bits9(nbl_graph *g, nbl_id q) { nbl_node_set_attr_int(g, q, "bits", 9); }
static void a_bits1(nbl_graph *g, nbl_id q) { nbl_node_set_attr_int(g, q, "bits", 1); }
static void a_bits_str(nbl_graph *g, nbl_id q) { nbl_node_set_attr_string(g, q, "bits", "4"); }
static void a_mode(nbl_graph *g, nbl_id q) { nbl_node_set_attr_string(g, q, "mode", "asym"); }
static void a_mode_int(nbl_graph *g, nbl_id q) { nbl_node_set_attr_int(g, q, "mode", 1); }
static void a_source(nbl_graph *g, nbl_id q) {
  nbl_node_set_attr_string(g, q, "scale_source", "entropy");
}
static void a_rounding(nbl_graph *g, nbl_id q) { nbl_node_set_attr_string(g, q, "rounding", "up"); }
static void a_narrow2(nbl_graph *g, nbl_id q) { nbl_node_set_attr_int(g, q, "narrow", 2); }
static void a_narrow_float(nbl_graph *g, nbl_id q) { nbl_node_set_attr_float(g, q, "narrow", 1); }
static void a_seed_str(nbl_graph *g, nbl_id q) { nbl_node_set_attr_string(g, q, "seed", "7"); }
static void a_fixed_noscale(nbl_graph *g, nbl_id q) {
  nbl_node_set_attr_string(g, q, "scale_source", "fixed");
}
static void fixed_scale(nbl_graph *g, nbl_id q, float s) {
  nbl_node_set_attr_string(g, q, "scale_source", "fixed");
  nbl_node_set_attr_float(g, q, "scale", s);
}
static void a_fixed_zero(nbl_graph *g, nbl_id q) { fixed_scale(g, q, 0.0f); }
static void a_fixed_neg(nbl_graph *g, nbl_id q) { fixed_scale(g, q, -1.0f); }
static void a_fixed_nan(nbl_graph *g, nbl_id q) { fixed_scale(g, q, NAN); }
static void a_fixed_inf(nbl_graph *g, nbl_id q) { fixed_scale(g, q, INFINITY); }
static void a_fixed_int(nbl_graph *g, nbl_id q) {
  nbl_node_set_attr_string(g, q, "scale_source", "fixed");
  nbl_node_set_attr_int(g, q, "scale", 1);
}
static void a_sawb_affine(nbl_graph *g, nbl_id q) {
  nbl_node_set_attr_string(g, q, "scale_source", "sawb");
  nbl_node_set_attr_string(g, q, "mode", "affine");
}

static const bad_attr bad_attrs[] = {
    {"bits=9", NBL_ERR_UNSUPPORTED, a_bits9},
    {"bits=1", NBL_ERR_UNSUPPORTED, a_bits1},
    {"'bits'", NBL_ERR_INVALID_MODEL, a_bits_str},
    {"mode 'asym'", NBL_ERR_UNSUPPORTED, a_mode},
    {"'mode'", NBL_ERR_INVALID_MODEL, a_mode_int},
    {"scale_source 'entropy'", NBL_ERR_UNSUPPORTED, a_source},
    {"rounding 'up'", NBL_ERR_UNSUPPORTED, a_rounding},
    {"narrow", NBL_ERR_INVALID_MODEL, a_narrow2},
    {"'narrow'", NBL_ERR_INVALID_MODEL, a_narrow_float},
    {"'seed'", NBL_ERR_INVALID_MODEL, a_seed_str},
    {"'scale'", NBL_ERR_INVALID_MODEL, a_fixed_noscale},
    {"scale=0", NBL_ERR_INVALID_MODEL, a_fixed_zero},
    {"scale=-1", NBL_ERR_INVALID_MODEL, a_fixed_neg},
    {"scale=nan", NBL_ERR_INVALID_MODEL, a_fixed_nan},
    {"scale=inf", NBL_ERR_INVALID_MODEL, a_fixed_inf},
    {"'scale'", NBL_ERR_INVALID_MODEL, a_fixed_int},
    {"sawb", NBL_ERR_INVALID_MODEL, a_sawb_affine},
};
#define N_BAD_ATTRS ((int)(sizeof bad_attrs / sizeof bad_attrs[0]))

/* q_model(w) with bad attribute set k applied to its QuantizeInt4 node. */
static nbl_model *bad_model(int k, const float *w) {
  nbl_model *m = q_model(4, w, "symmetric", "max", 4, 0);
  nbl_id q = NBL_NONE;
  for (int i = 0; i < m->graph->n_nodes; i++)
    if (!strcmp(m->graph->nodes[i].op_type, "QuantizeInt4")) q = i;
  ck_assert_int_ne(q, NBL_NONE);
  bad_attrs[k].apply(m->graph, q);
  return m;
}

static const nbl_node *q_node(const nbl_model *m) {
  for (int i = 0; i < m->graph->n_nodes; i++)
    if (!strcmp(m->graph->nodes[i].op_type, "QuantizeInt4")) return &m->graph->nodes[i];
  return NULL;
}

START_TEST(test_decode_attrs) {
  /* every attribute given: decoded as written */
  nbl_model *m = q_model(4, NULL, "affine", "fixed", 3, 0);
  nbl_graph *g = m->graph;
  nbl_node_set_attr_string(g, 0, "rounding", "stochastic");
  nbl_node_set_attr_int(g, 0, "seed", -5);
  nbl_q4_config c;
  char err[256] = "";
  ck_assert_int_eq(nbl_q4_config_decode(q_node(m), &c, err, sizeof err), NBL_OK);
  ck_assert_int_eq(c.bits, 3);
  ck_assert_int_eq(c.mode, NBL_Q4_AFFINE);
  ck_assert_int_eq(c.scale_source, NBL_Q4_SCALE_FIXED);
  ck_assert_float_eq(c.fixed_scale, 0.75f);
  ck_assert_int_eq(c.narrow, 0);
  ck_assert_int_eq(c.rounding, NBL_Q4_ROUND_STOCHASTIC);
  ck_assert_int_eq(c.seed, -5);
  nbl_model_free(m);
  /* no attributes at all: the defaults */
  m = q_model(4, NULL, "symmetric", "max", 4, 1);
  nbl_node *n = &m->graph->nodes[0];
  n->n_attrs = 0;
  ck_assert_int_eq(nbl_q4_config_decode(n, &c, NULL, 0), NBL_OK);
  ck_assert_int_eq(c.bits, 4);
  ck_assert_int_eq(c.mode, NBL_Q4_SYMMETRIC);
  ck_assert_int_eq(c.scale_source, NBL_Q4_SCALE_MAX);
  ck_assert_int_eq(c.narrow, 0);
  ck_assert_int_eq(c.rounding, NBL_Q4_ROUND_HALF_EVEN);
  ck_assert_int_eq(c.seed, 0);
  /* a scale beside a computed scale_source is not used */
  nbl_model_free(m);
  m = q_model(4, NULL, "symmetric", "max", 4, 0);
  nbl_node_set_attr_float(m->graph, 0, "scale", -1.0f);
  ck_assert_int_eq(nbl_q4_config_decode(q_node(m), &c, NULL, 0), NBL_OK);
  nbl_model_free(m);
}
END_TEST

START_TEST(test_decode_bad_attrs) {
  /* each broken attribute: the decoder's status, and a message naming it */
  nbl_model *m = bad_model(_i, NULL);
  nbl_q4_config c;
  char err[256] = "";
  nbl_status st = nbl_q4_config_decode(q_node(m), &c, err, sizeof err);
  ck_assert_msg(st == bad_attrs[_i].st, "case %s: status %d", bad_attrs[_i].what, st);
  ck_assert_msg(strstr(err, bad_attrs[_i].what), "case %s: message '%s'", bad_attrs[_i].what,
                err);
  nbl_model_free(m);
}
END_TEST

/* Run m once on the reference path; returns the status. */
static nbl_status try_run(nbl_model *m, int reference) {
  nbl_session *s = NULL;
  nbl_session_options o = {.threads = 1, .reference = reference};
  nbl_status st = nbl_session_create(m, &o, &s);
  if (st != NBL_OK) return st;
  const float x[4] = {1, -2, 3, 0.5f};
  nbl_host_tensor in = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .dims = {4},
                        .data = (void *)x, .nbytes = sizeof x};
  st = nbl_session_run(s, 1, &in, NULL);
  nbl_session_free(s);
  return st;
}

static nbl_status try_pipeline(nbl_model *m, const char *spec) {
  nbl_pipeline *p = NULL;
  ck_assert_msg(nbl_pipeline_parse(spec, &p) == NBL_OK, "%s", nbl_last_error());
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options o = {.log = devnull};
  nbl_status st = nbl_pipeline_run(p, m, &o);
  fclose(devnull);
  nbl_pipeline_free(p);
  return st;
}

START_TEST(test_lowering_rejects_what_runtime_rejects) {
  /* The kernel (reference and fast session), lower-to-onnx on a dynamic
   * input and pack-int4 on a constant weight refuse the same attribute with
   * the same status and a message naming the node and the attribute. */
  const bad_attr *b = &bad_attrs[_i];
  const float w[4] = {0.5f, -1, 2, 0.25f};
  for (int reference = 0; reference <= 1; reference++) {
    nbl_model *m = bad_model(_i, NULL);
    nbl_status st = try_run(m, reference);
    ck_assert_msg(st == b->st, "case %s, run reference=%d: status %d (%s)", b->what, reference,
                  st, nbl_last_error());
    ck_assert_msg(strstr(nbl_last_error(), "'q'") && strstr(nbl_last_error(), b->what),
                  "case %s: run: %s", b->what, nbl_last_error());
    nbl_model_free(m);
  }
  const char *passes[] = {"lower-to-onnx", "pack-int4"};
  for (int k = 0; k < 2; k++) {
    nbl_model *m = bad_model(_i, k == 0 ? NULL : w);
    nbl_status st = try_pipeline(m, passes[k]);
    ck_assert_msg(st == b->st, "case %s, %s: status %d (%s)", b->what, passes[k], st,
                  nbl_last_error());
    ck_assert_msg(strstr(nbl_last_error(), "'q'") && strstr(nbl_last_error(), b->what),
                  "case %s: %s: %s", b->what, passes[k], nbl_last_error());
    nbl_model_free(m);
  }
}
END_TEST


/* scale_source=mse on hand-computed cases (runtime/formats/int4.h: bins of
 * width R/1024, candidates every 16 bins, above the clip (centre - c)^2,
 * below it s^2/12, d = 0 exact). */
/* Every element of an unsampled tensor is counted once wherever it sits
 * (the bins are written in chunks and counted apart, four at a time with
 * tails): ones and one outlier at every position give the same clip at
 * sizes around the vector width and the chunk (1,024), and it is not the
 * clip of the ones alone (a dropped outlier would give that). */
START_TEST(test_mse_positions) {
  static float x[2100];
  nbl_q4_config c = cfg4();
  c.mode = _i ? NBL_Q4_SYMMETRIC : NBL_Q4_AFFINE;
  c.scale_source = NBL_Q4_SCALE_MSE;
  const int sizes[] = {1, 2, 3, 5, 15, 16, 17, 31, 33, 47, 63, 65, 1023, 1024, 1025, 1027, 2047, 2049, 2050};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    const int n = sizes[k];
    for (int i = 0; i < n; i++) x[i] = 1.0f;
    const float alone = nbl_q4_mse_clip(&c, x, (size_t)n, 0.0f, 64.0f); /* (R = 64 given) */
    float first = 0.0f;
    for (int p = 0; p < n; p++) {
      x[p] = 64.0f;
      const float got = nbl_q4_mse_clip(&c, x, (size_t)n, 0.0f, 64.0f);
      x[p] = 1.0f;
      if (p == 0) first = got;
      ck_elem_msg(got == first, "n %d: outlier at %d: clip %g, at 0: %g", n, p, got, first);
    }
    ck_assert_msg(n == 1 || first != alone, "n %d: clip %g with the outlier, %g without", n, first, alone);
  }
}
END_TEST

START_TEST(test_mse_clip) {
  enum { N = 15002 };
  static float x[N], y[N];
  /* 5000 zeros (on the grid's end: no error), 10000 ones (bin 16), one 64
   * (bin 1023; R = 64): in bin units E(k) = (1023.5 - k)^2 + 10000 k^2 /
   * (12 * 15^2) for k > 16, least at k = 224 (825037 against 825277 at 208
   * and 827206 at 240; k = 1024, no clip: 3.9e6): c = 64 * 224 / 1024 = 14.
   * Counting the zeros as rounding noise would move it to k = 160. */
  for (int i = 0; i < N; i++) x[i] = i < 5000 ? 0.0f : 1.0f;
  x[N - 2] = 64.0f;
  x[N - 1] = NAN; /* skipped */
  nbl_q4_config c = cfg4();
  c.mode = NBL_Q4_AFFINE;
  c.scale_source = NBL_Q4_SCALE_MSE;
  ck_assert_float_eq(nbl_q4_mse_clip(&c, x, N, 0.0f, 64.0f), 14.0f);
  nbl_q4_params p = fq(&c, x, y, N);
  ck_assert_float_eq(p.scale, 14.0f / 15.0f);
  ck_assert_int_eq(p.zero, -8);
  ck_assert_float_eq(y[N - 2], 14.0f); /* the outlier saturates at the clip */
  ck_assert_float_eq(y[5000], 14.0f / 15.0f); /* 1 -> code -7 */
  ck_assert(isnan(y[N - 1]));
  /* the actual squared error is smaller than max's (which puts 1 on 0 or s) */
  nbl_q4_config cm = c;
  cm.scale_source = NBL_Q4_SCALE_MAX;
  static float ym[N];
  fq(&cm, x, ym, N);
  double e = 0, em = 0;
  for (int i = 0; i < N - 1; i++) e += (y[i] - x[i]) * (y[i] - x[i]), em += (ym[i] - x[i]) * (ym[i] - x[i]);
  ck_assert_msg(e < 0.5 * em, "mse %g, max %g", e, em);
  /* symmetric (L = qmax = 7): E(k) = (1023.5 - k)^2 + 10000 k^2 / (12 * 49),
   * least at k = 64 (990300; 990784 at 48, 999036 at 80): c = 4, s = 4/7 */
  c.mode = NBL_Q4_SYMMETRIC;
  ck_assert_float_eq(nbl_q4_mse_clip(&c, x, N, 0.0f, 64.0f), 4.0f);
  p = fq(&c, x, y, N);
  ck_assert_float_eq(p.scale, 4.0f / 7.0f);
  ck_assert_int_eq(p.zero, 0);
  /* uniform data (affine, 16 levels): the estimate's optimum is where
   * c^2 / (4 L^2) = (R - c)^2, c = R * 2L / (2L + 1) = 0.968 R (a clip costs
   * little but also gains little); candidates every R/64 */
  for (int i = 0; i < 10000; i++) x[i] = (float)i / 9999.0f;
  c.mode = NBL_Q4_AFFINE;
  float cu = nbl_q4_mse_clip(&c, x, 10000, 0.0f, 1.0f);
  ck_assert_msg(cu >= 0.95f && cu <= 0.985f, "uniform: clip %g", cu);
  /* all zero: scale 1 as max */
  memset(x, 0, sizeof(float) * 16);
  p = fq(&c, x, y, 16);
  ck_assert_float_eq(p.scale, 1.0f);
  /* above NBL_Q4_MSE_SAMPLE elements: the clip of the documented sample
   * (blocks of 64, every k-th), gathered by hand */
  enum { NB = 100000 };
  float *big = malloc(sizeof(float) * NB), *smp = malloc(sizeof(float) * NB);
  ck_assert_ptr_nonnull(big);
  ck_assert_ptr_nonnull(smp);
  unsigned st = 7;
  for (int i = 0; i < NB; i++) {
    st = st * 1664525u + 1013904223u;
    float u = (float)(st >> 8) / 16777216.0f;
    big[i] = u < 0.3f ? 0.0f : u * u * u * 5.0f;
  }
  big[64] = 40.0f; /* in an unsampled block: sets the range, not the histogram */
  size_t want = NBL_Q4_MSE_SAMPLE / 64, k = ((NB + 63) / 64 + want - 1) / want, m = 0;
  ck_assert(k >= 2);
  for (size_t b = 0; b * 64 < NB; b += k)
    for (size_t i = b * 64; i < b * 64 + 64 && i < NB; i++) smp[m++] = big[i];
  ck_assert(m <= NBL_Q4_MSE_SAMPLE);
  c.mode = NBL_Q4_AFFINE;
  float cb = nbl_q4_mse_clip(&c, big, NB, 0.0f, 40.0f);
  ck_assert_float_eq(cb, nbl_q4_mse_clip(&c, smp, m, 0.0f, 40.0f));
  ck_assert(cb < 10.0f);
  /* a planted outlier in a sampled block changes it */
  big[0] = 40.0f;
  ck_assert_float_ne(nbl_q4_mse_clip(&c, big, NB, 0.0f, 40.0f), cb);
  free(big);
  free(smp);
}
END_TEST

/* The QuantizeInt4 kernel with scale_source=mse: the fast session (vector
 * scan, then the format's clip) and the reference give the same bits, on a
 * tensor above the sample size, and so does the graph lower-to-onnx makes. */
START_TEST(test_mse_kernel) {
  enum { N = 70001 };
  float *x = malloc(sizeof(float) * N), *yf = malloc(sizeof(float) * N), *yr = malloc(sizeof(float) * N);
  ck_assert_ptr_nonnull(x);
  ck_assert_ptr_nonnull(yf);
  ck_assert_ptr_nonnull(yr);
  unsigned st = 3;
  for (int i = 0; i < N; i++) {
    st = st * 1664525u + 1013904223u;
    float u = (float)(st >> 8) / 16777216.0f;
    x[i] = u < 0.4f ? 0.0f : (u - 0.4f) * (u - 0.4f) * (i % 997 == 0 ? 30.0f : 3.0f);
  }
  const char *modes[] = {"affine", "symmetric"};
  for (int k = 0; k < 2; k++) {
    nbl_model *m = q_model(N, NULL, modes[k], "mse", 4, 0);
    for (int reference = 0; reference <= 1; reference++) {
      nbl_session *s = NULL;
      nbl_session_options o = {.threads = 2, .reference = reference};
      ck_assert_int_eq(nbl_session_create(m, &o, &s), NBL_OK);
      nbl_host_tensor in = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = 1, .dims = {N},
                            .data = x, .nbytes = sizeof(float) * N};
      ck_assert_msg(nbl_session_run(s, 1, &in, NULL) == NBL_OK, "%s", nbl_last_error());
      ck_assert_int_eq(nbl_session_copy_output(s, 0, reference ? yr : yf, sizeof(float) * N), NBL_OK);
      nbl_session_free(s);
    }
    ck_assert(!memcmp(yf, yr, sizeof(float) * N));
    float top = 0;
    for (int i = 0; i < N; i++) top = yf[i] > top ? yf[i] : top;
    float mx = 0;
    for (int i = 0; i < N; i++) mx = x[i] > mx ? x[i] : mx;
    ck_assert_msg(top < 0.5f * mx, "%s: top level %g of max %g: not clipped", modes[k], top, mx);
    /* lower-to-onnx expresses it in standard ops (tests/int4/check_lowered_mse.py runs them in
     * ONNX Runtime); nibble's own run of the lowered graph gives the same bits */
    ck_assert_msg(try_pipeline(m, "lower-to-onnx") == NBL_OK, "%s", nbl_last_error());
    for (int i = 0; i < m->graph->n_nodes; i++)
      ck_assert(m->graph->nodes[i].dead || strcmp(m->graph->nodes[i].domain, "ai.nibble"));
    run_model(m, x, N, yr);
    ck_assert(!memcmp(yf, yr, sizeof(float) * N));
    nbl_model_free(m);
  }
  free(x);
  free(yf);
  free(yr);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("quant4");
  TCase *tc = tcase_create("quant4");
  tcase_add_test(tc, test_symmetric_ties);
  tcase_add_test(tc, test_affine_min_max);
  tcase_add_test(tc, test_all_zero_outlier_nan);
  tcase_add_test(tc, test_nan_inf);
  tcase_add_test(tc, test_sawb);
  tcase_add_loop_test(tc, test_mse_positions, 0, 2);
  tcase_add_test(tc, test_mse_clip);
  tcase_add_test(tc, test_mse_kernel);
  tcase_add_test(tc, test_stochastic_unbiased);
  tcase_add_test(tc, test_pact_and_bits);
  tcase_add_test(tc, test_pack_bytes);
  tcase_add_test(tc, test_kernel_and_lowering);
  tcase_add_test(tc, test_pack_pass);
  tcase_add_test(tc, test_quantize_pass);
  tcase_add_test(tc, test_quantize_constant_weight);
  tcase_add_test(tc, test_decode_attrs);
  tcase_add_loop_test(tc, test_decode_bad_attrs, 0, N_BAD_ATTRS);
  tcase_add_loop_test(tc, test_lowering_rejects_what_runtime_rejects, 0, N_BAD_ATTRS);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
