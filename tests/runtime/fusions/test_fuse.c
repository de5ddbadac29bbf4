/* test_fuse.c - the executor's FP32 Conv + Relu/Clip fusion (runtime/fusions/fuse_f32.c).
 *
 * Each case builds Conv -> activation twice: once with only the activation's
 * output as graph output (the session fuses), once with the Conv output also
 * a graph output (it must not fuse). The profile names the steps that ran, so
 * the test sees which way each session went; the fused result must equal the
 * unfused one bit for bit (the clamp is the same float operation on the same
 * values), and both must match a naive double-precision loop written here. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "ir/ir.h"
#include "test_data.h"
#include "fuse_test.h"
#include "ck_elem.h"

static uint32_t rng = 4242;
static float frand(void) { return td_lcg_float(&rng); }

enum { ACT_RELU, ACT_CLIP_CONST_NODES, ACT_CLIP_INITS, ACT_CLIP_ATTRS, ACT_CLIP_INPUT_BOUND };

typedef struct fcase {
  int64_t C, H, W, M, K, group, s, pad;
  int act;
  float lo, hi;
  int nan_at; /* >= 0: x[nan_at] = NaN */
} fcase;

/* Runs the case; keep_conv_out: the Conv output is a graph output too.
 * Returns the activation output (malloc'd) and whether the profile showed a
 * fused step. */
static float *run_case(const fcase *c, const float *x, const float *w, const float *b,
                       int threads, int keep_conv_out, int *fused, int64_t *n_out) {
  nbl_model *m = nbl_model_new();
  int opset = c->act == ACT_CLIP_ATTRS ? 6 : 13;
  nbl_model_set_opset(m, "", opset);
  nbl_graph *g = m->graph;
  int64_t Cg = c->C / c->group;
  int64_t dx[4] = {1, c->C, c->H, c->W}, dw[4] = {c->M, Cg, c->K, c->K}, db[1] = {c->M};
  nbl_id vx = nbl_graph_add_value(g, "x"), vw = nbl_graph_add_value(g, "w");
  nbl_id vb = nbl_graph_add_value(g, "b"), vc = nbl_graph_add_value(g, "c");
  nbl_id vy = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, 4, dx);
  nbl_graph_add_input(g, vx);
  nbl_graph_set_initializer(g, vw, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 4, dw, w));
  nbl_graph_set_initializer(g, vb, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, db, b));
  nbl_id ins[3] = {vx, vw, vb};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "conv", 3, ins, 1, &vc);
  int64_t st[2] = {c->s, c->s}, pd[4] = {c->pad, c->pad, c->pad, c->pad};
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
  nbl_node_set_attr_ints(g, n, "pads", 4, pd);
  nbl_node_set_attr_int(g, n, "group", c->group);
  nbl_host_tensor feeds[3];
  memset(feeds, 0, sizeof feeds);
  feeds[0] = (nbl_host_tensor){.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .data = (void *)x,
                               .nbytes = sizeof(float) * (size_t)(c->C * c->H * c->W)};
  memcpy(feeds[0].dims, dx, sizeof dx);
  int nf = 1;
  float lo = c->lo, hi = c->hi;
  if (c->act == ACT_RELU) {
    nbl_graph_add_node(g, "Relu", "", "act", 1, &vc, 1, &vy);
  } else if (c->act == ACT_CLIP_ATTRS) {
    nbl_id a = nbl_graph_add_node(g, "Clip", "", "act", 1, &vc, 1, &vy);
    nbl_node_set_attr_float(g, a, "min", lo);
    nbl_node_set_attr_float(g, a, "max", hi);
  } else {
    nbl_id vlo = nbl_graph_add_value(g, "lo"), vhi = nbl_graph_add_value(g, "hi");
    nbl_tensor *tlo = c->act == ACT_CLIP_INPUT_BOUND
                          ? NULL
                          : nbl_tensor_new(m->arena, "lo", NBL_DT_FLOAT, 0, NULL, &lo);
    nbl_tensor *thi = nbl_tensor_new(m->arena, "hi", NBL_DT_FLOAT, 0, NULL, &hi);
    if (c->act == ACT_CLIP_CONST_NODES) {
      nbl_id k1 = nbl_graph_add_node(g, "Constant", "", "klo", 0, NULL, 1, &vlo);
      nbl_node_set_attr_tensor(g, k1, "value", tlo);
      nbl_id k2 = nbl_graph_add_node(g, "Constant", "", "khi", 0, NULL, 1, &vhi);
      nbl_node_set_attr_tensor(g, k2, "value", thi);
    } else if (c->act == ACT_CLIP_INITS) {
      nbl_graph_set_initializer(g, vlo, tlo);
      nbl_graph_set_initializer(g, vhi, thi);
    } else { /* lo is a graph input: not a constant, never fused */
      nbl_type_set_tensor(m->arena, &g->values[vlo].type, NBL_DT_FLOAT, 0, NULL);
      nbl_graph_add_input(g, vlo);
      nbl_graph_set_initializer(g, vhi, thi);
      feeds[1] = (nbl_host_tensor){.name = "lo", .dtype = NBL_DT_FLOAT, .rank = 0, .data = &lo,
                                   .nbytes = sizeof(float)};
      nf = 2;
    }
    nbl_id cin[3] = {vc, vlo, vhi};
    nbl_graph_add_node(g, "Clip", "", "act", 3, cin, 1, &vy);
  }
  nbl_graph_add_output(g, vy);
  if (keep_conv_out) nbl_graph_add_output(g, vc);
  ck_assert_msg(nbl_graph_verify(g, "test") == NBL_OK, "%s", nbl_last_error());
  nbl_session_options opt = {.threads = threads, .profile = 1};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s", nbl_last_error());
  float *out = NULL;
  for (int run = 0; run < 2; run++) { /* second run: planned arena */
    const nbl_host_tensor *res = NULL;
    ck_assert_msg(nbl_session_run(s, nf, feeds, &res) == NBL_OK, "%s", nbl_last_error());
    *n_out = (int64_t)(res[0].nbytes / sizeof(float));
    if (run == 0) {
      out = malloc(res[0].nbytes);
      memcpy(out, res[0].data, res[0].nbytes);
    } else {
      ck_assert(memcmp(out, res[0].data, res[0].nbytes) == 0);
    }
  }
  char *text = ft_profile(s);
  *fused = strstr(text, "Conv+") != NULL;
  free(text);
  nbl_session_free(s);
  nbl_model_free(m);
  return out;
}

static void check(const fcase *c, int expect_fused) {
  int64_t Cg = c->C / c->group, nx = c->C * c->H * c->W, nw = c->M * Cg * c->K * c->K;
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw);
  float *b = malloc(sizeof(float) * (size_t)c->M);
  for (int64_t i = 0; i < nx; i++) x[i] = frand();
  for (int64_t i = 0; i < nw; i++) w[i] = frand();
  for (int64_t i = 0; i < c->M; i++) b[i] = frand();
  if (c->nan_at >= 0) x[c->nan_at] = NAN;
  int64_t OH = (c->H + 2 * c->pad - c->K) / c->s + 1, OW = (c->W + 2 * c->pad - c->K) / c->s + 1;
  int64_t Mg = c->M / c->group;
  float lo = c->act == ACT_RELU ? 0.0f : c->lo, hi = c->act == ACT_RELU ? INFINITY : c->hi;
  for (int threads = 1; threads <= 2; threads++) {
    int fu = -1, un = -1;
    int64_t n1 = 0, n2 = 0;
    float *yf = run_case(c, x, w, b, threads, 0, &fu, &n1);
    float *yu = run_case(c, x, w, b, threads, 1, &un, &n2);
    ck_assert_int_eq(fu, expect_fused);
    ck_assert_int_eq(un, 0);
    ck_assert_int_eq(n1, c->M * OH * OW);
    ck_assert_int_eq(n2, n1);
    int nans = 0;
    for (int64_t i = 0; i < n1; i++) {
      ck_elem_msg(memcmp(&yf[i], &yu[i], sizeof(float)) == 0 || (isnan(yf[i]) && isnan(yu[i])),
                  "act %d threads %d: fused %g vs unfused %g at %lld", c->act, threads, yf[i],
                  yu[i], (long long)i);
      int64_t mm = i / (OH * OW), oh = i / OW % OH, ow = i % OW, gr = mm / Mg;
      double acc = b[mm], mag = fabs(acc);
      int hit_nan = 0;
      for (int64_t cc = 0; cc < Cg; cc++)
        for (int64_t kh = 0; kh < c->K; kh++)
          for (int64_t kw = 0; kw < c->K; kw++) {
            int64_t ih = oh * c->s - c->pad + kh, iw = ow * c->s - c->pad + kw;
            if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
            int64_t xi = ((gr * Cg + cc) * c->H + ih) * c->W + iw;
            hit_nan |= xi == c->nan_at;
            double p = (double)x[xi] * w[((mm * Cg + cc) * c->K + kh) * c->K + kw];
            acc += p;
            mag += fabs(p);
          }
      if (hit_nan) {
        ck_assert_msg(isnan(yf[i]), "NaN input must give NaN at %lld, got %g", (long long)i, yf[i]);
        nans++;
        continue;
      }
      double want = acc < lo ? lo : acc;
      want = want > hi ? hi : want;
      ck_elem_msg(fabs(yf[i] - want) <= 1e-5 * (1 + mag), "act %d: y[%lld] = %g, want %g",
                  c->act, (long long)i, yf[i], want);
    }
    if (c->nan_at >= 0) ck_assert_int_gt(nans, 0);
    free(yf);
    free(yu);
  }
  free(x);
  free(w);
  free(b);
}

START_TEST(test_relu_winograd) {
  fcase c = {16, 12, 12, 16, 3, 1, 1, 1, ACT_RELU, 0, 0, -1};
  check(&c, 1);
  fcase d = {16, 30, 29, 16, 3, 1, 1, 1, ACT_CLIP_INITS, -0.5f, 0.5f, -1}; /* banded */
  check(&d, 1);
}
END_TEST

START_TEST(test_clip_const_nodes_depthwise) {
  fcase c = {24, 15, 13, 24, 3, 24, 2, 1, ACT_CLIP_CONST_NODES, 0.0f, 0.5f, -1};
  check(&c, 1);
}
END_TEST

START_TEST(test_clip_inits_pointwise) {
  fcase c = {40, 9, 9, 70, 1, 1, 1, 0, ACT_CLIP_INITS, -0.3f, 0.25f, -1};
  check(&c, 1);
}
END_TEST

START_TEST(test_clip_attrs_im2col_stride2) {
  fcase c = {5, 17, 19, 12, 3, 1, 2, 1, ACT_CLIP_ATTRS, -1.0f, 1.0f, -1};
  check(&c, 1);
}
END_TEST

START_TEST(test_nan_passes_through) {
  fcase c = {8, 10, 10, 8, 3, 1, 1, 1, ACT_CLIP_INITS, 0.0f, 6.0f, 3 * 100 + 55};
  check(&c, 1);
  fcase d = {16, 10, 10, 16, 3, 16, 1, 1, ACT_RELU, 0, 0, 7 * 100 + 12};
  check(&d, 1);
}
END_TEST

START_TEST(test_input_bound_not_fused) {
  fcase c = {8, 10, 10, 8, 3, 1, 1, 1, ACT_CLIP_INPUT_BOUND, -0.2f, 0.4f, -1};
  check(&c, 0);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("fuse");
  TCase *tc = tcase_create("conv_act");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_relu_winograd);
  tcase_add_test(tc, test_clip_const_nodes_depthwise);
  tcase_add_test(tc, test_clip_inits_pointwise);
  tcase_add_test(tc, test_clip_attrs_im2col_stride2);
  tcase_add_test(tc, test_nan_passes_through);
  tcase_add_test(tc, test_input_bound_not_fused);
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
