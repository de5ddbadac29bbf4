/* test_resize_fast.c - the float32 fast path of Resize / Upsample
 * (k_resize_fast, runtime/ops/shape_resize.c) against the reference kernel.
 *
 * The fast path does the reference's float operations in its order, so each
 * case compares the two outputs bit for bit: every mode (nearest, linear,
 * cubic), every coordinate_transformation_mode and nearest_mode, scales and
 * sizes, up- and downsampling by integer and other factors, outputs of one
 * element, odd sizes, batch and channels above 1, at 1 and 2 threads, on data
 * with signed zeros and (in some cases) infinities and NaNs. Cases the fast
 * path leaves to the reference (a resized channel axis, antialias with many
 * taps) are compared too. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"

enum { FRESH, SPECIAL }; /* data: finite values and signed zeros; or also inf / NaN */

typedef struct rcase {
  const char *op; /* "Resize" (NULL) or "Upsample" */
  int opset;
  const char *mode, *ctm, *nm; /* NULL: the default */
  int64_t dims[4];              /* input N, C, H, W */
  int64_t sizes[2];             /* output H, W by sizes when sizes[0] > 0 */
  float scales[2];              /* else H, W scales */
  float roi[4];                 /* tf_crop_and_resize: H, W starts then ends */
  int exclude_outside, antialias, data;
  float cubic_a, extrapolation;
  float cscale; /* the channel axis' scale (0: 1) */
  int rank;     /* 0: 4; 2 or 3: the last dims of dims only */
} rcase;

static uint32_t lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

static void fill(float *x, int64_t n, int data, uint32_t seed) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t r = lcg(&seed);
    x[i] = (float)(r % 20001) / 1000.0f - 10.0f;
    if (r % 17 == 0) x[i] = -0.0f;
    if (r % 19 == 0) x[i] = 0.0f;
    if (data == SPECIAL && r % 23 == 0) x[i] = r % 2 ? INFINITY : -INFINITY;
    if (data == SPECIAL && r % 29 == 0) x[i] = NAN;
  }
}

/* Runs case k on the fast and the reference kernels at `threads` threads;
 * returns the count of output words that differ (-1: shapes or status). */
static int64_t run_case(const rcase *k, int threads) {
  int up = k->op && !strcmp(k->op, "Upsample");
  int n_in = up ? 2 : k->opset >= 11 ? 4 : 2;
  int64_t n = (k->rank == 2 ? 1 : k->rank == 3 ? k->dims[1] : k->dims[0] * k->dims[1]) * k->dims[2] * k->dims[3];
  float *x = malloc((size_t)n * sizeof *x);
  fill(x, n, k->data, (uint32_t)(n * 7 + k->dims[3]));
  int rank = k->rank ? k->rank : 4, off = 4 - rank;
  int64_t xd[4] = {k->dims[0], k->dims[1], k->dims[2], k->dims[3]}, d4[] = {rank}, d8[] = {2 * rank}, d0[] = {0};
  float sc[4] = {1, k->cscale ? k->cscale : 1, k->scales[0], k->scales[1]};
  int64_t sz[4] = {k->dims[0], k->dims[1], k->sizes[0], k->sizes[1]};
  float roi8[8] = {0, 0, k->roi[0], k->roi[1], 1, 1, k->roi[2], k->roi[3]}, roi[8];
  for (int i = 0; i < rank; i++) roi[i] = roi8[off + i], roi[rank + i] = roi8[4 + off + i];
  float empty[1] = {0};
  int tf = k->ctm && !strcmp(k->ctm, "tf_crop_and_resize");
  nbl_host_tensor in[4];
  in[0] = ht(NBL_DT_FLOAT, rank, xd + off, x);
  if (n_in == 2) {
    in[1] = ht(NBL_DT_FLOAT, 1, d4, sc + off);
  } else {
    int sizes = k->sizes[0] > 0;
    if (k->opset < 13) { /* roi and scales are required: empty when unused */
      in[1] = tf ? ht(NBL_DT_FLOAT, 1, d8, roi) : ht(NBL_DT_FLOAT, 1, d0, empty);
      in[2] = sizes ? ht(NBL_DT_FLOAT, 1, d0, empty) : ht(NBL_DT_FLOAT, 1, d4, sc + off);
    } else {
      in[1] = tf ? ht(NBL_DT_FLOAT, 1, d8, roi) : ONE_NONE;
      in[2] = sizes ? ONE_NONE : ht(NBL_DT_FLOAT, 1, d4, sc + off);
    }
    in[3] = sizes ? ht(NBL_DT_INT64, 1, d4, sz + off) : ONE_NONE;
    if (!sizes && k->opset < 13) n_in = 3;
  }
  one *o = one_new(up ? "Upsample" : "Resize", k->opset, n_in, 1);
  nbl_graph *g = G(o);
  if (k->mode) nbl_node_set_attr_string(g, o->node, "mode", k->mode);
  if (k->ctm) nbl_node_set_attr_string(g, o->node, "coordinate_transformation_mode", k->ctm);
  if (k->nm) nbl_node_set_attr_string(g, o->node, "nearest_mode", k->nm);
  if (k->exclude_outside) nbl_node_set_attr_int(g, o->node, "exclude_outside", 1);
  if (k->antialias) nbl_node_set_attr_int(g, o->node, "antialias", 1);
  if (k->cubic_a) nbl_node_set_attr_float(g, o->node, "cubic_coeff_a", k->cubic_a);
  if (k->extrapolation) nbl_node_set_attr_float(g, o->node, "extrapolation_value", k->extrapolation);
  one_ins(o, n_in, in);
  o->threads = threads;
  int64_t bad = -1;
  nbl_status st = one_run(o, 0);
  if (st) {
    fprintf(stderr, "fast run: %s\n", nbl_last_error());
    goto out;
  }
  nbl_host_tensor f = o->out[0];
  void *fd = malloc(f.nbytes ? f.nbytes : 1);
  memcpy(fd, f.data, f.nbytes);
  if ((st = one_run(o, 1))) {
    fprintf(stderr, "reference run: %s\n", nbl_last_error());
    free(fd);
    goto out;
  }
  const nbl_host_tensor *r = &o->out[0];
  if (r->rank == f.rank && r->nbytes == f.nbytes && f.dtype == NBL_DT_FLOAT) {
    bad = 0;
    for (int i = 0; i < r->rank; i++)
      if (r->dims[i] != f.dims[i]) bad = -1;
    const uint32_t *a = fd, *b = r->data;
    for (size_t i = 0; bad >= 0 && i < f.nbytes / 4; i++) bad += a[i] != b[i];
  }
  free(fd);
out:
  one_free(o);
  free(x);
  return bad;
}

static const char *ctms[] = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                             "tf_crop_and_resize"};
static const char *nms[] = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"};

/* Geometries: input H, W and the output by scales (sizes 0) or by sizes. */
typedef struct geo {
  int64_t h, w, oh, ow;
  float sh, sw;
} geo;
static const geo geos[] = {
    {7, 5, 0, 0, 2, 2},       /* x2 */
    {4, 6, 0, 0, 8, 8},       /* x8, as FCN's last Resize */
    {5, 7, 0, 0, 2.5f, 0.6f}, /* up one axis, down the other */
    {9, 10, 0, 0, 0.5f, 0.5f},
    {6, 6, 0, 0, 1.7f, 1.3f},
    {5, 7, 13, 4, 0, 0},  /* sizes */
    {4, 6, 1, 1, 0, 0},   /* one output element */
    {1, 1, 3, 5, 0, 0},   /* from one input element */
    {3, 8, 3, 17, 0, 0},  /* H kept */
    {6, 5, 11, 5, 0, 0},  /* W kept */
    {3, 4, 3, 4, 0, 0},   /* nothing resized */
    {10, 13, 7, 29, 0, 0},
    {2, 37, 5, 70, 0, 0}, /* rows longer than a vector, with a tail */
};
#define NGEO ((int)(sizeof geos / sizeof geos[0]))

static rcase geo_case(const geo *gm, int opset, const char *mode, const char *ctm, const char *nm, int data) {
  rcase k = {.opset = opset, .mode = mode, .ctm = ctm, .nm = nm, .data = data};
  k.dims[0] = 2, k.dims[1] = 3, k.dims[2] = gm->h, k.dims[3] = gm->w;
  k.sizes[0] = gm->oh, k.sizes[1] = gm->ow;
  k.scales[0] = gm->sh, k.scales[1] = gm->sw;
  if (ctm && !strcmp(ctm, "tf_crop_and_resize")) {
    /* inside the input for even geometries, reaching out of it for odd */
    int outside = (gm->h + gm->w) % 2;
    k.roi[0] = outside ? -0.2f : 0.1f, k.roi[1] = outside ? 0.3f : 0.2f;
    k.roi[2] = outside ? 1.3f : 0.8f, k.roi[3] = outside ? 0.9f : 0.95f;
    k.extrapolation = 7.5f;
  }
  return k;
}

static void expect_same(const rcase *k, const char *what) {
  for (int t = 1; t <= 2; t++) {
    int64_t bad = run_case(k, t);
    if (bad)
      ck_abort_msg("%s: %s %s ctm=%s nm=%s opset %d rank %d [%lld,%lld,%lld,%lld] threads %d: %lld words differ", what,
                   k->op ? k->op : "Resize", k->mode ? k->mode : "nearest", k->ctm ? k->ctm : "-",
                   k->nm ? k->nm : "-", k->opset, k->rank ? k->rank : 4, (long long)k->dims[0], (long long)k->dims[1],
                   (long long)k->dims[2], (long long)k->dims[3], t, (long long)bad);
  }
}

START_TEST(test_nearest_all_modes) {
  for (int c = 0; c < 5; c++)
    for (int m = 0; m < 4; m++)
      for (int gi = 0; gi < NGEO; gi++) {
        rcase k = geo_case(&geos[gi], 13, "nearest", ctms[c], nms[m], gi % 3 == 0 ? SPECIAL : FRESH);
        expect_same(&k, "nearest");
      }
  /* half_pixel_symmetric (opset 19) */
  for (int gi = 0; gi < NGEO; gi++) {
    rcase k = geo_case(&geos[gi], 19, "nearest", "half_pixel_symmetric", "round_prefer_ceil", FRESH);
    expect_same(&k, "nearest symmetric");
  }
  /* tf_half_pixel_for_nn (opset 11), opset 10's own rounding, Upsample */
  for (int gi = 0; gi < NGEO; gi++) {
    if (geos[gi].oh) continue; /* scales only */
    rcase k = geo_case(&geos[gi], 11, "nearest", "tf_half_pixel_for_nn", gi % 2 ? "floor" : "ceil", FRESH);
    expect_same(&k, "nearest tf_half_pixel_for_nn");
    k = geo_case(&geos[gi], 10, "nearest", NULL, NULL, SPECIAL);
    expect_same(&k, "nearest opset 10");
    k = geo_case(&geos[gi], 9, "nearest", NULL, NULL, FRESH);
    k.op = "Upsample";
    expect_same(&k, "Upsample nearest");
  }
}
END_TEST

START_TEST(test_linear_all_modes) {
  for (int c = 0; c < 5; c++)
    for (int gi = 0; gi < NGEO; gi++) {
      rcase k = geo_case(&geos[gi], 13, "linear", ctms[c], NULL, gi % 3 == 1 ? SPECIAL : FRESH);
      expect_same(&k, "linear");
      k.exclude_outside = 1;
      expect_same(&k, "linear exclude_outside");
    }
  for (int gi = 0; gi < NGEO; gi++) {
    rcase k = geo_case(&geos[gi], 19, "linear", "half_pixel_symmetric", NULL, FRESH);
    expect_same(&k, "linear symmetric");
    k = geo_case(&geos[gi], 18, "linear", "pytorch_half_pixel", NULL, FRESH);
    k.antialias = 1; /* downsampling: more taps per axis */
    expect_same(&k, "linear antialias");
    if (geos[gi].oh) continue;
    k = geo_case(&geos[gi], 10, "linear", NULL, NULL, FRESH);
    expect_same(&k, "linear opset 10");
    k = geo_case(&geos[gi], 9, "linear", NULL, NULL, SPECIAL);
    k.op = "Upsample";
    expect_same(&k, "Upsample linear");
  }
}
END_TEST

START_TEST(test_cubic_all_modes) {
  for (int c = 0; c < 5; c++)
    for (int gi = 0; gi < NGEO; gi++) {
      rcase k = geo_case(&geos[gi], 13, "cubic", ctms[c], NULL, gi % 4 == 2 ? SPECIAL : FRESH);
      expect_same(&k, "cubic");
      k.exclude_outside = 1;
      k.cubic_a = -0.5f;
      expect_same(&k, "cubic exclude_outside a=-0.5");
    }
  for (int gi = 0; gi < NGEO; gi++) {
    rcase k = geo_case(&geos[gi], 18, "cubic", "half_pixel", NULL, FRESH);
    k.antialias = 1;
    expect_same(&k, "cubic antialias");
  }
}
END_TEST

/* Larger tensors (the thread pool splits planes into row chunks), and cases
 * the fast path leaves to the reference kernel. */
START_TEST(test_large_and_fallbacks) {
  static const char *modes[] = {"nearest", "linear", "cubic"};
  for (int m = 0; m < 3; m++) {
    rcase k = {.opset = 13, .mode = modes[m], .ctm = m == 1 ? "pytorch_half_pixel" : "half_pixel",
               .dims = {1, 5, 28, 28}, .scales = {8, 8}};
    expect_same(&k, "large");
    rcase k2 = {.opset = 13, .mode = modes[m], .ctm = "asymmetric", .nm = "floor", .dims = {2, 16, 40, 30},
                .scales = {2, 2}};
    expect_same(&k2, "large x2");
    rcase k3 = {.opset = 13, .mode = modes[m], .ctm = "align_corners", .dims = {1, 2, 33, 65},
                .sizes = {300, 121}};
    expect_same(&k3, "large sizes");
    rcase k4 = {.opset = 13, .mode = modes[m], .dims = {2, 4, 5, 6}, .scales = {2, 3}, .cscale = 2};
    expect_same(&k4, "resized channels");
    rcase k5 = {.opset = 18, .mode = modes[m], .dims = {1, 2, 64, 60}, .scales = {0.1f, 0.125f}, .antialias = 1};
    expect_same(&k5, "antialias, many taps");
    for (int gi = 0; gi < NGEO; gi++) { /* ranks 2 and 3 */
      rcase k6 = geo_case(&geos[gi], 13, modes[m], ctms[gi % 5], nms[gi % 4], FRESH);
      k6.rank = 2 + gi % 2;
      k6.dims[0] = 1;
      expect_same(&k6, "rank 2 or 3");
    }
  }
}
END_TEST

/* A hand-computed case, so that the two kernels cannot both be wrong the
 * same way: bilinear half_pixel x2 of [[1, 3], [5, 7]]. */
START_TEST(test_linear_by_hand) {
  float x[4] = {1, 3, 5, 7}, sc[4] = {1, 1, 2, 2};
  int64_t xd[] = {1, 1, 2, 2}, d4[] = {4};
  one *o = one_new("Resize", 13, 3, 1);
  nbl_node_set_attr_string(G(o), o->node, "mode", "linear");
  nbl_host_tensor in[] = {ht(NBL_DT_FLOAT, 4, xd, x), ONE_NONE, ht(NBL_DT_FLOAT, 1, d4, sc)};
  one_ins(o, 3, in);
  ck_assert_int_eq(one_run(o, 0), NBL_OK);
  float want[16] = {1, 1.5f, 2.5f, 3, 2, 2.5f, 3.5f, 4, 4, 4.5f, 5.5f, 6, 5, 5.5f, 6.5f, 7};
  const float *y = outf(o, 0);
  for (int i = 0; i < 16; i++) ck_assert_float_eq(y[i], want[i]);
  one_free(o);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("resize_fast");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_linear_by_hand);
  tcase_add_test(tc, test_nearest_all_modes);
  tcase_add_test(tc, test_linear_all_modes);
  tcase_add_test(tc, test_cubic_all_modes);
  tcase_add_test(tc, test_large_and_fallbacks);
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
