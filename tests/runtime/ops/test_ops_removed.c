/* test_ops_removed.c - the experimental ops ONNX removed, which old models
 * still use and ONNX Runtime still runs at opsets 1-9: Affine, Scale, ScaledTanh,
 * ParametricSoftplus, ImageScaler (runtime/ops/elementwise_unary.c), Crop,
 * DynamicSlice (shape_strided.c), ThresholdedRelu-1 and
 * MeanVarianceNormalization-1 (reduce.c). One case per op against
 * hand-computed values, on the fast and the reference kernels: attributes
 * given and defaulted, bad input refused with a message naming the node, and
 * the op refused from opset 10 on (8 for MeanVarianceNormalization-1), as ONNX
 * Runtime does. Their conversion to standard ops is in
 * tests/passes/test_convert_opset.c, the comparison with ONNX Runtime in
 * tests/ref/check_removed_ops.py. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"

static int feq(double a, double b, double tol) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  return fabs(a - b) <= tol * (1 + fabs(b));
}

#define CK_F(got, want, tol) \
  ck_assert_msg(feq((got), (want), (tol)), "got %.9g, want %.9g", (double)(got), (double)(want))

static void ck_dims(const nbl_host_tensor *t, int rank, const int64_t *dims) {
  ck_assert_int_eq(t->rank, rank);
  for (int d = 0; d < rank; d++) ck_assert_int_eq(t->dims[d], dims[d]);
}

/* The last error names node n0 of op `op` and says `what`. */
static void ck_err(const char *op, const char *what) {
  char node[64];
  snprintf(node, sizeof node, "node 'n0' (%s", op);
  ck_assert_msg(strstr(nbl_last_error(), node), "'%s' lacks \"%s\"", nbl_last_error(), node);
  ck_assert_msg(strstr(nbl_last_error(), what), "'%s' lacks \"%s\"", nbl_last_error(), what);
}

/* A one-input node at `opset` with float attributes (names[i] = vals[i], n of them). */
static one *unary(const char *op, int opset, int n, const char *const *names, const float *vals,
                  int rank, const int64_t *dims, const float *x) {
  one *o = one_new(op, opset, 1, 1);
  for (int i = 0; i < n; i++) nbl_node_set_attr_float(G(o), o->node, names[i], vals[i]);
  one_in(o, 0, NBL_DT_FLOAT, rank, dims, x);
  return o;
}

/* From opset 10 on (ONNX removed the op) there is no kernel, as in ONNX Runtime. */
static void ck_gone_at(const char *op, int opset, int n_in) {
  float x[4] = {0};
  int64_t d[4] = {1, 1, 2, 2};
  one *o = one_new(op, opset, n_in, 1);
  for (int i = 0; i < n_in; i++) one_in(o, i, NBL_DT_FLOAT, 4, d, x);
  ck_assert_int_ne(one_run(o, 0), NBL_OK);
  ck_err(op, "no kernel");
  one_free(o);
}

static const float X4[4] = {-2, -0.5f, 0.5f, 3};

/* ------------------------------------------------------------------ Affine, Scale, ScaledTanh, ParametricSoftplus */

START_TEST(test_affine) {
  int64_t d = 4;
  const char *ab[] = {"alpha", "beta"};
  for (int ref = 0; ref < 2; ref++) {
    one *o = unary("Affine", 7, 2, ab, (float[]){2.0f, 0.5f}, 1, &d, X4);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    const float want[4] = {-3.5f, -0.5f, 1.5f, 6.5f};
    for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], want[i], 0);
    one_free(o);
    /* defaults alpha 1, beta 0: the identity */
    o = unary("Affine", 9, 0, NULL, NULL, 1, &d, X4);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], X4[i], 0);
    one_free(o);
  }
  /* double too (the family's generic path) */
  double xd[2] = {1.5, -4};
  one *o = one_new("Affine", 1, 1, 1);
  nbl_node_set_attr_float(G(o), o->node, "alpha", -3.0f);
  one_in(o, 0, NBL_DT_DOUBLE, 1, (int64_t[]){2}, xd);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  ck_assert_double_eq(outd(o, 0)[0], -4.5);
  ck_assert_double_eq(outd(o, 0)[1], 12);
  one_free(o);
  ck_gone_at("Affine", 10, 1);
}
END_TEST

START_TEST(test_scale) {
  int64_t d = 4;
  const char *sc = "scale";
  for (int ref = 0; ref < 2; ref++) {
    one *o = unary("Scale", 7, 1, &sc, (float[]){-2.5f}, 1, &d, X4);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], -2.5 * X4[i], 0);
    one_free(o);
    /* default 1; -0 stays -0 (a product, nothing added) */
    const float z[2] = {-0.0f, 7};
    o = unary("Scale", 1, 0, NULL, NULL, 1, (int64_t[]){2}, z);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_assert(outf(o, 0)[0] == 0 && signbit(outf(o, 0)[0]));
    CK_F(outf(o, 0)[1], 7, 0);
    one_free(o);
  }
  ck_gone_at("Scale", 10, 1);
}
END_TEST

START_TEST(test_scaled_tanh) {
  int64_t d = 4;
  const char *ab[] = {"alpha", "beta"};
  for (int ref = 0; ref < 2; ref++) {
    one *o = unary("ScaledTanh", 8, 2, ab, (float[]){2.0f, 0.5f}, 1, &d, X4);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], 2 * tanh(0.5 * X4[i]), 1e-7);
    one_free(o);
  }
  /* alpha and beta have no default: a node without one is refused (as in ONNX Runtime) */
  for (int k = 0; k < 2; k++) {
    one *o = unary("ScaledTanh", 7, 1, &ab[k], (float[]){2.0f}, 1, &d, X4);
    ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
    ck_err("ScaledTanh", k ? "attribute 'alpha' is required" : "attribute 'beta' is required");
    one_free(o);
  }
  ck_gone_at("ScaledTanh", 13, 1);
}
END_TEST

START_TEST(test_parametric_softplus) {
  const float x[5] = {-2, -0.5f, 0.5f, 3, 200};
  int64_t d = 5;
  const char *ab[] = {"alpha", "beta"};
  for (int ref = 0; ref < 2; ref++) {
    one *o = unary("ParametricSoftplus", 7, 2, ab, (float[]){2.0f, 0.5f}, 1, &d, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 4; i++) CK_F(outf(o, 0)[i], 2 * log1p(exp(0.5 * x[i])), 1e-7);
    CK_F(outf(o, 0)[4], 200, 1e-7); /* no overflow: ln(e^100 + 1) = 100 */
    one_free(o);
  }
  one *o = unary("ParametricSoftplus", 7, 1, &ab[1], (float[]){1.0f}, 1, &d, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("ParametricSoftplus", "attribute 'alpha' is required");
  one_free(o);
  ck_gone_at("ParametricSoftplus", 10, 1);
}
END_TEST

/* ------------------------------------------------------------------ ThresholdedRelu-1 */

START_TEST(test_thresholded_relu1) {
  const float x[5] = {-2, 0.5f, 1, 1.5f, 3};
  int64_t d = 5;
  const char *a = "alpha";
  for (int ref = 0; ref < 2; ref++) {
    /* default alpha 1 (the same as version 10): y = x where x > alpha, strictly */
    one *o = unary("ThresholdedRelu", 7, 0, NULL, NULL, 1, &d, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    const float w1[5] = {0, 0, 0, 1.5f, 3};
    for (int i = 0; i < 5; i++) CK_F(outf(o, 0)[i], w1[i], 0);
    one_free(o);
    o = unary("ThresholdedRelu", 1, 1, &a, (float[]){0.5f}, 1, &d, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    const float w2[5] = {0, 0, 1, 1.5f, 3};
    for (int i = 0; i < 5; i++) CK_F(outf(o, 0)[i], w2[i], 0);
    one_free(o);
  }
}
END_TEST

/* ------------------------------------------------------------------ ImageScaler */

START_TEST(test_imagescaler) {
  float x[8];
  for (int i = 0; i < 8; i++) x[i] = (float)i - 3.5f;
  int64_t d[4] = {1, 2, 2, 2};
  const float bias[2] = {1, -2};
  for (int ref = 0; ref < 2; ref++) {
    one *o = unary("ImageScaler", 8, 1, (const char *[]){"scale"}, (float[]){2.0f}, 4, d, x);
    nbl_node_set_attr_floats(G(o), o->node, "bias", 2, bias);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 4, d);
    for (int i = 0; i < 8; i++) CK_F(outf(o, 0)[i], 2 * x[i] + bias[i / 4], 0);
    one_free(o);
    /* scale defaults to 1 */
    o = unary("ImageScaler", 7, 0, NULL, NULL, 4, d, x);
    nbl_node_set_attr_floats(G(o), o->node, "bias", 2, bias);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 8; i++) CK_F(outf(o, 0)[i], x[i] + bias[i / 4], 0);
    one_free(o);
    /* no bias: nothing added (the ONNX spec; ONNX Runtime refuses such a node) */
    o = unary("ImageScaler", 7, 1, (const char *[]){"scale"}, (float[]){-3.0f}, 4, d, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    for (int i = 0; i < 8; i++) CK_F(outf(o, 0)[i], -3 * x[i], 0);
    one_free(o);
  }
  /* one bias per channel, a 4-D input */
  one *o = unary("ImageScaler", 7, 0, NULL, NULL, 4, d, x);
  nbl_node_set_attr_floats(G(o), o->node, "bias", 3, (float[]){1, 2, 3});
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("ImageScaler", "attribute 'bias' has 3 values");
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "2 channels"));
  one_free(o);
  o = unary("ImageScaler", 7, 0, NULL, NULL, 3, (int64_t[]){2, 2, 2}, x);
  nbl_node_set_attr_floats(G(o), o->node, "bias", 2, bias);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("ImageScaler", "rank 3");
  one_free(o);
  ck_gone_at("ImageScaler", 10, 1);
}
END_TEST

/* ------------------------------------------------------------------ Crop */

static one *crop(const int64_t *border, const int64_t *scale, int rank, const int64_t *dims,
                 const float *x) {
  one *o = one_new("Crop", 7, 1, 1);
  if (border) nbl_node_set_attr_ints(G(o), o->node, "border", 4, border);
  if (scale) nbl_node_set_attr_ints(G(o), o->node, "scale", 2, scale);
  one_in(o, 0, NBL_DT_FLOAT, rank, dims, x);
  return o;
}

START_TEST(test_crop) {
  float x[24]; /* [2, 1, 3, 4]: x[n, 0, h, w] = 100 n + 10 h + w */
  for (int i = 0; i < 24; i++) x[i] = (float)(100 * (i / 12) + 10 * ((i / 4) % 3) + i % 4);
  int64_t d[4] = {2, 1, 3, 4};
  for (int ref = 0; ref < 2; ref++) {
    /* border (left, top, right, bottom) = (1, 1, 1, 0): rows 1..2, columns 1..2 */
    one *o = crop((int64_t[]){1, 1, 1, 0}, NULL, 4, d, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 4, (int64_t[]){2, 1, 2, 2});
    const float w1[8] = {11, 12, 21, 22, 111, 112, 121, 122};
    for (int i = 0; i < 8; i++) CK_F(outf(o, 0)[i], w1[i], 0);
    one_free(o);
    /* scale (height, width) = (2, 3) from (left 1, top 0); right and bottom unused */
    o = crop((int64_t[]){1, 0, 3, 3}, (int64_t[]){2, 3}, 4, d, x);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 4, (int64_t[]){2, 1, 2, 3});
    const float w2[6] = {1, 2, 3, 11, 12, 13};
    for (int i = 0; i < 6; i++) CK_F(outf(o, 0)[i], w2[i], 0);
    CK_F(outf(o, 0)[6], 101, 0);
    one_free(o);
  }
  /* borders wider than the image, a window past its edge, no border, not 4-D */
  one *o = crop((int64_t[]){3, 0, 2, 0}, NULL, 4, d, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("Crop", "exceed the input's width 4");
  one_free(o);
  o = crop((int64_t[]){0, 2, 0, 0}, (int64_t[]){2, 2}, 4, d, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("Crop", "exceed the input's height 3");
  one_free(o);
  o = crop(NULL, NULL, 4, d, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("Crop", "attribute 'border' needs 4 values");
  one_free(o);
  o = crop((int64_t[]){0, 0, 0, 0}, NULL, 3, (int64_t[]){2, 3, 4}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("Crop", "rank 3");
  one_free(o);
  ck_gone_at("Crop", 10, 1);
}
END_TEST

/* ------------------------------------------------------------------ DynamicSlice */

START_TEST(test_dynamic_slice) {
  float x[24]; /* [2, 3, 4] */
  for (int i = 0; i < 24; i++) x[i] = (float)i;
  int64_t d[3] = {2, 3, 4}, two = 2;
  for (int ref = 0; ref < 2; ref++) {
    /* the bounds are inputs at opset 9 too (unlike Slice-9): x[1:, :, 1:-1] with axes [0, -1] */
    int64_t s[2] = {1, 1}, e[2] = {100, -1}, ax[2] = {0, -1};
    one *o = one_new("DynamicSlice", 9, 4, 1);
    one_in(o, 0, NBL_DT_FLOAT, 3, d, x);
    one_in(o, 1, NBL_DT_INT64, 1, &two, s);
    one_in(o, 2, NBL_DT_INT64, 1, &two, e);
    one_in(o, 3, NBL_DT_INT64, 1, &two, ax);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 3, (int64_t[]){1, 3, 2});
    const float w1[6] = {13, 14, 17, 18, 21, 22};
    for (int i = 0; i < 6; i++) CK_F(outf(o, 0)[i], w1[i], 0);
    one_free(o);
    /* no axes: the first ones; int32 bounds; start past end gives nothing */
    int32_t s32[2] = {0, 2}, e32[2] = {1, 1};
    o = one_new("DynamicSlice", 7, 3, 1);
    one_in(o, 0, NBL_DT_FLOAT, 3, d, x);
    one_in(o, 1, NBL_DT_INT32, 1, &two, s32);
    one_in(o, 2, NBL_DT_INT32, 1, &two, e32);
    ck_assert_int_eq(one_run(o, ref), NBL_OK);
    ck_dims(&o->out[0], 3, (int64_t[]){1, 0, 4});
    one_free(o);
  }
  /* an axis out of range; a fifth input (steps: Slice-10 has them, DynamicSlice not) */
  int64_t s = 0, e = 1, bad = 3, one_ = 1;
  one *o = one_new("DynamicSlice", 7, 4, 1);
  one_in(o, 0, NBL_DT_FLOAT, 3, d, x);
  one_in(o, 1, NBL_DT_INT64, 1, &one_, &s);
  one_in(o, 2, NBL_DT_INT64, 1, &one_, &e);
  one_in(o, 3, NBL_DT_INT64, 1, &one_, &bad);
  ck_assert_int_ne(one_run(o, 0), NBL_OK);
  ck_err("DynamicSlice", "axis 3");
  one_free(o);
  o = one_new("DynamicSlice", 7, 5, 1);
  one_in(o, 0, NBL_DT_FLOAT, 3, d, x);
  one_in(o, 1, NBL_DT_INT64, 1, &one_, &s);
  one_in(o, 2, NBL_DT_INT64, 1, &one_, &e);
  one_in(o, 3, NBL_DT_UNDEFINED, 0, NULL, NULL);
  one_in(o, 4, NBL_DT_INT64, 1, &one_, &one_);
  ck_assert_int_ne(one_run(o, 0), NBL_OK);
  ck_err("DynamicSlice", "no steps");
  one_free(o);
  ck_gone_at("DynamicSlice", 10, 3);
}
END_TEST

/* ------------------------------------------------------------------ MeanVarianceNormalization-1 */

START_TEST(test_mvn1) {
  /* [N 2, C 2, H 1, W 2]: channel 0 holds 1, 3 (n 0) and 5, 7 (n 1), channel 1 is all 2 */
  const float x[8] = {1, 3, 2, 2, 5, 7, 2, 2};
  int64_t d[4] = {2, 2, 1, 2};
  const int ch0[4] = {0, 1, 4, 5}, ch1[4] = {2, 3, 6, 7};
  for (int ref = 0; ref < 2; ref++)
    for (int across = 0; across < 2; across++)
      for (int nv = -1; nv < 2; nv++) { /* nv -1: the default, 1 */
        one *o = one_new("MeanVarianceNormalization", 7, 1, 1);
        if (across) nbl_node_set_attr_int(G(o), o->node, "across_channels", 1);
        if (nv >= 0) nbl_node_set_attr_int(G(o), o->node, "normalize_variance", nv);
        one_in(o, 0, NBL_DT_FLOAT, 4, d, x);
        ck_assert_int_eq(one_run(o, ref), NBL_OK);
        const float *y = outf(o, 0);
        if (!across) {
          /* per channel over N, H, W: channel 0 mean 4, variance 5; channel 1
           * mean 2, variance 0: 0 / 0, NaN (no epsilon, as ONNX Runtime) */
          for (int i = 0; i < 4; i++) {
            CK_F(y[ch0[i]], nv ? (x[ch0[i]] - 4) / sqrt(5.0) : x[ch0[i]] - 4, 1e-6);
            if (nv) ck_assert(isnan(y[ch1[i]]));
            else CK_F(y[ch1[i]], 0, 0);
          }
        } else {
          /* over everything: mean 3, variance 28 / 8 */
          for (int i = 0; i < 8; i++) CK_F(y[i], nv ? (x[i] - 3) / sqrt(3.5) : x[i] - 3, 1e-6);
        }
        one_free(o);
      }
  one *o = one_new("MeanVarianceNormalization", 8, 1, 1);
  one_in(o, 0, NBL_DT_FLOAT, 3, (int64_t[]){2, 2, 2}, x);
  ck_assert_int_eq(one_run(o, 0), NBL_ERR_INVALID_MODEL);
  ck_err("MeanVarianceNormalization", "rank 3");
  one_free(o);
  /* version 9 is another op (axes, epsilon): across_channels means nothing there */
  o = one_new("MeanVarianceNormalization", 9, 1, 1);
  nbl_node_set_attr_int(G(o), o->node, "across_channels", 1);
  one_in(o, 0, NBL_DT_FLOAT, 4, d, x);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  CK_F(outf(o, 0)[2], 0, 0); /* the constant channel: 0 / (0 + 1e-9) */
  one_free(o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("ops_removed");
  TCase *tc = tcase_create("removed");
  tcase_add_test(tc, test_affine);
  tcase_add_test(tc, test_scale);
  tcase_add_test(tc, test_scaled_tanh);
  tcase_add_test(tc, test_parametric_softplus);
  tcase_add_test(tc, test_thresholded_relu1);
  tcase_add_test(tc, test_imagescaler);
  tcase_add_test(tc, test_crop);
  tcase_add_test(tc, test_dynamic_slice);
  tcase_add_test(tc, test_mvn1);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
