/* test_q4_codes.c - QuantizeInt4's codes output (runtime/ops/nibble.c,
 * runtime/formats/int4.h nbl_q4_codes8, the fast path in
 * runtime/kernels/q4_train.c): the codes by hand (symmetric and affine,
 * clamps, ties to even, the marks of NaN and +-Inf); the op's codes, fast
 * and reference, in the modes training uses (affine max, affine mse,
 * symmetric sawb, 2-bit), each Y = scale * (code - zero_point) exactly,
 * inside [qmin, qmax], the two kernels equal, Y omitted the same codes;
 * non-finite elements marked (nbl_q4_value8 gives Y's element back);
 * bits past 6 refused clearly; lower-to-onnx refuses a used codes output. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "one_node.h"
#include "runtime/formats/int4.h"
#include "test_data.h"
#include "ck_elem.h"

START_TEST(test_codes8_by_hand) {
  nbl_q4_config c;
  nbl_q4_config_default(&c);
  const float x[8] = {0.3f, -3.0f, 0.375f, 0.625f, 10.0f, NAN, INFINITY, -INFINITY};
  int8_t q[8];
  nbl_q4_params p = {.scale = 0.25f, .zero = 0, .qmin = -8, .qmax = 7};
  nbl_q4_codes8(&c, &p, x, q, 8, 0);
  /* 1.2 -> 1, -12 -> -8, 1.5 -> 2, 2.5 -> 2 (half even), 40 -> 7; marks */
  const int8_t want_s[8] = {1, -8, 2, 2, 7, -128, 127, -127};
  for (int i = 0; i < 8; i++) ck_assert_int_eq(q[i], want_s[i]);
  c.mode = NBL_Q4_AFFINE; /* codes -8..7 with the zero point -3 */
  p = (nbl_q4_params){.scale = 0.25f, .zero = -3, .qmin = -8, .qmax = 7};
  nbl_q4_codes8(&c, &p, x, q, 8, 0);
  const int8_t want_a[8] = {-2, -8, -1, -1, 7, -128, 127, -127};
  for (int i = 0; i < 8; i++) ck_assert_int_eq(q[i], want_a[i]);
  for (int i = 0; i < 8; i++) { /* the values back: Y's elements (the marks: NaN, +-Inf) */
    const float v = nbl_q4_value8(p.scale, p.zero, q[i]), want = i < 5 ? p.scale * (float)(q[i] - p.zero) : x[i];
    ck_assert(isnan(want) ? isnan(v) : v == want);
  }
  ck_assert_int_eq(NBL_Q4_CODE8_NAN, -128);
  ck_assert_int_eq(NBL_Q4_CODE8_PINF, 127);
  ck_assert_int_eq(NBL_Q4_CODE8_NINF, -127);
  for (int b = 2; b <= 8; b++) {
    c.bits = b;
    ck_assert_int_eq(nbl_q4_codes8_ok(&c), b <= 6);
  }
}
END_TEST

/* nbl_q4_values8 (the vector decode X's floats are rebuilt with where a
 * product needs them) gives nbl_q4_value8's floats bit for bit: every code,
 * zero points at both ends, scales whose products round, lengths around
 * the vector width. */
START_TEST(test_values8) {
  int8_t q[300];
  float y[300];
  const float scales[3] = {0.25f, 0.1f, 3.3e-5f};
  const int zeros[3] = {0, -8, 15};
  for (int i = 0; i < 300; i++) q[i] = (int8_t)(i * 7 + 3);
  for (int si = 0; si < 3; si++)
    for (int zi = 0; zi < 3; zi++)
      for (size_t off = 0; off < 16; off++) /* (every code in every lane) */
        for (size_t n = 0; n <= 284; n += n < 40 ? 1 : 61) {
          memset(y, 0, sizeof y);
          nbl_q4_values8(scales[si], zeros[zi], q + off, y, n);
          for (size_t i = 0; i < n; i++) {
            const float want = nbl_q4_value8(scales[si], zeros[zi], q[off + i]);
            ck_elem_msg(isnan(want) ? isnan(y[i]) : memcmp(&want, &y[i], 4) == 0, "code %d: %g, want %g",
                        q[off + i], y[i], want);
          }
          for (size_t i = n; i < 300; i++) ck_elem(y[i] == 0.0f); /* nothing past n */
        }
}
END_TEST

typedef struct qmode {
  const char *mode, *source;
  int bits;
} qmode;

static one *q4_node(const qmode *m) {
  one *o = one_new_domain("QuantizeInt4", "ai.nibble", 1, 1, 4);
  nbl_graph *g = G(o);
  nbl_node_set_attr_int(g, o->node, "bits", m->bits);
  nbl_node_set_attr_string(g, o->node, "mode", m->mode);
  nbl_node_set_attr_string(g, o->node, "scale_source", m->source);
  return o;
}

START_TEST(test_op_codes) {
  static const qmode modes[] = {{"affine", "max", 4}, {"affine", "mse", 4}, {"symmetric", "sawb", 4},
                                {"affine", "max", 2}, {"symmetric", "max", 6}};
  const int64_t n = 3 * 16384 + 77; /* threaded blocks and vector tails */
  float *x = malloc(sizeof(float) * (size_t)n);
  int8_t *first = malloc((size_t)n);
  ck_assert(x && first);
  for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++)
    for (int nonfinite = 0; nonfinite < 2; nonfinite++) {
      uint64_t seed = 77 + mi;
      for (int64_t i = 0; i < n; i++) x[i] = (float)(td_xs64_unit(&seed) * 3.0 - 0.7); /* Relu-like: mostly >= 0 */
      if (nonfinite) x[10] = NAN, x[11] = INFINITY, x[12] = -INFINITY;
      one *o = q4_node(&modes[mi]);
      one_in(o, 0, NBL_DT_FLOAT, 1, &n, x);
      for (int ref = 1; ref >= 0; ref--) {
        ck_assert_msg(one_run(o, ref) == NBL_OK, "%s", nbl_last_error());
        const float *y = o->out[0].data, s = ((const float *)o->out[1].data)[0];
        const int z = ((const int8_t *)o->out[2].data)[0];
        ck_assert_int_eq(o->out[3].dtype, NBL_DT_INT8);
        ck_assert_int_eq(o->out[3].rank, 1);
        ck_assert_int_eq(o->out[3].dims[0], n);
        const int8_t *k = o->out[3].data;
        const int b = modes[mi].bits, qmin = -(1 << (b - 1)), qmax = (1 << (b - 1)) - 1; /* (affine too) */
        for (int64_t i = 0; i < n; i++) {
          if (!isfinite(x[i])) {
            ck_assert_int_eq(k[i], isnan(x[i]) ? NBL_Q4_CODE8_NAN : x[i] > 0 ? NBL_Q4_CODE8_PINF : NBL_Q4_CODE8_NINF);
            continue;
          }
          ck_elem_msg(k[i] >= qmin && k[i] <= qmax, "%s %s: code %d", modes[mi].mode, modes[mi].source, k[i]);
          ck_elem_msg(y[i] == s * (float)(k[i] - z), "%s %s %s [%lld]: y %.9g, code %d, scale %.9g, zero %d",
                      modes[mi].mode, modes[mi].source, ref ? "ref" : "fast", (long long)i, y[i], k[i], s, z);
        }
        if (ref) memcpy(first, k, (size_t)n);
        else ck_assert(memcmp(first, k, (size_t)n) == 0); /* the fast kernel's codes: the reference's */
      }
      one_free(o);
      /* Y omitted (int4-backward's wiring): the codes alone, the same */
      o = q4_node(&modes[mi]);
      one_in(o, 0, NBL_DT_FLOAT, 1, &n, x);
      one_skip_out(o, 0);
      for (int ref = 1; ref >= 0; ref--) {
        ck_assert_msg(one_run(o, ref) == NBL_OK, "%s", nbl_last_error());
        ck_assert_int_eq(o->out[2].dtype, NBL_DT_INT8);
        ck_assert(memcmp(first, o->out[2].data, (size_t)n) == 0);
      }
      one_free(o);
    }
  free(x);
  free(first);
}
END_TEST

/* A codes output for 7 or 8 bits (codes past int8 with their marks) is a
 * clear error; lower-to-onnx refuses a used codes output. */
START_TEST(test_codes_refused) {
  const int64_t n = 8;
  const float x[8] = {1, -0.5f, 0.25f, 0, 0.01f, -2, 0.125f, 3};
  const qmode m8 = {"affine", "max", 8};
  one *o = q4_node(&m8);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, x);
  for (int ref = 0; ref < 2; ref++) {
    ck_assert_int_eq(one_run(o, ref), NBL_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(nbl_last_error(), "codes output needs bits <= 6"), "%s", nbl_last_error());
  }
  one_free(o);
  const qmode m4 = {"affine", "max", 4};
  o = q4_node(&m4);
  one_in(o, 0, NBL_DT_FLOAT, 1, &n, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  nbl_pipeline *p = NULL;
  ck_assert_int_eq(nbl_pipeline_parse("lower-to-onnx", &p), NBL_OK);
  FILE *f = tmpfile();
  nbl_pipeline_options po = {.log = f};
  ck_assert_int_eq(nbl_pipeline_run(p, o->m, &po), NBL_ERR_UNSUPPORTED);
  ck_assert_msg(strstr(nbl_last_error(), "codes output") && strstr(nbl_last_error(), "QuantizeInt4"), "%s",
                nbl_last_error());
  fclose(f);
  nbl_pipeline_free(p);
  one_free(o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("q4_codes");
  TCase *tc = tcase_create("codes");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_codes8_by_hand);
  tcase_add_test(tc, test_values8);
  tcase_add_test(tc, test_op_codes);
  tcase_add_test(tc, test_codes_refused);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
