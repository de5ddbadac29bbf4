/* test_format_ternary.c - ternary weights and INT8 absmax activations
 * (runtime/formats/ternary.c) on hand-computed cases. */
#include <check.h>
#include <math.h>
#include <stdlib.h>

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

int main(void) {
  Suite *s = suite_create("format_ternary");
  TCase *tc = tcase_create("ternary");
  tcase_add_test(tc, test_scale_and_codes);
  tcase_add_test(tc, test_zero_nan_outlier);
  tcase_add_test(tc, test_absmax8);
  tcase_add_test(tc, test_packing);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
