/* test_fuse_residual.c - the conv-act fusion's residual form (runtime/fusions/fuse_f32.c):
 * Conv -> Add(conv, R) [-> Relu/Clip] as one node at the Add's place, R
 * added to each finished block of the convolution before the clamp
 * (nbl_act.res), or by the Add op when R broadcasts.
 *
 * Each case runs fused (the default) and unfused (NBL_NO_FUSION=all: Conv,
 * Add and Relu, each checked against ONNX's test data by the conformance
 * suite) at 1 and 2 threads: the outputs must be the same bits (the same
 * float additions: the convolution's sum plus bias, then + R, then the
 * clamp), and match a double-precision loop written here. The profile says
 * which op ran. The convolution paths of nbl_conv_f32_act are covered:
 * 1x1 (AVX-512 tiles, pixel bands at 2 threads), 3x3 Winograd, shifted rows
 * (stride 2), depthwise, grouped (im2col and BLAS), and 1-D. */
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

static uint32_t rng = 9191;

enum { R_SHORTCUT, R_LATER_CONV, R_BCAST, R_INIT };

typedef struct rcase {
  const char *what;
  int ns;                   /* spatial dims: 1 or 2 */
  int64_t C, H, W, M, K, s, pad, group;
  int bias;
  int rsrc;                 /* R: the block input x (C == M, stride 1), a 1x1 conv of x made
                             * after the main conv, a [1, M, 1, 1] tensor (broadcast), or a
                             * constant of the output's shape */
  int swap;                 /* Add(R, conv) */
  int act;                  /* 0 none, 1 Relu */
  int conv_out_kept;        /* the conv output is a graph output too: no residual fusion */
  const char *expect;       /* the op the fused session runs */
} rcase;

static int64_t out_dim(int64_t in, const rcase *c) { return (in + 2 * c->pad - c->K) / c->s + 1; }

/* Builds and runs the case; the graph output y (malloc'ed, *n elements) and
 * the profile text (malloc'ed). */
static float *run(const rcase *c, const float *x, const float *w, const float *b, const float *w2,
                  const float *rc, int threads, int fused, size_t *n, char **prof) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int rank = 2 + c->ns;
  int64_t OH = c->ns == 2 ? out_dim(c->H, c) : 1, OW = out_dim(c->W, c);
  int64_t dx[4] = {1, c->C, c->H, c->W}, dw[4] = {c->M, c->C / c->group, c->K, c->K};
  int64_t dw2[4] = {c->M, c->C, 1, 1}, db[1] = {c->M}, dr[4] = {1, c->M, OH, OW};
  if (c->ns == 1) dx[2] = c->W, dw[2] = c->K, dw2[2] = 1, dr[2] = OW;
  int64_t dbc[4] = {1, c->M, 1, 1};
  nbl_id vx = nbl_graph_add_value(g, "x"), vw = nbl_graph_add_value(g, "w");
  nbl_id vb = nbl_graph_add_value(g, "b"), vc = nbl_graph_add_value(g, "c");
  nbl_id vr = nbl_graph_add_value(g, "r"), vs = nbl_graph_add_value(g, "s");
  nbl_id vy = nbl_graph_add_value(g, "y"), vw2 = nbl_graph_add_value(g, "w2");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, rank, dx);
  nbl_graph_add_input(g, vx);
  nbl_graph_set_initializer(g, vw, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, rank, dw, w));
  if (c->bias) nbl_graph_set_initializer(g, vb, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, db, b));
  nbl_id cin[3] = {vx, vw, vb};
  nbl_id cn = nbl_graph_add_node(g, "Conv", "", "conv", c->bias ? 3 : 2, cin, 1, &vc);
  int64_t st[2] = {c->s, c->s}, pd[4] = {c->pad, c->pad, c->pad, c->pad};
  nbl_node_set_attr_ints(g, cn, "strides", c->ns, st);
  nbl_node_set_attr_ints(g, cn, "pads", 2 * c->ns, pd);
  nbl_node_set_attr_int(g, cn, "group", c->group);
  nbl_id rv = vx;
  if (c->rsrc == R_LATER_CONV) { /* added after the main conv: later in the order */
    nbl_graph_set_initializer(g, vw2, nbl_tensor_new(m->arena, "w2", NBL_DT_FLOAT, rank, dw2, w2));
    nbl_id in2[2] = {vx, vw2};
    nbl_graph_add_node(g, "Conv", "", "shortcut", 2, in2, 1, &vr);
    rv = vr;
  } else if (c->rsrc == R_BCAST) {
    nbl_graph_set_initializer(g, vr, nbl_tensor_new(m->arena, "r", NBL_DT_FLOAT, 4, dbc, rc));
    rv = vr;
  } else if (c->rsrc == R_INIT) {
    nbl_graph_set_initializer(g, vr, nbl_tensor_new(m->arena, "r", NBL_DT_FLOAT, rank, dr, rc));
    rv = vr;
  }
  nbl_id ain[2] = {c->swap ? rv : vc, c->swap ? vc : rv};
  nbl_graph_add_node(g, "Add", "", "add", 2, ain, 1, c->act ? &vs : &vy);
  if (c->act == 1) {
    nbl_graph_add_node(g, "Relu", "", "relu", 1, &vs, 1, &vy);
  }
  nbl_graph_add_output(g, vy);
  if (c->conv_out_kept) nbl_graph_add_output(g, vc);
  ck_assert_msg(nbl_graph_verify(g, "test") == NBL_OK, "%s: %s", c->what, nbl_last_error());
  if (!fused) setenv("NBL_NO_FUSION", "all", 1);
  nbl_session_options opt = {.threads = threads, .profile = 1};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s: %s", c->what, nbl_last_error());
  unsetenv("NBL_NO_FUSION");
  nbl_host_tensor feed = {.name = "x", .dtype = NBL_DT_FLOAT, .rank = rank, .data = (void *)x,
                          .nbytes = sizeof(float) * (size_t)(c->C * (c->ns == 2 ? c->H : 1) * c->W)};
  memcpy(feed.dims, dx, sizeof dx);
  float *out = NULL;
  for (int run = 0; run < 2; run++) { /* the second run on the planned arena */
    const nbl_host_tensor *res = NULL;
    ck_assert_msg(nbl_session_run(s, 1, &feed, &res) == NBL_OK, "%s: %s", c->what, nbl_last_error());
    if (!run) {
      *n = res[0].nbytes / sizeof(float);
      out = malloc(res[0].nbytes);
      memcpy(out, res[0].data, res[0].nbytes);
    } else {
      ck_assert_msg(memcmp(out, res[0].data, res[0].nbytes) == 0, "%s: run 2 differs", c->what);
    }
  }
  *prof = ft_profile(s);
  nbl_session_free(s);
  nbl_model_free(m);
  return out;
}

static void check(const rcase *c) {
  int64_t H = c->ns == 2 ? c->H : 1, KH = c->ns == 2 ? c->K : 1;
  int64_t OH = c->ns == 2 ? out_dim(c->H, c) : 1, OW = out_dim(c->W, c), Cg = c->C / c->group;
  int64_t nx = c->C * H * c->W, nw = c->M * Cg * KH * c->K, ny = c->M * OH * OW;
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw);
  float *w2 = malloc(sizeof(float) * (size_t)(c->M * c->C)), *rc = malloc(sizeof(float) * (size_t)ny);
  float b[64];
  for (int64_t i = 0; i < nx; i++) x[i] = td_lcg_float(&rng);
  for (int64_t i = 0; i < nw; i++) w[i] = td_lcg_float(&rng);
  for (int64_t i = 0; i < c->M * c->C; i++) w2[i] = td_lcg_float(&rng);
  for (int64_t i = 0; i < ny; i++) rc[i] = td_lcg_float(&rng);
  for (int i = 0; i < 64; i++) b[i] = td_lcg_float(&rng);
  for (int t = 1; t <= 2; t++) {
    size_t nf, nu;
    char *pf = NULL, *pu = NULL;
    float *yf = run(c, x, w, b, w2, rc, t, 1, &nf, &pf);
    float *yu = run(c, x, w, b, w2, rc, t, 0, &nu, &pu);
    char want[64];
    snprintf(want, sizeof want, "\n%s ", c->expect);
    ck_assert_msg(strstr(pf, want) != NULL, "%s: no '%s' step in\n%s", c->what, c->expect, pf);
    ck_assert_msg(strstr(pu, "\nAdd ") != NULL, "%s: unfused runs Add", c->what);
    ck_assert_uint_eq(nf, (size_t)ny);
    ck_assert_uint_eq(nu, nf);
    for (size_t i = 0; i < nf; i++)
      ck_elem_msg(memcmp(&yf[i], &yu[i], sizeof(float)) == 0,
                  "%s, %d thread(s): y[%zu] fused %.9g unfused %.9g", c->what, t, i, yf[i], yu[i]);
    /* a double loop */
    int64_t Mg = c->M / c->group;
    for (int64_t mm = 0; mm < c->M; mm++)
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          double acc = c->bias ? b[mm] : 0.0, mag = fabs(acc);
          int64_t gr = mm / Mg;
          for (int64_t cc = 0; cc < Cg; cc++)
            for (int64_t kh = 0; kh < KH; kh++)
              for (int64_t kw = 0; kw < c->K; kw++) {
                int64_t ih = c->ns == 2 ? oh * c->s - c->pad + kh : 0, iw = ow * c->s - c->pad + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= c->W) continue;
                double p = (double)x[((gr * Cg + cc) * H + ih) * c->W + iw] *
                           w[((mm * Cg + cc) * KH + kh) * c->K + kw];
                acc += p;
                mag += fabs(p);
              }
          int64_t o = (mm * OH + oh) * OW + ow;
          double r;
          if (c->rsrc == R_SHORTCUT) r = x[o];
          else if (c->rsrc == R_BCAST) r = rc[mm];
          else if (c->rsrc == R_INIT) r = rc[o];
          else {
            r = 0.0;
            for (int64_t cc = 0; cc < c->C; cc++) {
              double p = (double)x[(cc * H + oh) * c->W + ow] * w2[mm * c->C + cc];
              r += p;
              mag += fabs(p);
            }
          }
          acc += r;
          mag += fabs(r);
          if (c->act == 1) acc = acc < 0 ? 0 : acc;
          ck_elem_msg(fabs(yf[o] - acc) <= 1e-5 * (1 + mag), "%s: y[%lld] %.9g, want %.9g", c->what,
                      (long long)o, yf[o], acc);
        }
    free(yf);
    free(yu);
    free(pf);
    free(pu);
  }
  free(x);
  free(w);
  free(w2);
  free(rc);
}

START_TEST(test_residual_paths) {
  static const rcase cases[] = {
      {"3x3 Winograd, shortcut, Relu", 2, 16, 12, 12, 16, 3, 1, 1, 1, 1, R_SHORTCUT, 0, 1, 0,
       "Conv+Add+Relu"},
      {"1x1 tiles, shortcut second in the Add, Relu", 2, 24, 20, 20, 24, 1, 1, 0, 1, 1, R_SHORTCUT, 1, 1,
       0, "Conv+Add+Relu"},
      {"1x1 without bias, no activation (MobileNetV2's projection)", 2, 8, 9, 7, 8, 1, 1, 0, 1, 0,
       R_SHORTCUT, 0, 0, 0, "Conv+Add"},
      {"3x3 stride 2 (shifted rows), R a constant, Relu", 2, 8, 15, 15, 12, 3, 2, 1, 1, 1,
       R_INIT, 0, 1, 0, "Conv+Add+Relu"},
      {"1x1, R a conv later in the order", 2, 6, 10, 10, 8, 1, 1, 0, 1, 1, R_LATER_CONV, 0, 1, 0,
       "Conv+Add+Relu"},
      {"depthwise 3x3", 2, 16, 10, 10, 16, 3, 1, 1, 16, 1, R_SHORTCUT, 0, 1, 0, "Conv+Add+Relu"},
      {"grouped 3x3 (BLAS)", 2, 8, 9, 9, 8, 3, 1, 1, 2, 1, R_SHORTCUT, 1, 1, 0, "Conv+Add+Relu"},
      {"1-D", 1, 6, 1, 40, 6, 3, 1, 1, 1, 1, R_SHORTCUT, 0, 1, 0, "Conv+Add+Relu"},
      {"R broadcast [1, M, 1, 1]: the Add op after the conv", 2, 4, 8, 8, 6, 3, 1, 1, 1, 1, R_BCAST, 0,
       1, 0, "Conv+Add+Relu"},
      {"the conv output kept: Conv alone, Add and Relu unfused", 2, 8, 8, 8, 8, 3, 1, 1, 1, 1,
       R_SHORTCUT, 0, 1, 1, "Conv"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check(&cases[i]);
}
END_TEST

int main(void) {
  Suite *s = suite_create("fuse_residual");
  TCase *tc = tcase_create("all");
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_residual_paths);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int nf = srunner_ntests_failed(r);
  srunner_free(r);
  return nf ? 1 : 0;
}
