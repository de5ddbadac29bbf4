/* test_ops_shape.c - shape and data-movement kernels (runtime/ops/shape.c, shape_strided.c).
 *
 * Each case builds a one-node graph, runs it through the session API and
 * compares with values computed by hand (or, where marked, by PyTorch / NumPy
 * on the same inputs). A second part runs the ONNX backend test data of every
 * op of the family (model.onnx + test_data_set_*), comparing against the
 * expected outputs shipped with it. */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"

/* ------------------------------------------------------------------ checks */

static void check_shape(const nbl_host_tensor *t, int rank, const int64_t *dims) {
  ck_assert_int_eq(t->rank, rank);
  for (int i = 0; i < rank; i++) ck_assert_int_eq(t->dims[i], dims[i]);
}

static void check_f32(const nbl_host_tensor *t, const float *want, int64_t n) {
  ck_assert_int_eq(t->dtype, NBL_DT_FLOAT);
  ck_assert_uint_eq(t->nbytes, (size_t)n * 4);
  const float *p = t->data;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(want[i])) ck_assert_msg(isnan(p[i]), "element %lld: want NaN got %g", (long long)i, p[i]);
    else ck_assert_msg(fabsf(p[i] - want[i]) <= 1e-5f + 1e-5f * fabsf(want[i]), "element %lld: want %g got %g",
                       (long long)i, want[i], p[i]);
  }
}

static void check_i64(const nbl_host_tensor *t, const int64_t *want, int64_t n) {
  ck_assert_int_eq(t->dtype, NBL_DT_INT64);
  ck_assert_uint_eq(t->nbytes, (size_t)n * 8);
  const int64_t *p = t->data;
  for (int64_t i = 0; i < n; i++) ck_assert_msg(p[i] == want[i], "element %lld: want %lld got %lld", (long long)i, (long long)want[i], (long long)p[i]);
}

/* ------------------------------------------------------------------ cases */

START_TEST(test_reshape_zero_neg_allowzero) {
  float x[6] = {1, 2, 3, 4, 5, 6};
  int64_t xd[] = {2, 3}, sd[] = {3}, shp[] = {0, -1, 1};
  one *o = one_new("Reshape", 14, 2, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, sd, shp)};
  one_ins(o, 2, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 3, (int64_t[]){2, 3, 1});
  check_f32(&o->out[0], x, 6);
  one_free(o);
  /* allowzero=1: a 0 is a real zero; an empty tensor reshaped to [0, 4] */
  int64_t ed[] = {0, 2}, s2[] = {0, 4};
  int64_t s2d[] = {2};
  o = one_new("Reshape", 14, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "allowzero", 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 2, ed, x), ht(NBL_DT_INT64, 1, s2d, s2)};
  one_ins(o, 2, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){0, 4});
  one_free(o);
  /* mismatch is an error, not a crash */
  int64_t bad[] = {4, -1};
  o = one_new("Reshape", 14, 2, 1);
  nbl_host_tensor in3[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, s2d, bad)};
  one_ins(o, 2, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'n0'"));
  one_free(o);
}
END_TEST

START_TEST(test_transpose_dtypes) {
  /* int64 and float16 transposes of [2,3,2] with perm (2,0,1) */
  int64_t x[12], d[] = {2, 3, 2};
  uint16_t h[12];
  for (int i = 0; i < 12; i++) x[i] = i, h[i] = (uint16_t)(0x3c00 + i);
  /* y[k][i][j] = x[i][j][k] */
  int64_t want[12];
  int q = 0;
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 3; j++) want[q++] = i * 6 + j * 2 + k;
  one *o = one_new("Transpose", 13, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "perm", 3, (int64_t[]){2, 0, 1});
  nbl_host_tensor in[] = {ht(NBL_DT_INT64, 3, d, x)};
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 3, (int64_t[]){2, 2, 3});
  check_i64(&o->out[0], want, 12);
  one_free(o);
  o = one_new("Transpose", 13, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "perm", 3, (int64_t[]){2, 0, 1});
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT16, 3, d, h)};
  one_ins(o, 1, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const uint16_t *p = o->out[0].data;
  for (int i = 0; i < 12; i++) ck_assert_int_eq(p[i], 0x3c00 + want[i]);
  one_free(o);
  /* a bad perm is an error */
  o = one_new("Transpose", 13, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "perm", 3, (int64_t[]){2, 2, 1});
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

START_TEST(test_slice_negative_steps_clamp) {
  float x[10];
  for (int i = 0; i < 10; i++) x[i] = (float)i;
  int64_t xd[] = {10}, one_d[] = {1};
  /* start 100 clamps to 9, end -100 clamps to -1 (before the start), step -3: 9 6 3 0 */
  int64_t s[] = {100}, e[] = {-100}, a[] = {0}, st[] = {-3};
  one *o = one_new("Slice", 13, 5, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 1, xd, x), ht(NBL_DT_INT64, 1, one_d, s),
                          ht(NBL_DT_INT64, 1, one_d, e), ht(NBL_DT_INT64, 1, one_d, a),
                          ht(NBL_DT_INT64, 1, one_d, st)};
  one_ins(o, 5, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){9, 6, 3, 0}, 4);
  one_free(o);
  /* INT64_MAX end with step 2 from -4: 6 8 ; empty when start >= end */
  int64_t s2[] = {-4}, e2[] = {INT64_MAX}, t2[] = {2}, s3[] = {5}, e3[] = {2};
  o = one_new("Slice", 13, 5, 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 1, xd, x), ht(NBL_DT_INT64, 1, one_d, s2),
                           ht(NBL_DT_INT64, 1, one_d, e2), ONE_NONE, ht(NBL_DT_INT64, 1, one_d, t2)};
  one_ins(o, 5, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){6, 8}, 2);
  one_free(o);
  o = one_new("Slice", 13, 3, 1);
  nbl_host_tensor in3[] = {ht(NBL_DT_FLOAT, 1, xd, x), ht(NBL_DT_INT64, 1, one_d, s3),
                           ht(NBL_DT_INT64, 1, one_d, e3)};
  one_ins(o, 3, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 1, (int64_t[]){0});
  one_free(o);
  /* step 0 is an error */
  int64_t z[] = {0};
  o = one_new("Slice", 13, 5, 1);
  nbl_host_tensor in4[] = {ht(NBL_DT_FLOAT, 1, xd, x), ht(NBL_DT_INT64, 1, one_d, s),
                           ht(NBL_DT_INT64, 1, one_d, e), ht(NBL_DT_INT64, 1, one_d, a),
                           ht(NBL_DT_INT64, 1, one_d, z)};
  one_ins(o, 5, in4);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

START_TEST(test_concat_empty_and_split_uneven) {
  float a[4] = {1, 2, 3, 4}, b[1] = {0};
  int64_t ad[] = {2, 2}, bd[] = {2, 0};
  one *o = one_new("Concat", 13, 3, 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", -1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, ad, a), ht(NBL_DT_FLOAT, 2, bd, b),
                          ht(NBL_DT_FLOAT, 2, ad, a)};
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){2, 4});
  check_f32(&o->out[0], (float[]){1, 2, 1, 2, 3, 4, 3, 4}, 8);
  one_free(o);
  /* opset 18 num_outputs=3 on 7 elements: 3, 3, 1 */
  float x[7] = {0, 1, 2, 3, 4, 5, 6};
  int64_t xd[] = {7};
  o = one_new("Split", 18, 1, 3);
  nbl_node_set_attr_int(G(o), o->node, "num_outputs", 3);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 1, xd, x)};
  one_ins(o, 1, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){0, 1, 2}, 3);
  check_f32(&o->out[1], (float[]){3, 4, 5}, 3);
  check_f32(&o->out[2], (float[]){6}, 1);
  one_free(o);
  /* before 18, an uneven split without sizes is an error */
  o = one_new("Split", 13, 1, 3);
  one_ins(o, 1, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

START_TEST(test_gather_negative_and_out_of_range) {
  float x[6] = {1, 2, 3, 4, 5, 6};
  int64_t xd[] = {3, 2}, id[] = {2}, ind[] = {-1, 0}, bad[] = {3, 0};
  one *o = one_new("Gather", 13, 2, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, id, ind)};
  one_ins(o, 2, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){5, 6, 1, 2}, 4);
  one_free(o);
  o = one_new("Gather", 13, 2, 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, id, bad)};
  one_ins(o, 2, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_RUNTIME);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "out of range"));
  one_free(o);
  /* GatherND with batch_dims=1: data [2,2,2], indices [2,1] -> rows data[b][idx[b]] */
  float d[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  int64_t dd[] = {2, 2, 2}, gd[] = {2, 1}, gi[] = {1, 0};
  o = one_new("GatherND", 13, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "batch_dims", 1);
  nbl_host_tensor in3[] = {ht(NBL_DT_FLOAT, 3, dd, d), ht(NBL_DT_INT64, 2, gd, gi)};
  one_ins(o, 2, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){2, 2});
  check_f32(&o->out[0], (float[]){2, 3, 4, 5}, 4);
  one_free(o);
}
END_TEST

START_TEST(test_strings_move) {
  /* strings: Transpose + Gather copy them (ASan checks ownership) */
  const char *s[6] = {"a", "bb", "", "dddd", "e", "ff"};
  int64_t sd[] = {2, 3};
  one *o = one_new("Transpose", 13, 1, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_STRING, 2, sd, s)};
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const char *want[6] = {"a", "dddd", "bb", "e", "", "ff"};
  char *const *p = o->out[0].data;
  for (int i = 0; i < 6; i++) ck_assert_str_eq(p[i], want[i]);
  one_free(o);
  int64_t id[] = {3}, ind[] = {2, 0, 2};
  o = one_new("Gather", 13, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_STRING, 2, sd, s), ht(NBL_DT_INT64, 1, id, ind)};
  one_ins(o, 2, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const char *want2[6] = {"", "a", "", "ff", "dddd", "ff"};
  p = o->out[0].data;
  for (int i = 0; i < 6; i++) ck_assert_str_eq(p[i], want2[i]);
  one_free(o);
  /* an out-of-range index on strings fails cleanly (no double free) */
  int64_t bad[] = {2, 9, 0};
  o = one_new("Gather", 13, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "axis", 1);
  nbl_host_tensor in3[] = {ht(NBL_DT_STRING, 2, sd, s), ht(NBL_DT_INT64, 1, id, bad)};
  one_ins(o, 2, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_RUNTIME);
  one_free(o);
}
END_TEST

START_TEST(test_pad_modes) {
  float x[3] = {1, 2, 3};
  int64_t xd[] = {3}, pd[] = {2}, pads[] = {4, 2};
  /* numpy.pad([1,2,3], (4,2), mode): reflect -> 3 2 1 2 | 1 2 3 | 2 1 ; edge -> 1 1 1 1 | 1 2 3 | 3 3 */
  const char *modes[] = {"reflect", "edge", "wrap"};
  float want[3][9] = {{1, 2, 3, 2, 1, 2, 3, 2, 1}, {1, 1, 1, 1, 1, 2, 3, 3, 3}, {3, 1, 2, 3, 1, 2, 3, 1, 2}};
  for (int m = 0; m < 3; m++) {
    one *o = one_new("Pad", m == 2 ? 19 : 13, 2, 1);
    nbl_node_set_attr_string(G(o), o->node, "mode", modes[m]);
    nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 1, xd, x), ht(NBL_DT_INT64, 1, pd, pads)};
    one_ins(o, 2, in);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    check_f32(&o->out[0], want[m], 9);
    one_free(o);
  }
  /* negative pads crop; constant value from input; NaN passes through */
  float y[4] = {NAN, 2, INFINITY, 4}, cv[1] = {-1};
  int64_t yd[] = {2, 2}, p4d[] = {4}, p4[] = {0, -1, 1, 1};
  one *o = one_new("Pad", 13, 3, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, yd, y), ht(NBL_DT_INT64, 1, p4d, p4),
                          ht(NBL_DT_FLOAT, 0, NULL, cv)};
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){3, 2});
  check_f32(&o->out[0], (float[]){2, -1, 4, -1, -1, -1}, 6);
  one_free(o);
}
END_TEST

START_TEST(test_expand_tile_broadcast) {
  float x[3] = {1, 2, 3};
  int64_t xd[] = {3, 1}, sd[] = {3}, shp[] = {2, 1, 2};
  one *o = one_new("Expand", 13, 2, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, sd, shp)};
  one_ins(o, 2, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 3, (int64_t[]){2, 3, 2});
  check_f32(&o->out[0], (float[]){1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}, 12);
  one_free(o);
  int64_t rd[] = {2}, rep[] = {2, 0};
  o = one_new("Tile", 13, 2, 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, rd, rep)};
  one_ins(o, 2, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){6, 0});
  one_free(o);
  int64_t rep2[] = {2, 3};
  o = one_new("Tile", 13, 2, 1);
  nbl_host_tensor in3[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 1, rd, rep2)};
  one_ins(o, 2, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){1, 1, 1, 2, 2, 2, 3, 3, 3, 1, 1, 1, 2, 2, 2, 3, 3, 3}, 18);
  one_free(o);
}
END_TEST

START_TEST(test_scatter_reductions) {
  /* ScatterND opset 18, reduction max with duplicate indices; int32 data */
  int32_t d[4] = {5, 1, -3, 7}, u[3] = {2, 9, -4};
  int64_t dd[] = {4}, id[] = {3, 1}, ind[] = {1, 1, 2}, ud[] = {3};
  one *o = one_new("ScatterND", 18, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "reduction", "max");
  nbl_host_tensor in[] = {ht(NBL_DT_INT32, 1, dd, d), ht(NBL_DT_INT64, 2, id, ind),
                          ht(NBL_DT_INT32, 1, ud, u)};
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  const int32_t *p = o->out[0].data;
  int32_t want[4] = {5, 9, -3, 7};
  for (int i = 0; i < 4; i++) ck_assert_int_eq(p[i], want[i]);
  one_free(o);
  /* ScatterElements mul on float with NaN update */
  float x[4] = {1, 2, 3, 4}, uu[2] = {NAN, 10};
  int64_t xd[] = {2, 2}, ed[] = {2, 1}, ei[] = {1, -2};
  o = one_new("ScatterElements", 16, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "reduction", "mul");
  nbl_node_set_attr_int(G(o), o->node, "axis", 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 2, xd, x), ht(NBL_DT_INT64, 2, ed, ei),
                           ht(NBL_DT_FLOAT, 2, ed, uu)};
  one_ins(o, 3, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){1, NAN, 30, 4}, 4);
  one_free(o);
  /* min/max only exist from opset 18 */
  o = one_new("ScatterND", 16, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "reduction", "max");
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
}
END_TEST

START_TEST(test_nonzero_nan_negzero) {
  float x[5] = {0.0f, -0.0f, NAN, 1, INFINITY};
  int64_t xd[] = {5};
  one *o = one_new("NonZero", 13, 1, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 1, xd, x)};
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){1, 3});
  check_i64(&o->out[0], (int64_t[]){2, 3, 4}, 3);
  one_free(o);
  int64_t ed[] = {2, 0};
  o = one_new("NonZero", 13, 1, 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 2, ed, x)};
  one_ins(o, 1, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){2, 0});
  one_free(o);
}
END_TEST

START_TEST(test_unique_unsorted) {
  /* numpy.unique([2,1,1,3,4,3], return_index, return_inverse, return_counts), then
   * reordered by first occurrence: Y=[2,1,3,4], idx=[0,1,3,4], inv=[0,1,1,2,3,2], counts=[1,2,2,1] */
  float x[6] = {2, 1, 1, 3, 4, 3};
  int64_t xd[] = {6};
  one *o = one_new("Unique", 11, 1, 4);
  nbl_node_set_attr_int(G(o), o->node, "sorted", 0);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 1, xd, x)};
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){2, 1, 3, 4}, 4);
  check_i64(&o->out[1], (int64_t[]){0, 1, 3, 4}, 4);
  check_i64(&o->out[2], (int64_t[]){0, 1, 1, 2, 3, 2}, 6);
  check_i64(&o->out[3], (int64_t[]){1, 2, 2, 1}, 4);
  one_free(o);
}
END_TEST

START_TEST(test_resize_int_nearest_and_linear_nan) {
  /* nearest on uint8 (asymmetric, floor): [10,20] x2 -> 10 10 20 20 */
  uint8_t u[2] = {10, 20};
  int64_t ud[] = {1, 2}, sd[] = {2};
  float sc[2] = {1, 2};
  one *o = one_new("Resize", 13, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "coordinate_transformation_mode", "asymmetric");
  nbl_node_set_attr_string(G(o), o->node, "nearest_mode", "floor");
  nbl_host_tensor in[] = {ht(NBL_DT_UINT8, 2, ud, u), ONE_NONE, ht(NBL_DT_FLOAT, 1, sd, sc)};
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_int_eq(o->out[0].dtype, NBL_DT_UINT8);
  const uint8_t *p = o->out[0].data;
  uint8_t want[4] = {10, 10, 20, 20};
  for (int i = 0; i < 4; i++) ck_assert_int_eq(p[i], want[i]);
  one_free(o);
  /* linear half_pixel x2 of [1, 3, 5]; the same with a NaN in the middle: the NaN
   * reaches exactly the outputs whose two taps include it (1 and 5 stay) */
  float x[3] = {1, 3, 5};
  int64_t xd[] = {3}, s1[] = {1};
  float two[1] = {2};
  o = one_new("Resize", 13, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "mode", "linear");
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 1, xd, x), ONE_NONE, ht(NBL_DT_FLOAT, 1, s1, two)};
  one_ins(o, 3, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  /* torch: [1.0, 1.5, 2.5, 3.5, 4.5, 5.0] */
  check_f32(&o->out[0], (float[]){1, 1.5f, 2.5f, 3.5f, 4.5f, 5}, 6);
  one_free(o);
  x[1] = NAN;
  o = one_new("Resize", 13, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "mode", "linear");
  one_ins(o, 3, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){1, NAN, NAN, NAN, NAN, 5}, 6);
  one_free(o);
}
END_TEST

START_TEST(test_resize_opset18_antialias_axes_aspect) {
  /* antialias with exclude_outside=1 equals PyTorch's antialiased interpolate:
   * F.interpolate(x, size=(1, 3), mode='bilinear'|'bicubic', antialias=True,
   * align_corners=False) on this [1,1,2,8] input (bicubic uses a = -0.5) */
  float x[16] = {0, 1, 4, 9, 16, 25, 36, 49, 3, 1, 4, 1, 5, 9, 2, 6};
  int64_t xd[] = {1, 1, 2, 8}, szd[] = {2}, sz[] = {1, 3};
  const char *modes[] = {"linear", "cubic"};
  float want[2][3] = {{2.1710526943206787f, 8.773809432983398f, 20.3157901763916f},
                      {1.5963616371154785f, 8.408522605895996f, 21.389434814453125f}};
  for (int m = 0; m < 2; m++) {
    one *o = one_new("Resize", 18, 4, 1);
    nbl_node_set_attr_string(G(o), o->node, "mode", modes[m]);
    nbl_node_set_attr_int(G(o), o->node, "antialias", 1);
    nbl_node_set_attr_int(G(o), o->node, "exclude_outside", 1);
    nbl_node_set_attr_float(G(o), o->node, "cubic_coeff_a", -0.5f);
    nbl_node_set_attr_ints(G(o), o->node, "axes", 2, (int64_t[]){2, -1});
    nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 4, xd, x), ONE_NONE, ONE_NONE, ht(NBL_DT_INT64, 1, szd, sz)};
    one_ins(o, 4, in);
    ck_assert_int_eq(one_run(o, 0), NBL_OK);
    check_shape(&o->out[0], 4, (int64_t[]){1, 1, 1, 3});
    check_f32(&o->out[0], want[m], 3);
    one_free(o);
  }
  /* keep_aspect_ratio_policy not_smaller: [3,5] to sizes (6,6) -> scale 2 -> [6,10]
   * (the case of ONNX's shape-inference test); nearest keeps every value */
  float y[15];
  for (int i = 0; i < 15; i++) y[i] = (float)i;
  int64_t yd[] = {3, 5}, s6[] = {6, 6};
  one *o = one_new("Resize", 18, 4, 1);
  nbl_node_set_attr_string(G(o), o->node, "keep_aspect_ratio_policy", "not_smaller");
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, yd, y), ONE_NONE, ONE_NONE, ht(NBL_DT_INT64, 1, szd, s6)};
  one_ins(o, 4, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 2, (int64_t[]){6, 10});
  const float *p = o->out[0].data;
  /* half_pixel, scale 2, round_prefer_floor: output i -> input floor(i/2) */
  for (int i = 0; i < 6; i++)
    for (int j = 0; j < 10; j++) ck_assert_float_eq(p[i * 10 + j], y[(i / 2) * 5 + j / 2]);
  one_free(o);
}
END_TEST

START_TEST(test_attribute_forms_old_opsets) {
  float x[6] = {1, 2, 3, 4, 5, 6};
  int64_t xd[] = {2, 3};
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 2, xd, x)};
  /* Upsample-7 nearest, scales attribute [1, 2]: each column twice */
  one *o = one_new("Upsample", 7, 1, 1);
  nbl_node_set_attr_floats(G(o), o->node, "scales", 2, (float[]){1, 2});
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6}, 12);
  one_free(o);
  /* Slice-1: starts/ends/axes attributes; x[:, 1:100] */
  o = one_new("Slice", 1, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "starts", 1, (int64_t[]){1});
  nbl_node_set_attr_ints(G(o), o->node, "ends", 1, (int64_t[]){100});
  nbl_node_set_attr_ints(G(o), o->node, "axes", 1, (int64_t[]){1});
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){2, 3, 5, 6}, 4);
  one_free(o);
  /* Pad-2: pads and value attributes */
  o = one_new("Pad", 2, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "pads", 4, (int64_t[]){1, 0, 0, 0});
  nbl_node_set_attr_float(G(o), o->node, "value", 9.5f);
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){9.5f, 9.5f, 9.5f, 1, 2, 3, 4, 5, 6}, 9);
  one_free(o);
  /* Split-2 with the split attribute */
  o = one_new("Split", 2, 1, 2);
  nbl_node_set_attr_int(G(o), o->node, "axis", 1);
  nbl_node_set_attr_ints(G(o), o->node, "split", 2, (int64_t[]){1, 2});
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){1, 4}, 2);
  check_f32(&o->out[1], (float[]){2, 3, 5, 6}, 4);
  one_free(o);
  /* Unsqueeze-11 axes attribute, then an INT4 tensor through Reshape (packed bytes kept) */
  o = one_new("Unsqueeze", 11, 1, 1);
  nbl_node_set_attr_ints(G(o), o->node, "axes", 1, (int64_t[]){1});
  one_ins(o, 1, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 3, (int64_t[]){2, 1, 3});
  one_free(o);
  uint8_t q[3] = {0x21, 0x43, 0x65};
  int64_t qd[] = {6}, sd[] = {2}, shp[] = {3, 2};
  o = one_new("Reshape", 21, 2, 1);
  nbl_host_tensor in2[] = {ht(NBL_DT_INT4, 1, qd, q), ht(NBL_DT_INT64, 1, sd, shp)};
  one_ins(o, 2, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_int_eq(o->out[0].dtype, NBL_DT_INT4);
  ck_assert_uint_eq(o->out[0].nbytes, 3);
  ck_assert_int_eq(memcmp(o->out[0].data, q, 3), 0);
  one_free(o);
  /* ... but a Transpose of INT4 is a clear error */
  o = one_new("Transpose", 13, 1, 1);
  nbl_host_tensor in3[] = {ht(NBL_DT_INT4, 1, qd, q)};
  one_ins(o, 1, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_UNSUPPORTED);
  one_free(o);
}
END_TEST

START_TEST(test_misc_small) {
  /* OneHot with negative index and out-of-range index (row of "off") */
  float ind[3] = {-1, 5, 0};
  int64_t idd[] = {3};
  float depth[1] = {3}, vals[2] = {0, 7};
  int64_t vd[] = {2};
  one *o = one_new("OneHot", 11, 3, 1);
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 1, idd, ind), ht(NBL_DT_FLOAT, 0, NULL, depth),
                          ht(NBL_DT_FLOAT, 1, vd, vals)};
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){0, 0, 7, 0, 0, 0, 7, 0, 0}, 9);
  one_free(o);
  /* Trilu lower with k=-1 on 3x3 */
  float m[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  int64_t md[] = {3, 3}, k[1] = {-1};
  o = one_new("Trilu", 14, 2, 1);
  nbl_node_set_attr_int(G(o), o->node, "upper", 0);
  nbl_host_tensor in2[] = {ht(NBL_DT_FLOAT, 2, md, m), ht(NBL_DT_INT64, 0, NULL, k)};
  one_ins(o, 2, in2);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_f32(&o->out[0], (float[]){0, 0, 0, 4, 0, 0, 7, 8, 0}, 9);
  one_free(o);
  /* Squeeze of a non-1 axis is an error; Unsqueeze with negative axes */
  o = one_new("Squeeze", 13, 2, 1);
  int64_t ad[] = {1}, ax[] = {0};
  nbl_host_tensor in3[] = {ht(NBL_DT_FLOAT, 2, md, m), ht(NBL_DT_INT64, 1, ad, ax)};
  one_ins(o, 2, in3);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  one_free(o);
  o = one_new("Unsqueeze", 13, 2, 1);
  int64_t ad2[] = {2}, ax2[] = {-1, 0};
  nbl_host_tensor in4[] = {ht(NBL_DT_FLOAT, 2, md, m), ht(NBL_DT_INT64, 1, ad2, ax2)};
  one_ins(o, 2, in4);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  check_shape(&o->out[0], 4, (int64_t[]){1, 3, 3, 1});
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ ONNX backend test data */

static const char *const conf_prefixes[] = {
    "test_reshape_", "test_flatten_", "test_transpose_", "test_squeeze", "test_unsqueeze_",
    "test_concat_", "test_split_", "test_slice", "test_gather_", "test_gathernd_",
    "test_scatter_", "test_scatter_elements_", "test_scatternd", "test_expand_", "test_tile",
    "test_constant_pad", "test_edge_pad", "test_reflect_pad", "test_resize_", "test_upsample_",
    "test_nonzero_", "test_onehot_", "test_depthtospace_", "test_spacetodepth", "test_compress_",
    "test_tril", "test_triu", "test_unique_", "test_reversesequence_", NULL};

static int is_ours(const char *name) {
  if (strstr(name, "_expanded")) return 0;
  for (int i = 0; conf_prefixes[i]; i++)
    if (strncmp(name, conf_prefixes[i], strlen(conf_prefixes[i])) == 0) return 1;
  return 0;
}

static double elem(const nbl_host_tensor *t, int64_t i) {
  switch (t->dtype) {
  case NBL_DT_FLOAT: return ((const float *)t->data)[i];
  case NBL_DT_DOUBLE: return ((const double *)t->data)[i];
  case NBL_DT_FLOAT16: return nbl_half_to_float(((const uint16_t *)t->data)[i]);
  case NBL_DT_INT8: return ((const int8_t *)t->data)[i];
  case NBL_DT_UINT8: case NBL_DT_BOOL: return ((const uint8_t *)t->data)[i];
  case NBL_DT_INT16: return ((const int16_t *)t->data)[i];
  case NBL_DT_UINT16: return ((const uint16_t *)t->data)[i];
  case NBL_DT_INT32: return ((const int32_t *)t->data)[i];
  case NBL_DT_UINT32: return ((const uint32_t *)t->data)[i];
  case NBL_DT_INT64: return (double)((const int64_t *)t->data)[i];
  case NBL_DT_UINT64: return (double)((const uint64_t *)t->data)[i];
  default: return NAN;
  }
}

static long n_compared; /* elements compared, reported so a silent no-op shows */

/* Compare got against want; returns a malloc'd description or NULL if equal. */
static char *compare(const nbl_host_tensor *got, const nbl_host_tensor *want) {
  char *msg = malloc(256);
  if (got->dtype != want->dtype) {
    snprintf(msg, 256, "dtype %d, want %d", got->dtype, want->dtype);
    return msg;
  }
  int64_t n = 1;
  int rank_ok = got->rank == want->rank;
  for (int d = 0; rank_ok && d < want->rank; d++) rank_ok = got->dims[d] == want->dims[d];
  if (!rank_ok) {
    snprintf(msg, 256, "shape differs (rank %d vs %d)", got->rank, want->rank);
    return msg;
  }
  for (int d = 0; d < want->rank; d++) n *= want->dims[d];
  n_compared += n;
  for (int64_t i = 0; i < n; i++) {
    if (want->dtype == NBL_DT_STRING) {
      const char *a = ((char *const *)got->data)[i], *b = ((char *const *)want->data)[i];
      if (strcmp(a, b)) {
        snprintf(msg, 256, "element %lld: '%s' vs '%s'", (long long)i, a, b);
        return msg;
      }
      continue;
    }
    double a = elem(got, i), b = elem(want, i);
    if (isnan(b) && isnan(a)) continue;
    if (!(fabs(a - b) <= 1e-4 + 1e-3 * fabs(b))) {
      snprintf(msg, 256, "element %lld: %.9g vs %.9g", (long long)i, a, b);
      return msg;
    }
  }
  free(msg);
  return NULL;
}

/* Run one backend test folder; returns 1 on pass, prints the reason on failure. */
static int run_conformance(const char *dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  nbl_model *m = NULL;
  nbl_session *s = NULL;
  int ok = 1;
  if (nbl_model_load(path, &m) || nbl_session_create(m, NULL, &s)) {
    printf("FAIL %s: %s\n", dir, nbl_last_error());
    nbl_model_free(m);
    return 0;
  }
  for (int set = 0; ok; set++) {
    snprintf(path, sizeof path, "%s/test_data_set_%d", dir, set);
    DIR *dd = opendir(path);
    if (!dd) break;
    closedir(dd);
    int ni = nbl_session_input_count(s), no = nbl_session_output_count(s);
    nbl_host_tensor in[16] = {{0}}, want[16] = {{0}};
    const nbl_host_tensor *out = NULL;
    for (int i = 0; i < ni && i < 16; i++) {
      snprintf(path, sizeof path, "%s/test_data_set_%d/input_%d.pb", dir, set, i);
      if (nbl_tensor_read(path, &in[i])) {
        printf("FAIL %s: %s\n", dir, nbl_last_error());
        ok = 0;
      }
      free((char *)in[i].name); /* feed by the model's input name, in order */
      in[i].name = nbl_session_input_name(s, i);
    }
    if (ok && nbl_session_run(s, ni, in, &out)) {
      printf("FAIL %s: %s\n", dir, nbl_last_error());
      ok = 0;
    }
    for (int i = 0; ok && i < no && i < 16; i++) {
      snprintf(path, sizeof path, "%s/test_data_set_%d/output_%d.pb", dir, set, i);
      if (nbl_tensor_read(path, &want[i])) {
        printf("FAIL %s: %s\n", dir, nbl_last_error());
        ok = 0;
        break;
      }
      char *why = compare(&out[i], &want[i]);
      if (why) {
        printf("FAIL %s: output %d: %s\n", dir, i, why);
        free(why);
        ok = 0;
      }
    }
    for (int i = 0; i < 16; i++) {
      in[i].name = NULL;
      nbl_host_tensor_free(&in[i]);
      nbl_host_tensor_free(&want[i]);
    }
  }
  nbl_session_free(s);
  nbl_model_free(m);
  return ok;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

START_TEST(test_backend_node_data) {
  const char *root = getenv("NBL_TESTDATA");
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/node", root && *root ? root : "/usr/share/libonnx-testdata/data");
  DIR *d = opendir(dir);
  if (!d) {
    printf("backend test data not found at %s; skipped\n", dir);
    return;
  }
  char *names[1024];
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < 1024)
    if (is_ours(e->d_name)) names[n++] = strdup(e->d_name);
  closedir(d);
  qsort(names, (size_t)n, sizeof *names, cmp_str);
  int pass = 0;
  for (int i = 0; i < n; i++) {
    char p[2048];
    snprintf(p, sizeof p, "%s/%s", dir, names[i]);
    pass += run_conformance(p);
    free(names[i]);
  }
  printf("shape ops backend tests: %d passed, %d failed (%ld elements compared)\n", pass, n - pass,
         n_compared);
  fflush(stdout);
  ck_assert_int_gt(n, 140);
  ck_assert_int_eq(pass, n);
  ck_assert_int_gt(n_compared, 5000);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ops_shape");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_reshape_zero_neg_allowzero);
  tcase_add_test(tc, test_transpose_dtypes);
  tcase_add_test(tc, test_slice_negative_steps_clamp);
  tcase_add_test(tc, test_concat_empty_and_split_uneven);
  tcase_add_test(tc, test_gather_negative_and_out_of_range);
  tcase_add_test(tc, test_strings_move);
  tcase_add_test(tc, test_pad_modes);
  tcase_add_test(tc, test_expand_tile_broadcast);
  tcase_add_test(tc, test_scatter_reductions);
  tcase_add_test(tc, test_nonzero_nan_negzero);
  tcase_add_test(tc, test_unique_unsorted);
  tcase_add_test(tc, test_resize_int_nearest_and_linear_nan);
  tcase_add_test(tc, test_resize_opset18_antialias_axes_aspect);
  tcase_add_test(tc, test_attribute_forms_old_opsets);
  tcase_add_test(tc, test_misc_small);
  tcase_add_test(tc, test_backend_node_data);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int nf = srunner_ntests_failed(sr);
  srunner_free(sr);
  return nf ? 1 : 0;
}
