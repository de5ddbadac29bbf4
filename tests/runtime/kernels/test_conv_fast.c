/* test_conv_fast.c - FP32 conv fast paths that only run inside a session with
 * constant weights (Winograd F(2x2,3x3) with its per-node weight cache) and
 * the depthwise / MaxPool / Relu-Clip fast kernels, against a naive double
 * loop written here, on the fast path at 1 and 2 threads, each session run
 * twice (second run: cached weights, planned arena). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "ir/ir.h"
#include "runtime/core/cpu.h"
#include "runtime/core/exec.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/kdebug.h"
#include "test_data.h"
#include "one_node.h"
#include "ck_elem.h"

static uint32_t rng = 777;
static float frand(void) { return td_lcg_float(&rng); }

typedef struct ccase {
  int64_t N, C, H, W, M, K, group, s, pt, pl, pb, pr;
  int bias, weights_input; /* weights_input: W is a graph input (no cache) */
} ccase;

static float *g_kept; /* check_conv: a copy of the last first-run output */
static size_t g_kept_n;

/* Conv (W, B initializers unless weights_input) -> out; y = naive result. */
static void check_conv(const ccase *c, int threads) {
  int64_t Cg = c->C / c->group;
  int64_t OH = (c->H + c->pt + c->pb - c->K) / c->s + 1, OW = (c->W + c->pl + c->pr - c->K) / c->s + 1;
  int64_t nx = c->N * c->C * c->H * c->W, nw = c->M * Cg * c->K * c->K;
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw);
  float *b = malloc(sizeof(float) * (size_t)c->M);
  for (int64_t i = 0; i < nx; i++) x[i] = frand();
  for (int64_t i = 0; i < nw; i++) w[i] = frand();
  for (int64_t i = 0; i < c->M; i++) b[i] = frand();
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t dx[4] = {c->N, c->C, c->H, c->W}, dw[4] = {c->M, Cg, c->K, c->K}, db[1] = {c->M};
  nbl_id vx = nbl_graph_add_value(g, "x"), vw = nbl_graph_add_value(g, "w");
  nbl_id vb = nbl_graph_add_value(g, "b"), vy = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, 4, dx);
  nbl_graph_add_input(g, vx);
  nbl_host_tensor feeds[2];
  memset(feeds, 0, sizeof feeds);
  feeds[0] = (nbl_host_tensor){.name = "x", .dtype = NBL_DT_FLOAT, .rank = 4, .data = x,
                               .nbytes = sizeof(float) * (size_t)nx};
  memcpy(feeds[0].dims, dx, sizeof dx);
  int nf = 1;
  if (c->weights_input) {
    nbl_type_set_tensor(m->arena, &g->values[vw].type, NBL_DT_FLOAT, 4, dw);
    nbl_graph_add_input(g, vw);
    feeds[1] = (nbl_host_tensor){.name = "w", .dtype = NBL_DT_FLOAT, .rank = 4, .data = w,
                                 .nbytes = sizeof(float) * (size_t)nw};
    memcpy(feeds[1].dims, dw, sizeof dw);
    nf = 2;
  } else {
    nbl_graph_set_initializer(g, vw, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 4, dw, w));
  }
  nbl_graph_set_initializer(g, vb, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, db, b));
  nbl_id ins[3] = {vx, vw, vb};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "conv", c->bias ? 3 : 2, ins, 1, &vy);
  int64_t st[2] = {c->s, c->s}, pd[4] = {c->pt, c->pl, c->pb, c->pr};
  nbl_node_set_attr_ints(g, n, "strides", 2, st);
  nbl_node_set_attr_ints(g, n, "pads", 4, pd);
  nbl_node_set_attr_int(g, n, "group", c->group);
  nbl_graph_add_output(g, vy);
  nbl_session_options opt = {threads, 0, NULL, NULL};
  nbl_session *s = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &s) == NBL_OK, "%s", nbl_last_error());
  int64_t Mg = c->M / c->group;
  for (int run = 0; run < 2; run++) {
    const nbl_host_tensor *res = NULL;
    ck_assert_msg(nbl_session_run(s, nf, feeds, &res) == NBL_OK, "%s", nbl_last_error());
    ck_assert_int_eq(res[0].dims[2], OH);
    ck_assert_int_eq(res[0].dims[3], OW);
    const float *y = res[0].data;
    if (run == 0) {
      free(g_kept);
      g_kept_n = res[0].nbytes / sizeof(float);
      g_kept = malloc(res[0].nbytes);
      memcpy(g_kept, y, res[0].nbytes);
    }
    for (int64_t nn = 0; nn < c->N; nn++)
      for (int64_t mm = 0; mm < c->M; mm++)
        for (int64_t oh = 0; oh < OH; oh++)
          for (int64_t ow = 0; ow < OW; ow++) {
            double acc = c->bias ? b[mm] : 0.0, mag = fabs(acc);
            int64_t gr = mm / Mg;
            for (int64_t cc = 0; cc < Cg; cc++)
              for (int64_t kh = 0; kh < c->K; kh++)
                for (int64_t kw = 0; kw < c->K; kw++) {
                  int64_t ih = oh * c->s - c->pt + kh, iw = ow * c->s - c->pl + kw;
                  if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                  double p = (double)x[((nn * c->C + gr * Cg + cc) * c->H + ih) * c->W + iw] *
                             w[((mm * Cg + cc) * c->K + kh) * c->K + kw];
                  acc += p;
                  mag += fabs(p);
                }
            float got = y[((nn * c->M + mm) * OH + oh) * OW + ow];
            ck_elem_msg(fabs(got - acc) <= 1e-5 * (1 + mag),
                        "C=%lld M=%lld H=%lld W=%lld run %d threads %d: y[%lld,%lld,%lld,%lld] "
                        "%g vs %g",
                        (long long)c->C, (long long)c->M, (long long)c->H, (long long)c->W, run,
                        threads, (long long)nn, (long long)mm, (long long)oh, (long long)ow,
                        got, acc);
          }
  }
  nbl_session_free(s);
  nbl_model_free(m);
  free(x);
  free(w);
  free(b);
}

/* Dilated convolutions and those with windows mostly in the padding (the
 * per-tap products of conv_taps.c where they qualify, else the other
 * paths), 1-D and 2-D, against a naive double loop: spatial dims in[],
 * kernel k[], stride s[], dilation d[], pads pb[] / pe[]; weights constant
 * (kept transposed in the node's cache: the second run reads them) or a
 * graph input. Tolerance as check_conv's: 1e-5 of the sum of |products|
 * (float sums in another order). */
typedef struct dcase {
  int ns;
  int64_t N, C, M, in[2], k[2], s[2], d[2], pb[2], pe[2];
  int bias, weights_input;
} dcase;

static void check_dilated(const dcase *c, int threads) {
  const int ns = c->ns;
  int64_t out[2] = {1, 1}, in[2] = {1, 1}, k[2] = {1, 1}, s[2] = {1, 1}, d[2] = {1, 1}, pb[2] = {0, 0};
  for (int i = 0; i < ns; i++) {
    in[2 - ns + i] = c->in[i], k[2 - ns + i] = c->k[i], s[2 - ns + i] = c->s[i], d[2 - ns + i] = c->d[i];
    pb[2 - ns + i] = c->pb[i];
    out[2 - ns + i] = (c->in[i] + c->pb[i] + c->pe[i] - (c->k[i] - 1) * c->d[i] - 1) / c->s[i] + 1;
  }
  const int64_t isz = in[0] * in[1], osz = out[0] * out[1], ksz = k[0] * k[1];
  const int64_t nx = c->N * c->C * isz, nw = c->M * c->C * ksz;
  float *x = malloc(sizeof(float) * (size_t)(nx + 1)), *w = malloc(sizeof(float) * (size_t)nw);
  float *b = malloc(sizeof(float) * (size_t)c->M);
  for (int64_t i = 0; i < nx; i++) x[i] = frand();
  for (int64_t i = 0; i < nw; i++) w[i] = frand();
  for (int64_t i = 0; i < c->M; i++) b[i] = frand();
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t dx[4] = {c->N, c->C, c->in[0], c->in[1]}, dw[4] = {c->M, c->C, c->k[0], c->k[1]}, db[1] = {c->M};
  nbl_id vx = nbl_graph_add_value(g, "x"), vw = nbl_graph_add_value(g, "w");
  nbl_id vb = nbl_graph_add_value(g, "b"), vy = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[vx].type, NBL_DT_FLOAT, 2 + ns, dx);
  nbl_graph_add_input(g, vx);
  nbl_host_tensor feeds[2];
  memset(feeds, 0, sizeof feeds);
  feeds[0] = (nbl_host_tensor){.name = "x", .dtype = NBL_DT_FLOAT, .rank = 2 + ns, .data = x,
                               .nbytes = sizeof(float) * (size_t)nx};
  memcpy(feeds[0].dims, dx, sizeof dx);
  int nf = 1;
  if (c->weights_input) {
    nbl_type_set_tensor(m->arena, &g->values[vw].type, NBL_DT_FLOAT, 2 + ns, dw);
    nbl_graph_add_input(g, vw);
    feeds[1] = (nbl_host_tensor){.name = "w", .dtype = NBL_DT_FLOAT, .rank = 2 + ns, .data = w,
                                 .nbytes = sizeof(float) * (size_t)nw};
    memcpy(feeds[1].dims, dw, sizeof dw);
    nf = 2;
  } else {
    nbl_graph_set_initializer(g, vw, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, 2 + ns, dw, w));
  }
  nbl_graph_set_initializer(g, vb, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, db, b));
  nbl_id ins[3] = {vx, vw, vb};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "conv", c->bias ? 3 : 2, ins, 1, &vy);
  int64_t pd[4] = {c->pb[0], c->pb[1], c->pe[0], c->pe[1]};
  if (ns == 1) pd[1] = c->pe[0];
  nbl_node_set_attr_ints(g, n, "strides", ns, c->s);
  nbl_node_set_attr_ints(g, n, "dilations", ns, c->d);
  nbl_node_set_attr_ints(g, n, "pads", 2 * ns, pd);
  nbl_graph_add_output(g, vy);
  nbl_session_options opt = {threads, 0, NULL, NULL};
  nbl_session *ss = NULL;
  ck_assert_msg(nbl_session_create(m, &opt, &ss) == NBL_OK, "%s", nbl_last_error());
  for (int run = 0; run < 2; run++) {
    const nbl_host_tensor *res = NULL;
    ck_assert_msg(nbl_session_run(ss, nf, feeds, &res) == NBL_OK, "%s", nbl_last_error());
    ck_assert_uint_eq(res[0].nbytes, sizeof(float) * (size_t)(c->N * c->M * osz));
    const float *y = res[0].data;
    for (int64_t nn = 0; nn < c->N; nn++)
      for (int64_t mm = 0; mm < c->M; mm++)
        for (int64_t o = 0; o < osz; o++) {
          const int64_t oh = o / out[1], ow = o % out[1];
          double acc = c->bias ? b[mm] : 0.0, mag = fabs(acc);
          for (int64_t cc = 0; cc < c->C; cc++)
            for (int64_t kh = 0; kh < k[0]; kh++)
              for (int64_t kw = 0; kw < k[1]; kw++) {
                const int64_t ih = oh * s[0] - pb[0] + kh * d[0], iw = ow * s[1] - pb[1] + kw * d[1];
                if (ih < 0 || ih >= in[0] || iw < 0 || iw >= in[1]) continue;
                const double p = (double)x[((nn * c->C + cc) * in[0] + ih) * in[1] + iw] *
                                 w[((mm * c->C + cc) * k[0] + kh) * k[1] + kw];
                acc += p, mag += fabs(p);
              }
          const float got = y[(nn * c->M + mm) * osz + o];
          ck_elem_msg(fabs(got - acc) <= 1e-5 * (1 + mag),
                      "%d-D C=%lld M=%lld dil %lld run %d threads %d: y[%lld,%lld,%lld] %g vs %g", ns,
                      (long long)c->C, (long long)c->M, (long long)c->d[0], run, threads, (long long)nn,
                      (long long)mm, (long long)o, got, acc);
        }
  }
  nbl_session_free(ss);
  nbl_model_free(m);
  free(x), free(w), free(b);
}

START_TEST(test_conv_dilated) {
  static const dcase cases[] = {
      /* deeplabv3's atrous 3x3 (dilation 12, pads 12) at 14x14, smaller */
      {2, 1, 40, 24, {14, 14}, {3, 3}, {1, 1}, {12, 12}, {12, 12}, {12, 12}, 1, 0},
      {2, 2, 17, 9, {14, 13}, {3, 3}, {1, 1}, {12, 12}, {12, 12}, {12, 12}, 1, 1}, /* batch 2, weights input */
      {2, 1, 16, 16, {28, 28}, {3, 3}, {1, 1}, {6, 6}, {6, 6}, {6, 6}, 0, 0},
      {2, 1, 20, 18, {28, 28}, {3, 3}, {1, 1}, {2, 2}, {2, 2}, {2, 2}, 1, 0},
      {2, 1, 16, 8, {11, 9}, {3, 2}, {2, 3}, {2, 4}, {3, 0}, {1, 5}, 1, 0},      /* strides, asymmetric */
      {2, 1, 3, 8, {9, 9}, {3, 3}, {1, 1}, {1, 1}, {9, 9}, {9, 9}, 1, 0},        /* pads beyond the kernel, 3 channels */
      {2, 1, 4, 5, {7, 7}, {3, 3}, {1, 1}, {3, 3}, {3, 3}, {3, 3}, 1, 0},        /* dilated, few channels: im2col */
      {2, 1, 16, 4, {5, 6}, {3, 3}, {1, 1}, {2, 2}, {0, 0}, {0, 0}, 1, 0},       /* 1 x 2 outputs, no padding */
      {2, 0, 16, 4, {9, 9}, {3, 3}, {1, 1}, {4, 4}, {4, 4}, {4, 4}, 1, 0},       /* empty batch */
      {1, 1, 32, 12, {200}, {3}, {1}, {2}, {2}, {2}, 1, 0},                     /* 1-D, dilation 2 */
      {1, 2, 16, 7, {23}, {5}, {2}, {3}, {4}, {7}, 0, 1},                       /* 1-D, strided */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) check_dilated(&cases[i], t);
}
END_TEST

START_TEST(test_winograd) {
  static const ccase cases[] = {
      /* outputs over 64 pixels: smaller ones with constant weights take the
       * direct AVX-512 product where it runs */
      {1, 16, 10, 10, 16, 3, 1, 1, 1, 1, 1, 1, 1, 0}, /* even output */
      {2, 17, 13, 7, 19, 3, 1, 1, 1, 1, 1, 1, 1, 0},  /* odd output, batch 2 */
      {1, 16, 13, 6, 16, 3, 1, 1, 0, 2, 1, 0, 0, 0},  /* asymmetric pads, no bias */
      {1, 32, 70, 3, 24, 3, 1, 1, 0, 0, 0, 0, 1, 0},  /* one output column, no padding */
      {1, 16, 8, 8, 16, 3, 1, 1, 1, 1, 1, 1, 1, 0},   /* 64 pixels: the direct product */
      {1, 16, 6, 6, 16, 3, 1, 1, 1, 1, 1, 1, 1, 1},   /* weights from a graph input */
      {1, 20, 60, 7, 16, 3, 1, 1, 1, 1, 1, 1, 1, 0},  /* tall */
      {1, 16, 26, 25, 16, 3, 1, 1, 1, 1, 1, 1, 1, 0}, /* 169 tiles: bands, odd width */
      {2, 17, 33, 30, 18, 3, 1, 1, 0, 1, 1, 0, 1, 0}, /* bands, batch 2, asymmetric pads */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) check_conv(&cases[i], t);
}
END_TEST

START_TEST(test_conv1x1) {
  static const ccase cases[] = {
      {1, 16, 40, 40, 24, 1, 1, 1, 0, 0, 0, 0, 1, 0},  /* 1600 pixels: bands with 2 threads */
      {1, 96, 7, 7, 44, 1, 1, 1, 0, 0, 0, 0, 1, 0},    /* 49 pixels: channels split */
      {2, 13, 5, 9, 17, 1, 1, 1, 0, 0, 0, 0, 0, 0},    /* batch 2, odd sizes, no bias */
      {1, 3, 33, 31, 5, 1, 1, 1, 0, 0, 0, 0, 1, 0},    /* 1023 pixels, 5 channels */
      {1, 24, 20, 20, 9, 1, 1, 1, 0, 0, 0, 0, 1, 1},   /* weights from a graph input */
      /* im2col products (one group) take the same kernel */
      {1, 3, 64, 66, 16, 7, 1, 2, 3, 3, 3, 3, 1, 0},   /* a first layer: 7x7 stride 2 */
      {1, 8, 30, 30, 20, 3, 1, 2, 1, 1, 1, 1, 1, 0},   /* 3x3 stride 2 */
      {2, 5, 9, 11, 12, 3, 1, 2, 0, 1, 1, 0, 0, 0},    /* batch 2, asymmetric pads */
      {1, 8, 12, 12, 8, 3, 2, 1, 1, 1, 1, 1, 1, 0},    /* two groups: BLAS */
      /* few pixels, large weights: each weight block once over all pixels */
      {1, 300, 7, 7, 121, 1, 1, 1, 0, 0, 0, 0, 1, 0},  /* 1x1 */
      {1, 64, 7, 7, 70, 3, 1, 1, 1, 1, 1, 1, 1, 0},    /* 3x3, 49 pixels (no Winograd) */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) check_conv(&cases[i], t);
}
END_TEST

/* The shifted-rows kernel (conv_shift.c: 2-D, one group, AVX-512; the
 * im2col product elsewhere), weights changing (a graph input: training) or
 * constant, at every layout branch: strides 1, 2 (vector phase packing) and
 * 3 (scalar), 5x5, channel counts off the 8-channel tile, batch 1 and 3
 * (row bands at 2 threads), pads past the kernel's reach (rows whose pads
 * are not shared), rows of several vectors and of over 64 (scalar packing),
 * 1x1 stride 2 (one phase, no junk columns). */
START_TEST(test_shift_rows) {
  static const ccase cases[] = {
      {3, 16, 28, 28, 16, 3, 1, 1, 1, 1, 1, 1, 1, 1},  /* ResNet-8's 16-channel layer, batch 3 */
      {1, 5, 13, 11, 7, 5, 1, 1, 2, 2, 2, 2, 1, 1},    /* 5x5, 7 outputs, batch 1 */
      {2, 16, 15, 15, 32, 3, 1, 2, 1, 1, 1, 1, 0, 1},  /* stride 2, odd input */
      {1, 3, 20, 21, 9, 3, 1, 3, 0, 2, 1, 0, 1, 1},    /* stride 3, asymmetric pads */
      {2, 6, 9, 9, 10, 3, 1, 1, 3, 3, 3, 3, 1, 1},     /* pads 3 with a 3x3 kernel */
      {1, 4, 3, 70, 12, 3, 1, 1, 1, 1, 1, 1, 1, 0},    /* wide rows, constant weights */
      {4, 8, 14, 14, 20, 1, 1, 2, 0, 0, 0, 0, 1, 1},   /* 1x1 stride 2 */
      {1, 2, 2, 1030, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},   /* rows of 1032 columns */
      {2, 9, 7, 7, 64, 3, 1, 2, 1, 1, 1, 1, 1, 1},     /* 4x4 output, 64 channels */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) check_conv(&cases[i], t);
}
END_TEST

START_TEST(test_depthwise) {
  static const ccase cases[] = {
      {1, 8, 9, 11, 8, 3, 8, 1, 1, 1, 1, 1, 1, 0},   /* stride 1 */
      {2, 8, 9, 11, 8, 3, 8, 2, 1, 1, 1, 1, 1, 0},   /* stride 2, odd sizes */
      {1, 4, 12, 12, 8, 3, 4, 2, 0, 1, 1, 0, 1, 0},  /* multiplier 2, asymmetric pads */
      {1, 4, 13, 10, 4, 5, 4, 3, 2, 2, 2, 2, 0, 0},  /* 5x5, stride 3 */
      {1, 16, 20, 20, 16, 3, 16, 1, 1, 1, 1, 1, 1, 0}, /* rows wider than 8 lanes */
      {1, 8, 33, 37, 8, 3, 8, 2, 1, 1, 1, 1, 1, 0},  /* stride 2, rows of 16+ columns */
      {1, 4, 34, 40, 4, 3, 4, 2, 0, 0, 1, 1, 0, 0},  /* stride 2, no left pad */
      {1, 4, 20, 35, 8, 3, 4, 2, 1, 2, 0, 1, 1, 0},  /* stride 2, even left pad, mult 2 */
      /* 784+ output pixels: with 2 threads, bands of rows of every plane */
      {1, 6, 60, 61, 6, 3, 6, 1, 1, 1, 1, 1, 1, 0},  /* stride 1 */
      {1, 4, 64, 70, 8, 3, 4, 2, 1, 1, 1, 1, 1, 0},  /* stride 2, multiplier 2 */
      {2, 3, 57, 57, 3, 5, 3, 1, 2, 2, 2, 2, 0, 0},  /* 5x5, batch 2 */
      {1, 2, 29, 500, 2, 3, 2, 1, 1, 1, 1, 1, 1, 0}, /* few rows per band */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) check_conv(&cases[i], t);
}
END_TEST


/* Depthwise 16 channels at a time (small planes, AVX-512): against the
 * naive loop, and bit-identical to the plane kernel (same expression per
 * output), at 1 and 2 threads; channel counts off the block of 16. */
START_TEST(test_depthwise_blocked) {
  static const ccase cases[] = {
      {1, 32, 14, 14, 32, 3, 32, 1, 1, 1, 1, 1, 1, 0},
      {1, 20, 9, 11, 20, 3, 20, 2, 1, 1, 1, 1, 1, 0}, /* stride 2, 4 channels past 16 */
      {2, 33, 7, 7, 33, 3, 33, 1, 1, 1, 1, 1, 0, 0},  /* two images, no bias */
      {1, 16, 13, 10, 16, 5, 16, 3, 2, 2, 2, 2, 1, 0}, /* 5x5, stride 3 */
      {1, 18, 10, 9, 18, 3, 18, 2, 0, 1, 2, 0, 1, 0}, /* uneven pads */
      {1, 48, 14, 14, 48, 3, 48, 1, 1, 1, 1, 1, 1, 1}, /* weights as an input */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) {
      uint32_t seed = rng; /* the same data both ways */
      nbl_kernel_stats s0, s1;
      nbl_kernel_stats_get(&s0);
      nbl_kdebug_set(NBL_KS_F32_DW_BLOCKED, 1);
      check_conv(&cases[i], t);
      /* two runs of the session; AVX-512 only */
      nbl_kernel_stats_get(&s1);
      ck_assert_int_eq(s1.n[NBL_KC_F32_DW_BLOCKED_RUNS] - s0.n[NBL_KC_F32_DW_BLOCKED_RUNS],
                       nbl_cpu_has(NBL_CPU_AVX512F) ? 2 : 0);
      size_t n = g_kept_n;
      float *blocked = g_kept;
      g_kept = NULL;
      rng = seed;
      nbl_kdebug_set(NBL_KS_F32_DW_BLOCKED, 0);
      check_conv(&cases[i], t);
      nbl_kdebug_set(NBL_KS_F32_DW_BLOCKED, -1);
      ck_assert_uint_eq(n, g_kept_n);
      for (size_t k = 0; k < n; k++)
        ck_elem_msg(memcmp(&blocked[k], &g_kept[k], sizeof(float)) == 0,
                    "case %zu, %d thread(s), elem %zu: blocked %.9g plane %.9g", i, t, k,
                    blocked[k], g_kept[k]);
      free(blocked);
    }
  free(g_kept);
  g_kept = NULL;
}
END_TEST

/* Weights changed in place through nbl_engine_state (as a training step does)
 * must reach the next run: the cached Winograd transform is dropped. */
static void state_write_case(int64_t H) {
  enum { C = 16, HM = 10 };
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  int64_t xd[] = {1, C, H, H}, wd[] = {C, C, 3, 3};
  static float w[C * C * 9], x[C * HM * HM];
  for (int i = 0; i < C * C * 9; i++) w[i] = (float)((i * 7) % 11 - 5) / 8.0f;
  for (int i = 0; i < C * H * H; i++) x[i] = (float)((i * 5) % 13 - 6) / 4.0f;
  nbl_id xv = nbl_graph_add_value(g, "x"), W = nbl_graph_add_value(g, "W"),
         y = nbl_graph_add_value(g, "y");
  nbl_type_set_tensor(m->arena, &g->values[xv].type, NBL_DT_FLOAT, 4, xd);
  nbl_graph_set_initializer(g, W, nbl_tensor_new(m->arena, "W", NBL_DT_FLOAT, 4, wd, w));
  nbl_graph_add_input(g, xv);
  nbl_id in[] = {xv, W};
  nbl_id n = nbl_graph_add_node(g, "Conv", "", "conv", 2, in, 1, &y);
  int64_t pads[] = {1, 1, 1, 1};
  nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  nbl_graph_add_output(g, y);
  nbl_engine *e;
  nbl_engine_options o = {.threads = 1};
  ck_assert_int_eq(nbl_engine_create(m, NULL, &o, &e), NBL_OK);
  nbl_rt_tensor xt = {.dtype = NBL_DT_FLOAT, .rank = 4, .numel = C * H * H, .data = x,
                      .nbytes = sizeof(float) * (size_t)(C * H * H)};
  memcpy(xt.dims, xd, sizeof xd);
  ck_assert_int_eq(nbl_engine_bind(e, "x", &xt), NBL_OK);
  ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
  const nbl_rt_tensor *y0 = nbl_engine_output(e, 0);
  int64_t ny = y0->numel;
  float *first = malloc(sizeof(float) * (size_t)ny);
  memcpy(first, y0->data, sizeof(float) * (size_t)ny);
  for (int step = 2; step <= 3; step++) { /* two in-place writes: the pointer stays the same */
    nbl_rt_tensor *st = nbl_engine_state(e, "W");
    ck_assert_ptr_nonnull(st);
    float *wd2 = st->data;
    for (int i = 0; i < C * C * 9; i++) wd2[i] = w[i] * (float)step;
    ck_assert_msg(nbl_engine_run(e) == NBL_OK, "%s", nbl_last_error());
    const float *y1 = nbl_engine_output(e, 0)->data;
    for (int64_t i = 0; i < ny; i++)
      ck_assert_msg(fabsf(y1[i] - (float)step * first[i]) <= 1e-4f * (1 + fabsf(first[i])),
                    "step %d y[%lld] = %g, want %g", step, (long long)i, y1[i], step * first[i]);
  }
  free(first);
  nbl_engine_free(e);
  nbl_model_free(m);
}

/* 6x6: the cached packed weights of the AVX-512 product (where it runs);
 * 10x10: the cached Winograd transform */
START_TEST(test_state_write_refreshes_cache) {
  state_write_case(6);
  state_write_case(10);
}
END_TEST

/* ------------------------------------------------------------------ 1-D and 3-D layers */

/* Conv of spatial rank ns (X [N, C, sp...], W [M, C/group, k...]) on the
 * fast path (blocks of output lines, im2col and BLAS) at 1 and 2 threads
 * against the reference kernel's double loop, within 2e-6 of the largest
 * output. */
typedef struct ndcase {
  int ns;
  int64_t N, C, M, group, sp[3], k[3], s[3], d[3], pads[6];
  int bias;
} ndcase;

static void check_nd(const ndcase *c) {
  int64_t xd[5] = {c->N, c->C}, wd[5] = {c->M, c->C / c->group}, bd[1] = {c->M};
  int64_t nx = c->N * c->C, nw = c->M * (c->C / c->group);
  for (int i = 0; i < c->ns; i++) xd[2 + i] = c->sp[i], wd[2 + i] = c->k[i], nx *= c->sp[i], nw *= c->k[i];
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw), b[64];
  for (int64_t i = 0; i < nx; i++) x[i] = frand() * 2 - 1;
  for (int64_t i = 0; i < nw; i++) w[i] = frand() * 2 - 1;
  for (int i = 0; i < 64; i++) b[i] = frand();
  float *want = NULL;
  size_t n_out = 0;
  for (int run = 0; run < 3; run++) { /* reference, then fast at 1 and 2 threads */
    one *o = one_new("Conv", 13, c->bias ? 3 : 2, 1);
    nbl_node_set_attr_ints(G(o), o->node, "strides", c->ns, c->s);
    nbl_node_set_attr_ints(G(o), o->node, "dilations", c->ns, c->d);
    nbl_node_set_attr_ints(G(o), o->node, "pads", 2 * c->ns, c->pads);
    nbl_node_set_attr_int(G(o), o->node, "group", c->group);
    one_in(o, 0, NBL_DT_FLOAT, 2 + c->ns, xd, x);
    one_in(o, 1, NBL_DT_FLOAT, 2 + c->ns, wd, w);
    if (c->bias) one_in(o, 2, NBL_DT_FLOAT, 1, bd, b);
    o->threads = run == 2 ? 2 : 1;
    ck_assert_msg(one_run(o, run == 0) == NBL_OK, "%s", nbl_last_error());
    const nbl_host_tensor *y = &o->out[0];
    if (run == 0) {
      n_out = y->nbytes / sizeof(float);
      want = malloc(y->nbytes);
      memcpy(want, y->data, y->nbytes);
    } else {
      ck_assert_uint_eq(y->nbytes, n_out * sizeof(float));
      double mx = 0, err = 0;
      for (size_t i = 0; i < n_out; i++) {
        mx = fmax(mx, fabs(want[i]));
        err = fmax(err, fabs((double)want[i] - ((const float *)y->data)[i]));
      }
      ck_assert_msg(err <= 2e-6 * mx, "ns %d C %lld M %lld group %lld run %d: error %g of max %g", c->ns,
                    (long long)c->C, (long long)c->M, (long long)c->group, run, err, mx);
    }
    one_free(o);
  }
  free(want);
  free(x);
  free(w);
}

START_TEST(test_conv_nd) {
  const ndcase cases[] = {
      /* 3-D, K = 64 * 27 = 1728 and 24 columns a line: blocks of 25 of the 192 lines, the last one short */
      {3, 1, 64, 8, 1, {8, 24, 24}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1, 1, 1, 1}, 1},
      /* 3-D, two images, groups, strides, dilation, asymmetric pads */
      {3, 2, 8, 12, 2, {6, 20, 21}, {3, 3, 2}, {1, 2, 1}, {1, 1, 2}, {1, 1, 0, 0, 1, 1}, 1},
      /* 3-D, depth stride 2, a kernel reaching past every pad */
      {3, 1, 3, 5, 1, {5, 7, 9}, {2, 5, 3}, {2, 1, 3}, {1, 1, 1}, {0, 2, 1, 1, 2, 0}, 0},
      /* 1-D: groups, stride 3, dilation 2, pads */
      {1, 2, 6, 4, 2, {100}, {5}, {3}, {2}, {2, 4}, 1},
      /* 1-D, long: blocks of one line (a line is the whole output) */
      {1, 1, 64, 16, 1, {5000}, {3}, {1}, {1}, {1, 1}, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_nd(&cases[i]);
}
END_TEST

/* K blocking of the AVX-512 FP32 product (nbl_c11_blocked: each tile's rows
 * packed into a panel, K in blocks of 128, partial sums kept between
 * blocks) on every path that takes it: 1x1 layers (pixel tiles, and bands
 * at 2 threads), the shifted rows (strides 1 and 2, small and large
 * weights), Winograd's products, and few-pixel layers whose weights are
 * read once (the im2col product, K blocks outside the pixel tiles). K a
 * multiple of 128 and not, channel counts off the 8-channel tile, weights constant or an input,
 * at 1 and 2 threads: against the naive loop, bitwise the outputs of one
 * pass over the whole K (the same sums in the same order), and with
 * blocking forced on a K of one block. */
START_TEST(test_conv_kblock) {
  static const ccase cases[] = {
      {1, 200, 20, 20, 20, 1, 1, 1, 0, 0, 0, 0, 1, 0}, /* 1x1, K 200 = 128 + 72 */
      {2, 300, 9, 9, 13, 1, 1, 1, 0, 0, 0, 0, 1, 1},   /* 1x1, K 300, weights an input, 2 images */
      {1, 256, 6, 50, 17, 1, 1, 1, 0, 0, 0, 0, 0, 0},  /* 1x1, K 256: two whole blocks */
      {1, 40, 17, 17, 19, 3, 1, 2, 1, 1, 1, 1, 1, 0},  /* shifted rows, stride 2, K 360 */
      {2, 32, 14, 14, 24, 3, 1, 1, 1, 1, 1, 1, 1, 1},  /* shifted rows, stride 1, K 288 */
      {1, 20, 21, 21, 9, 1, 1, 1, 0, 0, 0, 0, 1, 0},   /* K 20: blocked only when forced */
      {1, 160, 12, 12, 40, 3, 1, 1, 1, 1, 1, 1, 1, 0}, /* Winograd's products, K 160 */
      {1, 64, 40, 40, 250, 3, 1, 2, 1, 1, 1, 1, 1, 0}, /* shifted rows, 144,000 weights, K 576 */
      /* few pixels, large weights: K blocks outside, the pixel tiles inside */
      {1, 300, 7, 7, 121, 1, 1, 1, 0, 0, 0, 0, 1, 0},  /* 1x1, 49 pixels, K 300 */
      {2, 64, 9, 9, 250, 3, 1, 1, 1, 1, 1, 1, 1, 1},   /* im2col, 81 pixels, K 576, weights an input */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) {
      uint32_t seed = rng; /* the same data every way */
      nbl_kdebug_set(NBL_KS_F32_KBLOCK_MIN, (long long)1 << 40); /* never */
      check_conv(&cases[i], t);
      size_t n = g_kept_n;
      float *whole = g_kept;
      g_kept = NULL;
      for (int way = 0; way < 2; way++) {
        nbl_kernel_stats s0, s1;
        nbl_kernel_stats_get(&s0);
        rng = seed;
        if (way) nbl_kdebug_set(NBL_KS_F32_KBLOCK_MIN, 1); /* always */
        else nbl_kdebug_reset();                          /* the default */
        check_conv(&cases[i], t);
        nbl_kernel_stats_get(&s1);
        long runs = s1.n[NBL_KC_F32_KBLOCK_RUNS] - s0.n[NBL_KC_F32_KBLOCK_RUNS];
        int expect = nbl_cpu_has(NBL_CPU_AVX512F) && (way || i != 5);
        ck_assert_msg(expect ? runs > 0 : runs == 0, "case %zu way %d: %ld blocked runs", i, way,
                      runs);
        ck_assert_uint_eq(n, g_kept_n);
        for (size_t k = 0; k < n; k++)
          ck_assert_msg(memcmp(&whole[k], &g_kept[k], sizeof(float)) == 0,
                        "case %zu, %d thread(s), way %d, elem %zu: blocked %.9g whole %.9g", i, t,
                        way, k, g_kept[k], whole[k]);
      }
      free(whole);
      nbl_kdebug_reset();
    }
  free(g_kept);
  g_kept = NULL;
}
END_TEST

/* Grouped layers (2-D, AVX-512): each group through the shifted rows with
 * the groups' weights packed together (conv_im2col.c grouped_shift):
 * RegNet's 16-channel groups at strides 1 and 2, groups whose output
 * channels are off the 8-channel tile, 1x1 groups (ShuffleNet), two
 * images, weights from a graph input, at 1 and 2 threads, against the
 * naive loop; a group's weights past the limit take im2col and BLAS. */
START_TEST(test_conv_grouped) {
  static const ccase cases[] = {
      {1, 64, 14, 14, 64, 3, 4, 1, 1, 1, 1, 1, 1, 0},  /* 16 channels a group */
      {1, 64, 15, 15, 64, 3, 4, 2, 1, 1, 1, 1, 1, 0},  /* stride 2 */
      {2, 36, 9, 11, 24, 3, 3, 1, 1, 0, 0, 1, 0, 1},   /* 8 out of 12 in a group, 2 images, no bias,
                                                        * asymmetric pads, weights an input */
      {1, 30, 8, 8, 30, 3, 3, 1, 1, 1, 1, 1, 1, 0},    /* 10 out a group: off the tile */
      {1, 24, 10, 10, 48, 1, 3, 1, 0, 0, 0, 0, 1, 0},  /* 1x1 groups */
      {1, 64, 7, 7, 600, 3, 2, 1, 1, 1, 1, 1, 1, 0},   /* 300 x 32 x 9 per group: BLAS */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int t = 1; t <= 2; t++) check_conv(&cases[i], t);
}
END_TEST

int main(void) {
  Suite *s = suite_create("conv_fast");
  TCase *tc = tcase_create("all");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_winograd);
  tcase_add_test(tc, test_conv_dilated);
  tcase_add_test(tc, test_depthwise);
  tcase_add_test(tc, test_depthwise_blocked);
  tcase_add_test(tc, test_conv1x1);
  tcase_add_test(tc, test_shift_rows);
  tcase_add_test(tc, test_state_write_refreshes_cache);
  tcase_add_test(tc, test_conv_nd);
  tcase_add_test(tc, test_conv_kblock);
  tcase_add_test(tc, test_conv_grouped);
  suite_add_tcase(s, tc);
  SRunner *r = srunner_create(s);
  srunner_run_all(r, CK_NORMAL);
  int nf = srunner_ntests_failed(r);
  srunner_free(r);
  return nf ? 1 : 0;
}
