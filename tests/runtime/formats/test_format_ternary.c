/* test_format_ternary.c - ternary weights and INT8 absmax activations
 * (runtime/formats/ternary.c) on hand-computed cases. */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "one_node.h"
#include "runtime/formats/ternary.h"

START_TEST(test_scale_and_codes) {
  /* mean|w| = (0.5+1+3+0.5+0)/5 = 1: codes round(w/1) clamped to [-1,1];
   * +-0.5 are exact halves: half to even gives 0 */
  const float w[] = {0.5f, -1.0f, 3.0f, -0.5f, 0.0f};
  float s = nbl_tern_scale(w, 5);
  ck_assert_float_eq(s, 1.0f);
  float y[5];
  nbl_tern_fake_quant(w, y, 5, s);
  const float want[] = {0.0f, -1.0f, 1.0f, 0.0f, 0.0f};
  for (int i = 0; i < 5; i++) ck_assert_msg(y[i] == want[i], "w[%d]=%g -> %g", i, w[i], y[i]);
  /* just above half: rounds away */
  ck_assert_int_eq(nbl_tern_code(0.5001f, 1.0f), 1);
  ck_assert_int_eq(nbl_tern_code(-0.5001f, 1.0f), -1);
  /* 1.5 rounds to 2 (even) then clamps to 1 */
  ck_assert_int_eq(nbl_tern_code(1.5f, 1.0f), 1);
}
END_TEST

START_TEST(test_zero_nan_outlier) {
  const float z[] = {0.0f, -0.0f, 0.0f};
  ck_assert_float_eq(nbl_tern_scale(z, 3), 1.0f);
  /* NaN/Inf left out of the mean and passed through */
  const float x[] = {NAN, INFINITY, 2.0f, -2.0f};
  float s = nbl_tern_scale(x, 4);
  ck_assert_float_eq(s, 2.0f);
  float y[4];
  nbl_tern_fake_quant(x, y, 4, s);
  ck_assert(isnan(y[0]));
  ck_assert(isinf(y[1]));
  ck_assert_float_eq(y[2], 2.0f);
  ck_assert_float_eq(y[3], -2.0f);
  /* one huge outlier: s = (1000 + 9*0.1)/10 = 100.09; everything small -> 0 */
  float o[10];
  for (int i = 0; i < 9; i++) o[i] = 0.1f;
  o[9] = 1000.0f;
  s = nbl_tern_scale(o, 10);
  ck_assert(fabsf(s - 100.09f) < 1e-3f);
  float yo[10];
  nbl_tern_fake_quant(o, yo, 10, s);
  for (int i = 0; i < 9; i++) ck_assert_float_eq(yo[i], 0.0f);
  ck_assert_float_eq(yo[9], s);
}
END_TEST

START_TEST(test_absmax8) {
  /* max|x| = 127 -> s = 1: codes are the rounded values */
  const float x[] = {127.0f, -127.0f, 0.5f, 1.5f, -2.5f, 3.2f};
  float y[6];
  nbl_absmax8_fake_quant(x, y, 6, 0, 0);
  const float want[] = {127.0f, -127.0f, 0.0f, 2.0f, -2.0f, 3.0f};
  for (int i = 0; i < 6; i++) ck_assert_msg(y[i] == want[i], "x=%g -> %g", x[i], y[i]);
  /* per row: each row gets its own scale */
  /* row 0: s = 2, 1/2 = 0.5 -> 0 (half to even), 3/2 = 1.5 -> 2; row 1: s = 1 */
  const float r[] = {254.0f, 1.0f, 3.0f, 127.0f, 1.0f, 3.0f};
  float yr[6];
  nbl_absmax8_fake_quant(r, yr, 6, 3, 1);
  const float wr[] = {254.0f, 0.0f, 4.0f, 127.0f, 1.0f, 3.0f};
  for (int i = 0; i < 6; i++) ck_assert_msg(yr[i] == wr[i], "row x=%g -> %g", r[i], yr[i]);
}
END_TEST

START_TEST(test_packing) {
  int8_t q[13], back[13];
  for (int i = 0; i < 13; i++) q[i] = (int8_t)((i * 7) % 3 - 1);
  uint8_t p2[4], p3[3];
  ck_assert_uint_eq(nbl_tern_pack2_bytes(13), 4);
  ck_assert_uint_eq(nbl_tern_pack3_bytes(13), 3);
  nbl_tern_pack2(q, 13, p2);
  nbl_tern_unpack2(p2, 13, back);
  for (int i = 0; i < 13; i++) ck_assert_int_eq(back[i], q[i]);
  nbl_tern_pack3(q, 13, p3);
  ck_assert_int_eq(nbl_tern_unpack3(p3, 13, back), 0);
  for (int i = 0; i < 13; i++) ck_assert_int_eq(back[i], q[i]);
  /* the byte layouts, by hand: codes -1,0,1,1 -> u 0,1,2,2 */
  const int8_t h[] = {-1, 0, 1, 1, 1};
  uint8_t b2[2], b3[1];
  nbl_tern_pack2(h, 4, b2);
  ck_assert_uint_eq(b2[0], 0 | 1 << 2 | 2 << 4 | 2 << 6);
  nbl_tern_pack3(h, 5, b3);
  ck_assert_uint_eq(b3[0], 0 + 1 * 3 + 2 * 9 + 2 * 27 + 2 * 81);
  const uint8_t bad[] = {243};
  ck_assert_int_eq(nbl_tern_unpack3(bad, 5, back), -1);
}
END_TEST

/* ------------------------------------------------------------------ the ops, through a session */

/* QuantizeTernary on x[0..n) (shape [n]): Y into y, scale into *s; status. */
static nbl_status run_qt(const float *x, int64_t n, float *y, float *s, int reference) {
  one *o = one_new_domain("QuantizeTernary", "ai.nibble", 1, 1, 2);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, x);
  nbl_status st = one_run(o, reference);
  if (!st) {
    memcpy(y, outf(o, 0), sizeof(float) * (size_t)n);
    *s = outf(o, 1)[0];
    ck_assert_int_eq(o->out[1].rank, 0);
  }
  one_free(o);
  return st;
}

START_TEST(test_op_quantize_ternary) {
  for (int ref = 0; ref <= 1; ref++) {
    /* mean|w| = (2 + 1 + 1 + 0 + 4 + 4) / 6 = 2: exactly +-0.5 s = +-1 round to 0 (half to
     * even), 1.5 s = 3 would round to 2 and clamps to 1 */
    const float w[] = {2.0f, -1.0f, 1.0f, 0.0f, 4.0f, -4.0f};
    float y[6], s;
    ck_assert_int_eq(run_qt(w, 6, y, &s, ref), NBL_OK);
    ck_assert_float_eq(s, 2.0f);
    const float want[] = {2.0f, 0.0f, 0.0f, 0.0f, 2.0f, -2.0f};
    for (int i = 0; i < 6; i++) ck_assert_msg(y[i] == want[i], "w=%g -> %g", w[i], y[i]);
    /* values exactly at 1.5 s: round half to even gives 2, clamped to 1 */
    const float h[] = {3.0f, -3.0f, 1.0f, 1.0f}; /* mean 2 */
    ck_assert_int_eq(run_qt(h, 4, y, &s, ref), NBL_OK);
    ck_assert(y[0] == 2.0f && y[1] == -2.0f && y[2] == 0.0f && y[3] == 0.0f);
    /* all zero: scale 1, all codes 0 */
    const float z[] = {0.0f, -0.0f, 0.0f};
    ck_assert_int_eq(run_qt(z, 3, y, &s, ref), NBL_OK);
    ck_assert_float_eq(s, 1.0f);
    for (int i = 0; i < 3; i++) ck_assert_float_eq(y[i], 0.0f);
    /* NaN and Inf: out of the mean, passed through */
    const float nf[] = {NAN, 1.0f, -INFINITY, -3.0f};
    ck_assert_int_eq(run_qt(nf, 4, y, &s, ref), NBL_OK);
    ck_assert_float_eq(s, 2.0f);
    ck_assert(isnan(y[0]) && y[1] == 0.0f && isinf(y[2]) && y[2] < 0 && y[3] == -2.0f);
    /* one huge outlier: s = (1e6 + 99 * 0.01) / 100, every small weight becomes 0 */
    float o[100];
    for (int i = 0; i < 99; i++) o[i] = 0.01f * (float)(i % 2 ? 1 : -1);
    o[99] = 1e6f;
    float yo[100];
    ck_assert_int_eq(run_qt(o, 100, yo, &s, ref), NBL_OK);
    ck_assert(fabsf(s - 10000.0099f) < 1e-2f);
    for (int i = 0; i < 99; i++) ck_assert_float_eq(yo[i], 0.0f);
    ck_assert_float_eq(yo[99], s);
  }
}
END_TEST

START_TEST(test_op_absmax8_and_grad) {
  /* per row of the last axis: row 0 max 254 -> s 2; row 1 max 127 -> s 1 */
  const float x[] = {254.0f, 1.0f, 3.0f, 127.0f, 0.5f, -1.5f};
  int64_t d[2] = {2, 3};
  one *o = one_new_domain("QuantizeAbsmax8", "ai.nibble", 1, 1, 2);
  nbl_node_set_attr_int(G(o), o->node, "per_row", 1);
  one_in(o, 0, NBL_DT_FLOAT, 2, d, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const float want[] = {254.0f, 0.0f, 4.0f, 127.0f, 0.0f, -2.0f};
  for (int i = 0; i < 6; i++) ck_assert_msg(outf(o, 0)[i] == want[i], "%g -> %g", x[i], outf(o, 0)[i]);
  ck_assert_int_eq(o->out[1].rank, 2);
  ck_assert_int_eq(o->out[1].dims[1], 1);
  ck_assert_float_eq(outf(o, 1)[0], 2.0f);
  ck_assert_float_eq(outf(o, 1)[1], 1.0f);
  one_free(o);
  /* bad attribute: a message naming the node and the attribute */
  o = one_new_domain("QuantizeAbsmax8", "ai.nibble", 1, 1, 1);
  nbl_node_set_attr_int(G(o), o->node, "per_row", 2);
  one_in(o, 0, NBL_DT_FLOAT, 2, d, x);
  ck_assert_int_ne(one_run(o, 1), NBL_OK);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "per_row must be 0 or 1"));
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'n0'"));
  one_free(o);
  /* QuantizeTernaryGrad: dY where |rint(x / s)| <= 1, s = mean|x| = 2 */
  const float gx[] = {2.0f, -2.9f, 3.0f, -3.1f, NAN, 0.5f};
  const float dy[] = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  int64_t n = 6;
  o = one_new_domain("QuantizeTernaryGrad", "ai.nibble", 1, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, dy);
  one_in(o, 1, NBL_DT_FLOAT, 1, &n, gx);
  ck_assert_int_eq(one_run(o, 1), NBL_OK);
  /* s = (2 + 2.9 + 3 + 3.1 + 0.5) / 5 = 2.3: 3/2.3 = 1.30 passes, 3.1/2.3 = 1.35 passes too */
  const float wg[] = {1.0f, 2.0f, 3.0f, 4.0f, 0.0f, 6.0f};
  for (int i = 0; i < 6; i++) ck_assert_msg(outf(o, 0)[i] == wg[i], "dX[%d] = %g", i, outf(o, 0)[i]);
  one_free(o);
  const float far[] = {1.0f, 1.0f, 1.0f, 10.0f}; /* s = 3.25: 10 / 3.25 = 3.08 is clipped */
  n = 4;
  o = one_new_domain("QuantizeTernaryGrad", "ai.nibble", 1, 2, 1);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, dy);
  one_in(o, 1, NBL_DT_FLOAT, 1, &n, far);
  ck_assert_int_eq(one_run(o, 1), NBL_OK);
  ck_assert(outf(o, 0)[0] == 1.0f && outf(o, 0)[3] == 0.0f);
  one_free(o);
}
END_TEST

START_TEST(test_op_dequantize_ternary) {
  const int8_t q[7] = {-1, 0, 1, 1, -1, 0, 1};
  uint8_t p[2];
  nbl_tern_pack3(q, 7, p);
  int64_t nb = 2, shape[2] = {7, 1};
  float sc = 0.25f;
  for (int bad = 0; bad < 4; bad++) {
    one *o = one_new_domain("DequantizeTernary", "ai.nibble", 1, 2, 1);
    uint8_t pb[2] = {p[0], bad == 1 ? 250 : p[1]};
    if (bad != 2) nbl_node_set_attr_ints(G(o), o->node, "shape", 2, shape);
    if (bad == 3) nbl_node_set_attr_string(G(o), o->node, "packing", "3bit");
    one_in(o, 0, NBL_DT_UINT8, 1, &nb, pb);
    one_in(o, 1, NBL_DT_FLOAT, 0, NULL, &sc);
    nbl_status st = one_run(o, 1);
    if (!bad) {
      ck_assert_int_eq(st, NBL_OK);
      ck_assert_int_eq(o->out[0].rank, 2);
      for (int i = 0; i < 7; i++) ck_assert_float_eq(outf(o, 0)[i], 0.25f * q[i]);
    } else {
      ck_assert_int_ne(st, NBL_OK);
      const char *want = bad == 1 ? "not a base-3 group" : bad == 2 ? "'shape' is required"
                                                                    : "packing '3bit'";
      ck_assert_msg(strstr(nbl_last_error(), want), "%s", nbl_last_error());
    }
    one_free(o);
  }
  /* 2-bit: four codes a byte; the value 3 is not a code */
  uint8_t p2[2];
  nbl_tern_pack2(q, 7, p2);
  int8_t back[7];
  ck_assert_int_eq(nbl_tern_unpack(NBL_TERN_PACK_2BIT, p2, 7, back), 0);
  for (int i = 0; i < 7; i++) ck_assert_int_eq(back[i], q[i]);
  p2[0] |= 3;
  ck_assert_int_eq(nbl_tern_unpack(NBL_TERN_PACK_2BIT, p2, 7, back), -1);
}
END_TEST

/* The shape rules, through infer-shapes: DequantizeTernary's `shape`, the
 * per-row scale of QuantizeAbsmax8, QuantizeTernary's scalar scale. */
START_TEST(test_op_shapes) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_model_set_opset(m, "ai.nibble", 1);
  nbl_graph *g = m->graph;
  int64_t xd[3] = {2, 5, 7}, nb = 3, shape[2] = {3, 4};
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 3, xd);
  nbl_graph_add_input(g, x);
  uint8_t codes[3] = {121, 121, 121};
  float sc = 1.0f;
  nbl_id c = nbl_graph_add_value(g, "c"), s = nbl_graph_add_value(g, "s");
  nbl_graph_set_initializer(g, c, nbl_tensor_new(m->arena, "c", NBL_DT_UINT8, 1, &nb, codes));
  nbl_graph_set_initializer(g, s, nbl_tensor_new(m->arena, "s", NBL_DT_FLOAT, 0, NULL, &sc));
  nbl_id a[2] = {nbl_graph_add_value(g, "a"), nbl_graph_add_value(g, "as")};
  nbl_id q = nbl_graph_add_node(g, "QuantizeAbsmax8", "ai.nibble", "qa", 1, &x, 2, a);
  nbl_node_set_attr_int(g, q, "per_row", 1);
  nbl_id t[2] = {nbl_graph_add_value(g, "t"), nbl_graph_add_value(g, "ts")};
  nbl_graph_add_node(g, "QuantizeTernary", "ai.nibble", "qt", 1, &x, 2, t);
  nbl_id d = nbl_graph_add_value(g, "d"), ds[2] = {c, s};
  nbl_id dn = nbl_graph_add_node(g, "DequantizeTernary", "ai.nibble", "dq", 2, ds, 1, &d);
  nbl_node_set_attr_ints(g, dn, "shape", 2, shape);
  nbl_id outs[5] = {a[0], a[1], t[0], t[1], d};
  for (int i = 0; i < 5; i++) nbl_graph_add_output(g, outs[i]);
  nbl_pipeline *p = NULL;
  ck_assert_int_eq(nbl_pipeline_parse("infer-shapes", &p), NBL_OK);
  ck_assert_msg(nbl_pipeline_run(p, m, NULL) == NBL_OK, "%s", nbl_last_error());
  nbl_pipeline_free(p);
  const nbl_type *ty = &g->values[a[1]].type;
  ck_assert_int_eq(ty->elem, NBL_DT_FLOAT);
  ck_assert_int_eq(ty->rank, 3);
  ck_assert_int_eq(ty->dims[0].value, 2);
  ck_assert_int_eq(ty->dims[2].value, 1);
  ck_assert_int_eq(g->values[t[1]].type.rank, 0);
  ck_assert_int_eq(g->values[t[0]].type.dims[1].value, 5);
  ty = &g->values[d].type;
  ck_assert_int_eq(ty->elem, NBL_DT_FLOAT);
  ck_assert_int_eq(ty->rank, 2);
  ck_assert_int_eq(ty->dims[0].value, 3);
  ck_assert_int_eq(ty->dims[1].value, 4);
  nbl_model_free(m);
}
END_TEST

int main(void) {
  Suite *s = suite_create("format_ternary");
  TCase *tc = tcase_create("ternary");
  tcase_add_test(tc, test_scale_and_codes);
  tcase_add_test(tc, test_zero_nan_outlier);
  tcase_add_test(tc, test_absmax8);
  tcase_add_test(tc, test_packing);
  tcase_add_test(tc, test_op_quantize_ternary);
  tcase_add_test(tc, test_op_absmax8_and_grad);
  tcase_add_test(tc, test_op_dequantize_ternary);
  tcase_add_test(tc, test_op_shapes);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
