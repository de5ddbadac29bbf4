/* test_ops_misc.c - misc kernels (recurrent layers, signal, detection,
 * GridSample, RoiAlign, Det, TfIdfVectorizer) run through one-node graphs,
 * checked against hand-computed values (or a NumPy transcription of the ONNX
 * equations, noted where used), plus edge cases and bad-input errors. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "one_node.h"
#include "test_data.h"

/* ------------------------------------------------------------------ helpers */

/* Run one node (one_node.h) on the reference kernels, or on the fast ones
 * with two threads when use_ref is 0; want[i] == 0 leaves output i unrequested. */
static int use_ref = 1; /* 1: reference kernels, 0: fast kernels where they exist */

static nbl_status run_node(const char *op, int opset, one_attr_fn af, int n_in, const nbl_host_tensor *ins,
                           int n_out, const int *want, nbl_host_tensor *outs) {
  return one_call(op, opset, af, n_in, ins, n_out, want, outs, use_ref, use_ref ? 1 : 2);
}

static nbl_host_tensor run1(const char *op, int opset, one_attr_fn af, int n_in, const nbl_host_tensor *ins) {
  nbl_host_tensor o;
  nbl_status st = run_node(op, opset, af, n_in, ins, 1, NULL, &o);
  ck_assert_msg(st == NBL_OK, "%s: %s", op, nbl_last_error());
  return o;
}

static void expect_f32(const nbl_host_tensor *o, int rank, const int64_t *dims, const float *want, int64_t n,
                       double tol) {
  ck_assert_int_eq(o->dtype, NBL_DT_FLOAT);
  ck_assert_int_eq(o->rank, rank);
  for (int i = 0; i < rank; i++) ck_assert_int_eq(o->dims[i], dims[i]);
  ck_assert_uint_eq(o->nbytes, (size_t)n * 4);
  const float *g = o->data;
  for (int64_t i = 0; i < n; i++) {
    if (isnan(want[i])) ck_assert_msg(isnan(g[i]), "elem %lld: got %g, want NaN", (long long)i, g[i]);
    else ck_assert_msg(fabs(g[i] - want[i]) <= tol * (1 + fabs(want[i])), "elem %lld: got %.8g, want %.8g",
                       (long long)i, g[i], want[i]);
  }
}

static void set_strings(nbl_graph *g, nbl_id n, const char *name, int count, const char *const *v) {
  nbl_attr *a = nbl_node_add_attr(g, n, name, NBL_ATTR_STRINGS);
  a->n = count;
  a->strings = nbl_arena_alloc(g->model->arena, sizeof(char *) * (size_t)count);
  a->string_lens = nbl_arena_alloc(g->model->arena, sizeof(size_t) * (size_t)count);
  for (int i = 0; i < count; i++) {
    a->strings[i] = nbl_arena_strdup(g->model->arena, v[i]);
    a->string_lens[i] = strlen(v[i]);
  }
}

/* ------------------------------------------------------------------ recurrent */

static void a_hidden2(nbl_graph *g, nbl_id n) { nbl_node_set_attr_int(g, n, "hidden_size", 2); }

/* One LSTM step with bias, initial states and peepholes. Expected values from a
 * NumPy transcription of the ONNX LSTM equations. */
START_TEST(test_lstm_one_step) {
  float W[8] = {0.5f, -0.3f, 0.2f, 0.1f, 0.4f, -0.6f, 0.7f, 0.25f};
  float R[16] = {0.1f, 0.2f, -0.1f, 0.3f, 0.05f, -0.2f, 0.15f, 0.1f, -0.3f, 0.2f, 0.1f, 0.1f, 0.2f, -0.1f, 0.3f, 0.05f};
  float B[16] = {0.1f, 0, 0, 0.2f, -0.1f, 0, 0.05f, 0, 0, 0.1f, 0, 0, 0, 0.1f, 0, -0.05f};
  float P[6] = {0.1f, -0.1f, 0.2f, 0.3f, -0.2f, 0.05f};
  float X[1] = {2.0f}, H0[2] = {0.3f, -0.4f}, C0[2] = {0.5f, 0.1f};
  int64_t dx[3] = {1, 1, 1}, dw[3] = {1, 8, 1}, dr[3] = {1, 8, 2}, db[2] = {1, 16}, dh[3] = {1, 1, 2},
          dp[2] = {1, 6};
  nbl_host_tensor in[8] = {ht(NBL_DT_FLOAT, 3, dx, X),  ht(NBL_DT_FLOAT, 3, dw, W), ht(NBL_DT_FLOAT, 3, dr, R),
                           ht(NBL_DT_FLOAT, 2, db, B),  ONE_NONE,                     ht(NBL_DT_FLOAT, 3, dh, H0),
                           ht(NBL_DT_FLOAT, 3, dh, C0), ht(NBL_DT_FLOAT, 2, dp, P)};
  nbl_host_tensor o[3];
  ck_assert_msg(run_node("LSTM", 14, a_hidden2, 8, in, 3, NULL, o) == NBL_OK, "%s", nbl_last_error());
  const float h[2] = {0.50441047f, 0.11375869f}, cc[2] = {0.98851363f, 0.18765174f};
  int64_t dy[4] = {1, 1, 1, 2};
  expect_f32(&o[0], 4, dy, h, 2, 1e-6);
  expect_f32(&o[1], 3, dh, h, 2, 1e-6);
  expect_f32(&o[2], 3, dh, cc, 2, 1e-6);
  for (int i = 0; i < 3; i++) free(o[i].data);
}
END_TEST

static int lbr_flag;
static void a_gru(nbl_graph *g, nbl_id n) {
  nbl_node_set_attr_int(g, n, "hidden_size", 1);
  nbl_node_set_attr_int(g, n, "linear_before_reset", lbr_flag);
}

/* One GRU step, both linear_before_reset forms (NumPy transcription of the spec). */
START_TEST(test_gru_one_step) {
  float W[3] = {0.5f, -0.4f, 0.8f}, R[3] = {0.3f, 0.6f, -0.7f}, B[6] = {0.1f, 0.2f, 0.3f, -0.1f, 0.05f, 0.4f};
  float X[1] = {1.5f}, H0[1] = {0.6f};
  int64_t d1[3] = {1, 1, 1}, dw[3] = {1, 3, 1}, db[2] = {1, 6};
  nbl_host_tensor in[6] = {ht(NBL_DT_FLOAT, 3, d1, X), ht(NBL_DT_FLOAT, 3, dw, W), ht(NBL_DT_FLOAT, 3, dw, R),
                           ht(NBL_DT_FLOAT, 2, db, B), ONE_NONE, ht(NBL_DT_FLOAT, 3, d1, H0)};
  const float want[2] = {0.6945006296603289f, 0.685815463126132f};
  for (lbr_flag = 0; lbr_flag < 2; lbr_flag++) {
    nbl_host_tensor o[2];
    int wanted[2] = {0, 1};
    ck_assert_msg(run_node("GRU", 14, a_gru, 6, in, 2, wanted, o) == NBL_OK, "%s", nbl_last_error());
    expect_f32(&o[1], 3, d1, &want[lbr_flag], 1, 1e-6);
    free(o[1].data);
  }
}
END_TEST

static const char *rnn_dir;
static void a_rnn_relu(nbl_graph *g, nbl_id n) {
  static const char *const relu2[] = {"Relu", "Relu"};
  nbl_node_set_attr_int(g, n, "hidden_size", 1);
  nbl_node_set_attr_string(g, n, "direction", rnn_dir);
  set_strings(g, n, "activations", strcmp(rnn_dir, "bidirectional") == 0 ? 2 : 1, relu2);
}

/* RNN with Relu, W = R = 1: h_t = relu(x_t + h_{t-1}); batch 1 has length 1
 * (sequence_lens), so its later Y rows are 0 and Y_h is its first state. */
START_TEST(test_rnn_seq_lens_directions) {
  float X[6] = {1, 10, 2, 20, 3, 30}; /* [seq 3, batch 2, 1] */
  float W[2] = {1, 1}, R[2] = {1, 1};
  int32_t L[2] = {3, 1};
  int64_t dx[3] = {3, 2, 1}, dl[1] = {2};
  /* forward */
  {
    rnn_dir = "forward";
    int64_t dw[3] = {1, 1, 1};
    nbl_host_tensor in[5] = {ht(NBL_DT_FLOAT, 3, dx, X), ht(NBL_DT_FLOAT, 3, dw, W), ht(NBL_DT_FLOAT, 3, dw, R),
                             ONE_NONE, ht(NBL_DT_INT32, 1, dl, L)};
    nbl_host_tensor o[2];
    ck_assert_msg(run_node("RNN", 14, a_rnn_relu, 5, in, 2, NULL, o) == NBL_OK, "%s", nbl_last_error());
    const float y[6] = {1, 10, 3, 0, 6, 0}, yh[2] = {6, 10};
    int64_t dy[4] = {3, 1, 2, 1}, dh[3] = {1, 2, 1};
    expect_f32(&o[0], 4, dy, y, 6, 0);
    expect_f32(&o[1], 3, dh, yh, 2, 0);
    free(o[0].data), free(o[1].data);
  }
  /* bidirectional: direction 1 runs t = len-1 .. 0 */
  {
    rnn_dir = "bidirectional";
    int64_t dw[3] = {2, 1, 1};
    nbl_host_tensor in[5] = {ht(NBL_DT_FLOAT, 3, dx, X), ht(NBL_DT_FLOAT, 3, dw, W), ht(NBL_DT_FLOAT, 3, dw, R),
                             ONE_NONE, ht(NBL_DT_INT32, 1, dl, L)};
    nbl_host_tensor o[2];
    ck_assert_msg(run_node("RNN", 14, a_rnn_relu, 5, in, 2, NULL, o) == NBL_OK, "%s", nbl_last_error());
    /* Y[t][dir][b]: fwd b0 1,3,6 b1 10,0,0; rev b0 6,5,3 b1 10,0,0 */
    const float y[12] = {1, 10, 6, 10, 3, 0, 5, 0, 6, 0, 3, 0}, yh[4] = {6, 10, 6, 10};
    int64_t dy[4] = {3, 2, 2, 1}, dh[3] = {2, 2, 1};
    expect_f32(&o[0], 4, dy, y, 12, 0);
    expect_f32(&o[1], 3, dh, yh, 4, 0);
    free(o[0].data), free(o[1].data);
  }
}
END_TEST

static uint32_t rng = 777;
static float frand(void) { return td_lcg_float(&rng); }

static int cfg_i;
static void a_rnn_cfg(nbl_graph *g, nbl_id n) {
  nbl_node_set_attr_int(g, n, "hidden_size", 5);
  nbl_node_set_attr_string(g, n, "direction", (cfg_i % 3) == 0 ? "forward" : (cfg_i % 3) == 1 ? "reverse" : "bidirectional");
  nbl_node_set_attr_int(g, n, "layout", (cfg_i / 3) % 2);
  nbl_node_set_attr_int(g, n, "linear_before_reset", (cfg_i / 6) % 2);
  if (cfg_i % 4 == 3) nbl_node_set_attr_float(g, n, "clip", 0.7f);
}

/* Fast float32 RNN/GRU/LSTM paths (GEMM based) agree with the double
 * reference over directions, layouts, sequence_lens, initial states, clip,
 * peepholes and GRU's linear_before_reset. */
START_TEST(test_rnn_fast_vs_ref) {
  static const char *ops[3] = {"RNN", "GRU", "LSTM"};
  const int64_t S = 4, Bt = 3, I = 6, H = 5;
  for (int op = 0; op < 3; op++)
    for (cfg_i = 0; cfg_i < 12; cfg_i++) {
      int G = op == 0 ? 1 : (op == 1 ? 3 : 4), nd = (cfg_i % 3) == 2 ? 2 : 1, layout = (cfg_i / 3) % 2;
      float X[4 * 3 * 6], W[2 * 4 * 5 * 6], R[2 * 4 * 5 * 5], B[2 * 8 * 5], H0[2 * 3 * 5], C0[2 * 3 * 5], P[2 * 15];
      float *all[] = {X, W, R, B, H0, C0, P};
      size_t sz[] = {sizeof X, sizeof W, sizeof R, sizeof B, sizeof H0, sizeof C0, sizeof P};
      for (int a = 0; a < 7; a++)
        for (size_t i = 0; i < sz[a] / 4; i++) all[a][i] = frand();
      int32_t L[3] = {4, 2, 3};
      int64_t dx[3] = {layout ? Bt : S, layout ? S : Bt, I}, dw[3] = {nd, G * H, I}, dr[3] = {nd, G * H, H},
              db[2] = {nd, 2 * G * H}, dl[1] = {Bt}, dh[3] = {layout ? Bt : nd, layout ? nd : Bt, H},
              dp[2] = {nd, 3 * H};
      nbl_host_tensor in[8] = {ht(NBL_DT_FLOAT, 3, dx, X), ht(NBL_DT_FLOAT, 3, dw, W), ht(NBL_DT_FLOAT, 3, dr, R),
                               ht(NBL_DT_FLOAT, 2, db, B), ht(NBL_DT_INT32, 1, dl, L), ht(NBL_DT_FLOAT, 3, dh, H0),
                               ht(NBL_DT_FLOAT, 3, dh, C0), ht(NBL_DT_FLOAT, 2, dp, P)};
      int n_in = op == 2 ? 8 : 6, n_out = op == 2 ? 3 : 2;
      if (cfg_i % 2) in[4] = ONE_NONE; /* no sequence_lens */
      nbl_host_tensor f[3], r[3];
      use_ref = 0;
      ck_assert_msg(run_node(ops[op], 14, a_rnn_cfg, n_in, in, n_out, NULL, f) == NBL_OK, "%s", nbl_last_error());
      use_ref = 1;
      ck_assert_msg(run_node(ops[op], 14, a_rnn_cfg, n_in, in, n_out, NULL, r) == NBL_OK, "%s", nbl_last_error());
      for (int k = 0; k < n_out; k++) {
        expect_f32(&f[k], r[k].rank, r[k].dims, r[k].data, (int64_t)(r[k].nbytes / 4), 1e-5);
        free(f[k].data), free(r[k].data);
      }
    }
}
END_TEST

static void a_bad_act(nbl_graph *g, nbl_id n) {
  static const char *const a[] = {"NoSuchFn"};
  nbl_node_set_attr_int(g, n, "hidden_size", 1);
  set_strings(g, n, "activations", 1, a);
}

START_TEST(test_rnn_errors) {
  float X[2] = {1, 2}, W[2] = {1, 1}, R[1] = {1};
  int64_t dx[3] = {2, 1, 1}, dw_bad[3] = {1, 2, 1}, dw[3] = {1, 1, 1};
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 3, dx, X), ht(NBL_DT_FLOAT, 3, dw_bad, W), ht(NBL_DT_FLOAT, 3, dw, R)};
  nbl_host_tensor o;
  /* W has 2 rows but hidden_size 1 */
  ck_assert_int_eq(run_node("RNN", 14, a_hidden2, 3, in, 1, NULL, &o), NBL_ERR_INVALID_MODEL);
  in[1] = ht(NBL_DT_FLOAT, 3, dw, W);
  ck_assert_int_eq(run_node("RNN", 14, a_bad_act, 3, in, 1, NULL, &o), NBL_ERR_UNSUPPORTED);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "NoSuchFn"));
}
END_TEST

/* ------------------------------------------------------------------ Det */

START_TEST(test_det_hand) {
  /* [[1,2],[3,4]] = -2; [[2,0],[0,3]] = 6; 3x3 needing a pivot = -2; singular = 0 */
  float a[8] = {1, 2, 3, 4, 2, 0, 0, 3};
  int64_t da[3] = {2, 2, 2}, w2[1] = {2};
  nbl_host_tensor in = ht(NBL_DT_FLOAT, 3, da, a);
  nbl_host_tensor o = run1("Det", 11, NULL, 1, &in);
  const float want[2] = {-2, 6};
  expect_f32(&o, 1, w2, want, 2, 1e-6);
  free(o.data);
  float b[9] = {0, 1, 2, 1, 0, 3, 4, -3, 8};
  int64_t db[2] = {3, 3};
  in = ht(NBL_DT_FLOAT, 2, db, b);
  o = run1("Det", 11, NULL, 1, &in);
  const float wb = -2;
  expect_f32(&o, 0, NULL, &wb, 1, 1e-6);
  free(o.data);
  double s[4] = {1, 2, 2, 4}, nanm[4] = {NAN, 1, 1, 1};
  int64_t ds[3] = {1, 2, 2}, w1[1] = {1};
  in = ht(NBL_DT_DOUBLE, 3, ds, s);
  o = run1("Det", 11, NULL, 1, &in);
  ck_assert_int_eq(o.dtype, NBL_DT_DOUBLE);
  ck_assert(((double *)o.data)[0] == 0.0);
  free(o.data);
  in = ht(NBL_DT_DOUBLE, 3, ds, nanm);
  o = run1("Det", 11, NULL, 1, &in);
  ck_assert(isnan(((double *)o.data)[0]));
  free(o.data);
  /* empty batch */
  int64_t de[3] = {0, 2, 2};
  in = ht(NBL_DT_FLOAT, 3, de, a);
  o = run1("Det", 11, NULL, 1, &in);
  ck_assert_int_eq(o.rank, 1);
  ck_assert_int_eq(o.dims[0], 0);
  free(o.data);
  (void)w1;
  /* integer input is a clear error */
  int32_t ia[4] = {1, 2, 3, 4};
  in = ht(NBL_DT_INT32, 2, db, ia);
  in.dims[0] = in.dims[1] = 2;
  in.nbytes = 16;
  ck_assert_int_eq(run_node("Det", 11, NULL, 1, &in, 1, NULL, &o), NBL_ERR_UNSUPPORTED);
}
END_TEST

/* ------------------------------------------------------------------ NonMaxSuppression */

static void a_center(nbl_graph *g, nbl_id n) { nbl_node_set_attr_int(g, n, "center_point_box", 1); }

START_TEST(test_nms_hand) {
  /* boxes 0,1,2 overlap heavily (IOU > 0.5); 3 and 4 overlap; 5 is alone */
  float boxes[24] = {0, 0, 1, 1, 0, 0.1f, 1, 1.1f, 0, -0.1f, 1, 0.9f, 0, 10, 1, 11, 0, 10.1f, 1, 11.1f, 0, 100, 1, 101};
  float scores[6] = {0.9f, 0.75f, 0.6f, 0.95f, 0.5f, 0.3f};
  int64_t mx = 3, mx0 = 0;
  float iou = 0.5f, thr = 0.0f, thr_hi = 0.9f;
  int64_t db[3] = {1, 6, 4}, ds[3] = {1, 1, 6}, d1[1] = {1};
  nbl_host_tensor in[5] = {ht(NBL_DT_FLOAT, 3, db, boxes), ht(NBL_DT_FLOAT, 3, ds, scores),
                           ht(NBL_DT_INT64, 1, d1, &mx), ht(NBL_DT_FLOAT, 1, d1, &iou), ht(NBL_DT_FLOAT, 1, d1, &thr)};
  nbl_host_tensor o = run1("NonMaxSuppression", 11, NULL, 5, in);
  const int64_t want[9] = {0, 0, 3, 0, 0, 0, 0, 0, 5};
  ck_assert_int_eq(o.dtype, NBL_DT_INT64);
  ck_assert_int_eq(o.dims[0], 3);
  ck_assert_int_eq(o.dims[1], 3);
  ck_assert_mem_eq(o.data, want, sizeof want);
  free(o.data);
  /* score threshold is strict: only 0.95 > 0.9 survives */
  in[4] = ht(NBL_DT_FLOAT, 1, d1, &thr_hi);
  o = run1("NonMaxSuppression", 11, NULL, 5, in);
  ck_assert_int_eq(o.dims[0], 1);
  ck_assert_int_eq(((int64_t *)o.data)[2], 3);
  free(o.data);
  /* max_output_boxes_per_class 0 (and the default) selects nothing */
  in[2] = ht(NBL_DT_INT64, 1, d1, &mx0);
  o = run1("NonMaxSuppression", 11, NULL, 5, in);
  ck_assert_int_eq(o.rank, 2);
  ck_assert_int_eq(o.dims[0], 0);
  free(o.data);
  o = run1("NonMaxSuppression", 11, NULL, 2, in);
  ck_assert_int_eq(o.dims[0], 0);
  free(o.data);
  /* center format: (xc, yc, w, h); boxes 0 and 1 have IOU 1/3 < 0.5, kept */
  float cb[8] = {0.5f, 0.5f, 1, 1, 1.0f, 0.5f, 1, 1};
  float cs[2] = {0.6f, 0.7f};
  int64_t dcb[3] = {1, 2, 4}, dcs[3] = {1, 1, 2};
  nbl_host_tensor ci[4] = {ht(NBL_DT_FLOAT, 3, dcb, cb), ht(NBL_DT_FLOAT, 3, dcs, cs),
                           ht(NBL_DT_INT64, 1, d1, &mx), ht(NBL_DT_FLOAT, 1, d1, &iou)};
  o = run1("NonMaxSuppression", 11, a_center, 4, ci);
  const int64_t wc[6] = {0, 0, 1, 0, 0, 0};
  ck_assert_int_eq(o.dims[0], 2);
  ck_assert_mem_eq(o.data, wc, sizeof wc);
  free(o.data);
  /* the same with IOU threshold 0.3: box 0 is suppressed */
  float iou3 = 0.3f;
  ci[3] = ht(NBL_DT_FLOAT, 1, d1, &iou3);
  o = run1("NonMaxSuppression", 11, a_center, 4, ci);
  ck_assert_int_eq(o.dims[0], 1);
  free(o.data);
}
END_TEST

/* NonMaxSuppression's fast kernel (a grid of the selected boxes, misc.c)
 * against the reference kernel (every candidate against every selected
 * box): the same selected indices, in the same order, on random sets of
 * boxes (uniform, clustered, duplicated, degenerate, flipped, huge ones
 * over the whole extent, NaN and Inf corners, NaN scores), both box
 * formats, IOU thresholds 0 to 1, with and without a score threshold,
 * max_output_boxes_per_class from 1 to all, several batches and classes. */
static uint32_t nms_rng = 2024;
static float nms_u(void) { return (float)(td_xs32(&nms_rng) >> 8) / 16777216.0f; } /* [0, 1) */
static int nms_center;
static void a_nms_center(nbl_graph *g, nbl_id n) { nbl_node_set_attr_int(g, n, "center_point_box", nms_center); }

START_TEST(test_nms_fast_vs_ref) {
  const int64_t counts[] = {0, 1, 2, 7, 60, 500, 3000};
  const float ious[] = {0.0f, 0.3f, 0.5f, 0.7f, 1.0f};
  int runs = 0, selected = 0;
  for (int ci = 0; ci < (int)(sizeof counts / sizeof counts[0]); ci++)
    for (int kind = 0; kind < 6; kind++) {
      const int64_t nb = kind == 2 ? 2 : 1, nc = kind == 3 ? 3 : 1, ns = counts[ci];
      float *boxes = malloc(sizeof(float) * (size_t)(nb * ns * 4 + 1));
      float *scores = malloc(sizeof(float) * (size_t)(nb * nc * ns + 1));
      for (int64_t i = 0; i < nb * ns; i++) {
        float *b = boxes + 4 * i;
        /* kind 0 uniform, 1 clustered around 4 centers with duplicates,
         * 2 flipped corners and zero areas, 3 sizes from tiny to the whole
         * extent, 4 NaN and Inf corners among uniform ones, 5 a line of
         * boxes of one size */
        float y = nms_u() * 300, x = nms_u() * 300, h = 2 + nms_u() * 30, w = 2 + nms_u() * 30;
        if (kind == 1) {
          y = 50 + 60 * (float)(i % 4) + nms_u() * 8, x = 40 * (float)(i % 4) + nms_u() * 8;
        }
        if (kind == 3) {
          float r = nms_u();
          h *= r < 0.1f ? 20 : r < 0.3f ? 0.05f : 1, w *= r < 0.1f ? 20 : 1;
        }
        if (kind == 5) y = 10, x = (float)i * 3, h = w = 10;
        b[0] = y, b[1] = x, b[2] = y + h, b[3] = x + w;
        if (kind == 2 && i % 3 == 0) b[0] = y + h, b[2] = y;      /* flipped */
        if (kind == 2 && i % 7 == 0) b[3] = b[1];                  /* zero width */
        if (kind == 4 && i % 11 == 3) b[i % 4] = NAN;
        if (kind == 4 && i % 13 == 5) b[(i + 1) % 4] = i % 2 ? INFINITY : -INFINITY;
        if (kind == 1 && i % 5 == 1) memcpy(b, b - 4, sizeof(float) * 4);        /* duplicates */
        if (kind == 1 && i % 5 == 2) memcpy(b, b - 4, sizeof(float) * 4), b[2] += 0.5f;
      }
      for (int64_t i = 0; i < nb * nc * ns; i++) {
        scores[i] = nms_u();
        if (kind == 1 && i % 9 == 0) scores[i] = 0.5f; /* ties: the lower index first */
        if (kind == 4 && i % 17 == 2) scores[i] = NAN;
      }
      for (int variant = 0; variant < 10; variant++) {
        nms_center = variant % 2;
        int64_t mx = variant < 8 ? 1000000 : variant == 8 ? 1 : 5, d1[1] = {1};
        float iou = ious[variant % 5], thr = 0.25f;
        int64_t db[3] = {nb, ns, 4}, ds[3] = {nb, nc, ns};
        nbl_host_tensor in[5] = {ht(NBL_DT_FLOAT, 3, db, boxes), ht(NBL_DT_FLOAT, 3, ds, scores),
                                 ht(NBL_DT_INT64, 1, d1, &mx), ht(NBL_DT_FLOAT, 1, d1, &iou),
                                 ht(NBL_DT_FLOAT, 1, d1, &thr)};
        const int n_in = variant % 3 == 2 ? 5 : 4;
        use_ref = 1;
        nbl_host_tensor r = run1("NonMaxSuppression", 11, a_nms_center, n_in, in);
        use_ref = 0;
        nbl_host_tensor f = run1("NonMaxSuppression", 11, a_nms_center, n_in, in);
        use_ref = 1;
        ck_assert_int_eq(f.rank, 2);
        ck_assert_msg(f.dims[0] == r.dims[0], "count %lld kind %d variant %d: %lld selected, reference %lld",
                      (long long)ns, kind, variant, (long long)f.dims[0], (long long)r.dims[0]);
        ck_assert_msg(r.nbytes == 0 || memcmp(f.data, r.data, r.nbytes) == 0,
                      "count %lld kind %d variant %d: other indices", (long long)ns, kind, variant);
        selected += (int)r.dims[0];
        runs++;
        free(f.data), free(r.data);
      }
      free(boxes), free(scores);
    }
  ck_assert_int_eq(runs, 7 * 6 * 10);
  ck_assert_int_gt(selected, 20000); /* not all empty */
}
END_TEST

/* ------------------------------------------------------------------ signal */

static int periodic_flag;
static void a_periodic(nbl_graph *g, nbl_id n) { nbl_node_set_attr_int(g, n, "periodic", periodic_flag); }

START_TEST(test_windows_hand) {
  int32_t size = 4, size3 = 3;
  int64_t d4[1] = {4}, d3[1] = {3}, d0[1] = {0};
  nbl_host_tensor in = ht(NBL_DT_INT32, 0, NULL, &size);
  periodic_flag = 1;
  nbl_host_tensor o = run1("HannWindow", 17, a_periodic, 1, &in);
  const float hann[4] = {0, 0.5f, 1, 0.5f};
  expect_f32(&o, 1, d4, hann, 4, 1e-6);
  free(o.data);
  o = run1("HammingWindow", 17, a_periodic, 1, &in);
  const float ham[4] = {4.f / 46, 25.f / 46, 46.f / 46, 25.f / 46};
  expect_f32(&o, 1, d4, ham, 4, 1e-6);
  free(o.data);
  periodic_flag = 0;
  in = ht(NBL_DT_INT32, 0, NULL, &size3);
  o = run1("BlackmanWindow", 17, a_periodic, 1, &in);
  const float bl[3] = {0, 1, 0};
  expect_f32(&o, 1, d3, bl, 3, 1e-6);
  free(o.data);
  int64_t zero = 0;
  in = ht(NBL_DT_INT64, 0, NULL, &zero);
  o = run1("HannWindow", 17, a_periodic, 1, &in);
  expect_f32(&o, 1, d0, hann, 0, 0);
  free(o.data);
}
END_TEST

static int dft_inverse, dft_onesided;
static void a_dft(nbl_graph *g, nbl_id n) {
  nbl_node_set_attr_int(g, n, "inverse", dft_inverse);
  nbl_node_set_attr_int(g, n, "onesided", dft_onesided);
}

START_TEST(test_dft_hand) {
  /* fft([1,2,3,4]) = [10, -2+2i, -2, -2-2i] */
  float x[4] = {1, 2, 3, 4};
  int64_t dx[3] = {1, 4, 1}, dy[3] = {1, 4, 2};
  nbl_host_tensor in[2] = {ht(NBL_DT_FLOAT, 3, dx, x), ONE_NONE};
  dft_inverse = 0, dft_onesided = 0;
  nbl_host_tensor o = run1("DFT", 17, a_dft, 1, in);
  const float y[8] = {10, 0, -2, 2, -2, 0, -2, -2};
  expect_f32(&o, 3, dy, y, 8, 1e-6);
  /* the inverse of the result gives back x (+0i) */
  nbl_host_tensor back_in = ht(NBL_DT_FLOAT, 3, dy, o.data);
  dft_inverse = 1;
  nbl_host_tensor b = run1("DFT", 17, a_dft, 1, &back_in);
  const float xb[8] = {1, 0, 2, 0, 3, 0, 4, 0};
  expect_f32(&b, 3, dy, xb, 8, 1e-6);
  free(b.data), free(o.data);
  /* onesided: the first n/2+1 bins */
  dft_inverse = 0, dft_onesided = 1;
  o = run1("DFT", 17, a_dft, 1, in);
  int64_t d3[3] = {1, 3, 2};
  expect_f32(&o, 3, d3, y, 6, 1e-6);
  free(o.data);
  /* dft_length 2 truncates: fft([1,2]) = [3, -1]; 6 zero-pads */
  dft_onesided = 0;
  int64_t len2 = 2, len6 = 6;
  in[1] = ht(NBL_DT_INT64, 0, NULL, &len2);
  o = run1("DFT", 17, a_dft, 2, in);
  int64_t d2[3] = {1, 2, 2};
  const float y2[4] = {3, 0, -1, 0};
  expect_f32(&o, 3, d2, y2, 4, 1e-6);
  free(o.data);
  in[1] = ht(NBL_DT_INT64, 0, NULL, &len6);
  o = run1("DFT", 17, a_dft, 2, in);
  ck_assert_int_eq(o.dims[1], 6);
  ck_assert(fabsf(((float *)o.data)[0] - 10) < 1e-6f);
  /* bin 3 of a 6-point DFT: sum x_j (-1)^j = 1-2+3-4 = -2 */
  ck_assert(fabsf(((float *)o.data)[6] + 2) < 1e-5f);
  free(o.data);
  /* NaN propagates */
  float xn[4] = {1, NAN, 3, 4};
  in[0] = ht(NBL_DT_FLOAT, 3, dx, xn);
  o = run1("DFT", 17, a_dft, 1, in);
  ck_assert(isnan(((float *)o.data)[0]));
  free(o.data);
}
END_TEST

START_TEST(test_stft_hand) {
  /* signal [1,2,3,4,5], frame 4 step 1: two frames; rectangular window */
  float x[5] = {1, 2, 3, 4, 5}, win[4] = {1, 1, 1, 1};
  int64_t dx[3] = {1, 5, 1}, dw[1] = {4};
  int64_t step = 1;
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 3, dx, x), ht(NBL_DT_INT64, 0, NULL, &step), ht(NBL_DT_FLOAT, 1, dw, win)};
  nbl_host_tensor o = run1("STFT", 17, NULL, 3, in);
  int64_t dy[4] = {1, 2, 3, 2};
  const float y[12] = {10, 0, -2, 2, -2, 0, 14, 0, -2, 2, -2, 0};
  expect_f32(&o, 4, dy, y, 12, 1e-6);
  free(o.data);
}
END_TEST

START_TEST(test_melweight_hand) {
  /* the example of the ONNX operator docs: 8 bins, dft 16, 8192 Hz, 0..4096 Hz */
  int32_t nmel = 8, dft = 16, rate = 8192;
  float lo = 0, hi = 4096;
  nbl_host_tensor in[5] = {ht(NBL_DT_INT32, 0, NULL, &nmel), ht(NBL_DT_INT32, 0, NULL, &dft),
                           ht(NBL_DT_INT32, 0, NULL, &rate), ht(NBL_DT_FLOAT, 0, NULL, &lo),
                           ht(NBL_DT_FLOAT, 0, NULL, &hi)};
  nbl_host_tensor o = run1("MelWeightMatrix", 17, NULL, 5, in);
  float want[72] = {0};
  want[0] = want[1] = 1;
  want[8 + 2] = want[8 + 3] = 1;
  want[16 + 4] = want[24 + 5] = want[32 + 6] = want[40 + 7] = 1;
  int64_t d[2] = {9, 8};
  expect_f32(&o, 2, d, want, 72, 0);
  free(o.data);
}
END_TEST

/* ------------------------------------------------------------------ GridSample, RoiAlign */

static const char *gs_pad_mode, *gs_mode;
static void a_gs(nbl_graph *g, nbl_id n) {
  nbl_node_set_attr_int(g, n, "align_corners", 1);
  nbl_node_set_attr_string(g, n, "padding_mode", gs_pad_mode);
  nbl_node_set_attr_string(g, n, "mode", gs_mode);
}

START_TEST(test_gridsample_hand) {
  float img[4] = {1, 2, 3, 4};
  /* (x, y): center, top-left, bottom-right, x beyond the right edge (x = 3 -> pixel 2) */
  float grid[8] = {0, 0, -1, -1, 1, 1, 3, -1};
  int64_t dx[4] = {1, 1, 2, 2}, dg[4] = {1, 1, 4, 2}, dy[4] = {1, 1, 1, 4};
  nbl_host_tensor in[2] = {ht(NBL_DT_FLOAT, 4, dx, img), ht(NBL_DT_FLOAT, 4, dg, grid)};
  gs_mode = "bilinear";
  gs_pad_mode = "zeros";
  nbl_host_tensor o = run1("GridSample", 16, a_gs, 2, in);
  const float wz[4] = {2.5f, 1, 4, 0};
  expect_f32(&o, 4, dy, wz, 4, 1e-6);
  free(o.data);
  gs_pad_mode = "border";
  o = run1("GridSample", 16, a_gs, 2, in);
  const float wb[4] = {2.5f, 1, 4, 2};
  expect_f32(&o, 4, dy, wb, 4, 1e-6);
  free(o.data);
  /* reflection about the edge: x = 3 -> pixel 2 reflects to pixel 0 */
  gs_pad_mode = "reflection";
  o = run1("GridSample", 16, a_gs, 2, in);
  const float wr[4] = {2.5f, 1, 4, 1};
  expect_f32(&o, 4, dy, wr, 4, 1e-6);
  free(o.data);
  gs_mode = "linear-ish";
  ck_assert_int_eq(run_node("GridSample", 16, a_gs, 2, in, 1, NULL, &o), NBL_ERR_UNSUPPORTED);
}
END_TEST

static const char *roi_ctm;
static void a_roi(nbl_graph *g, nbl_id n) {
  nbl_node_set_attr_int(g, n, "sampling_ratio", 2);
  nbl_node_set_attr_string(g, n, "coordinate_transformation_mode", roi_ctm);
}

START_TEST(test_roialign_hand) {
  /* X[y][x] = x on a 4x4 image: the average of samples is the mean sample x */
  float x[16];
  for (int i = 0; i < 16; i++) x[i] = (float)(i % 4);
  float roi[4] = {0, 0, 3, 3};
  int64_t bi[1] = {0};
  int64_t dx[4] = {1, 1, 4, 4}, dr[2] = {1, 4}, db[1] = {1}, dy[4] = {1, 1, 1, 1};
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 4, dx, x), ht(NBL_DT_FLOAT, 2, dr, roi), ht(NBL_DT_INT64, 1, db, bi)};
  /* samples at x = 0.75, 2.25 -> 1.5 */
  roi_ctm = "output_half_pixel";
  nbl_host_tensor o = run1("RoiAlign", 16, a_roi, 3, in);
  const float w1 = 1.5f, w2 = 1.0f;
  expect_f32(&o, 4, dy, &w1, 1, 1e-6);
  free(o.data);
  /* half_pixel shifts by -0.5: samples at x = 0.25, 1.75 -> 1.0 */
  roi_ctm = "half_pixel";
  o = run1("RoiAlign", 16, a_roi, 3, in);
  expect_f32(&o, 4, dy, &w2, 1, 1e-6);
  free(o.data);
  /* batch index out of range */
  int64_t bad[1] = {3};
  in[2] = ht(NBL_DT_INT64, 1, db, bad);
  ck_assert_int_eq(run_node("RoiAlign", 16, a_roi, 3, in, 1, NULL, &o), NBL_ERR_INVALID_MODEL);
}
END_TEST

/* The float32 RoiAlign (samples worked out once per roi, rois in
 * parallel) against the reference kernel, bit for bit: rois inside,
 * straddling and outside the plane, degenerate and reversed, two images,
 * avg and max, adaptive and fixed sampling, both coordinate modes and
 * opset 10, NaN and Inf in X, at 1 and 2 threads. */
START_TEST(test_roialign_fast) {
  enum { N = 2, C = 5, H = 13, W = 17, R = 9 };
  float *x = malloc(sizeof(float) * N * C * H * W);
  uint32_t seed = 99;
  for (int i = 0; i < N * C * H * W; i++) x[i] = td_lcg_float(&seed) * 4.0f - 2.0f;
  x[3] = NAN, x[200] = INFINITY, x[N * C * H * W - 1] = -INFINITY;
  const float rois[R * 4] = {0, 0, 16, 12,     2.5f, 1.25f, 9.75f, 7.5f, -3, -2, 5, 4, 10, 6, 30, 20,
                             4, 4, 4, 4,       8, 9, 3, 2,              -9, -9, -5, -6, 1.1f, 2.2f, 3.3f, 12.9f,
                             0.5f, 0.5f, 15.5f, 1.0f};
  const int64_t bi[R] = {0, 1, 0, 1, 0, 1, 0, 1, 1};
  int64_t dx[4] = {N, C, H, W}, dr[2] = {R, 4}, db[1] = {R};
  const char *modes[2] = {"avg", "max"}, *ctms[2] = {"half_pixel", "output_half_pixel"};
  for (int opset = 10; opset <= 16; opset += 6)
    for (int mi = 0; mi < 2; mi++)
      for (int ci = 0; ci < (opset >= 16 ? 2 : 1); ci++)
        for (int64_t sr = 0; sr <= 2; sr += 2)
          for (int threads = 1; threads <= 2; threads++) {
            float *got[2] = {NULL, NULL};
            size_t nb = 0;
            for (int ref = 0; ref < 2; ref++) {
              one *o = one_new("RoiAlign", opset, 3, 1);
              o->threads = threads;
              nbl_id n = o->node;
              nbl_node_set_attr_string(G(o), n, "mode", modes[mi]);
              nbl_node_set_attr_int(G(o), n, "sampling_ratio", sr);
              nbl_node_set_attr_int(G(o), n, "output_height", 3);
              nbl_node_set_attr_int(G(o), n, "output_width", 4);
              nbl_node_set_attr_float(G(o), n, "spatial_scale", 0.75f);
              if (opset >= 16) nbl_node_set_attr_string(G(o), n, "coordinate_transformation_mode", ctms[ci]);
              one_in(o, 0, NBL_DT_FLOAT, 4, dx, x);
              one_in(o, 1, NBL_DT_FLOAT, 2, dr, rois);
              one_in(o, 2, NBL_DT_INT64, 1, db, bi);
              ck_assert_msg(one_run(o, ref) == NBL_OK, "%s", nbl_last_error());
              nb = o->out[0].nbytes;
              ck_assert_uint_eq(nb, sizeof(float) * R * C * 3 * 4);
              got[ref] = malloc(nb);
              memcpy(got[ref], o->out[0].data, nb);
              one_free(o);
            }
            for (size_t i = 0; i < nb / sizeof(float); i++)
              ck_assert_msg(memcmp(&got[0][i], &got[1][i], 4) == 0 || (isnan(got[0][i]) && isnan(got[1][i])),
                            "opset %d %s ctm %d sr %lld threads %d: y[%zu] fast %.9g ref %.9g", opset, modes[mi],
                            ci, (long long)sr, threads, i, got[0][i], got[1][i]);
            free(got[0]), free(got[1]);
          }
  free(x);
}
END_TEST

/* ------------------------------------------------------------------ TfIdfVectorizer */

static const char *tfidf_mode;
static void a_tfidf(nbl_graph *g, nbl_id n) {
  const int64_t counts[2] = {0, 3}, idx[4] = {0, 1, 2, 3}, pool[5] = {1, 2, 3, 1, 2};
  const float w[4] = {1, 1, 1, 0.5f};
  nbl_node_set_attr_int(g, n, "min_gram_length", 1);
  nbl_node_set_attr_int(g, n, "max_gram_length", 2);
  nbl_node_set_attr_int(g, n, "max_skip_count", 0);
  nbl_node_set_attr_string(g, n, "mode", tfidf_mode);
  nbl_node_set_attr_ints(g, n, "ngram_counts", 2, counts);
  nbl_node_set_attr_ints(g, n, "ngram_indexes", 4, idx);
  nbl_node_set_attr_ints(g, n, "pool_int64s", 5, pool);
  nbl_node_set_attr_floats(g, n, "weights", 4, w);
}

START_TEST(test_tfidf_hand) {
  /* [1,2,1,2,3]: unigrams 1:2, 2:2, 3:1; bigram (1,2): 2 */
  int32_t x[5] = {1, 2, 1, 2, 3};
  int64_t dx[1] = {5}, dy[1] = {4};
  nbl_host_tensor in = ht(NBL_DT_INT32, 1, dx, x);
  tfidf_mode = "TF";
  nbl_host_tensor o = run1("TfIdfVectorizer", 9, a_tfidf, 1, &in);
  const float tf[4] = {2, 2, 1, 2}, idf[4] = {1, 1, 1, 0.5f}, tfidf[4] = {2, 2, 1, 1};
  expect_f32(&o, 1, dy, tf, 4, 0);
  free(o.data);
  tfidf_mode = "IDF";
  o = run1("TfIdfVectorizer", 9, a_tfidf, 1, &in);
  expect_f32(&o, 1, dy, idf, 4, 0);
  free(o.data);
  tfidf_mode = "TFIDF";
  o = run1("TfIdfVectorizer", 9, a_tfidf, 1, &in);
  expect_f32(&o, 1, dy, tfidf, 4, 0);
  free(o.data);
  /* float input is a clear error */
  float xf[5] = {1, 2, 1, 2, 3};
  in = ht(NBL_DT_FLOAT, 1, dx, xf);
  ck_assert_int_eq(run_node("TfIdfVectorizer", 9, a_tfidf, 1, &in, 1, NULL, &o), NBL_ERR_UNSUPPORTED);
}
END_TEST

/* ------------------------------------------------------------------ StringNormalizer */

/* StringNormalizer on x (rank 1, or [1, n] when two_d) with the given
 * attributes; returns the run's status, o kept for its output. */
static nbl_status strnorm(one **o, const char **x, int n, int two_d, const char *action, int sensitive,
                          const char **stop, int n_stop) {
  *o = one_new("StringNormalizer", 10, 1, 1);
  nbl_graph *g = G(*o);
  if (action) nbl_node_set_attr_string(g, (*o)->node, "case_change_action", action);
  nbl_node_set_attr_int(g, (*o)->node, "is_case_sensitive", sensitive);
  if (n_stop) { /* stopwords: a STRINGS attribute */
    nbl_node *nd = &g->nodes[(*o)->node];
    nbl_attr *at = nbl_arena_alloc((*o)->m->arena, sizeof(nbl_attr) * (size_t)(nd->n_attrs + 1));
    memcpy(at, nd->attrs, sizeof(nbl_attr) * (size_t)nd->n_attrs);
    memset(&at[nd->n_attrs], 0, sizeof *at);
    at[nd->n_attrs].name = "stopwords";
    at[nd->n_attrs].type = NBL_ATTR_STRINGS;
    at[nd->n_attrs].n = n_stop;
    at[nd->n_attrs].strings = (char **)stop;
    nd->attrs = at;
    nd->n_attrs++;
  }
  int64_t d[2] = {1, n};
  one_in(*o, 0, NBL_DT_STRING, two_d ? 2 : 1, two_d ? d : d + 1, x);
  return one_run(*o, 1);
}

static void expect_strings(const nbl_host_tensor *y, int rank, const int64_t *dims, const char **want, int n) {
  ck_assert_int_eq(y->dtype, NBL_DT_STRING);
  ck_assert_int_eq(y->rank, rank);
  for (int i = 0; i < rank; i++) ck_assert_int_eq(y->dims[i], dims[i]);
  for (int i = 0; i < n; i++) ck_assert_str_eq(((char *const *)y->data)[i], want[i]);
}

START_TEST(test_strnorm_hand) {
  /* case-insensitive stopwords ("the" takes "The" and "THE"), then LOWER;
   * UTF-8 bytes (U+00C4 "\xc3\x84") kept as they are */
  const char *x[5] = {"The", "Caf\xc3\x84", "THE", "Zoo", "the9"}, *stop[1] = {"the"};
  one *o;
  ck_assert_int_eq(strnorm(&o, x, 5, 0, "LOWER", 0, stop, 1), NBL_OK);
  const char *w1[3] = {"caf\xc3\x84", "zoo", "the9"};
  const int64_t d3[1] = {3}, d13[2] = {1, 3}, d11[2] = {1, 1};
  expect_strings(&o->out[0], 1, d3, w1, 3);
  one_free(o);
  /* case-sensitive: only "the" is a stopword; UPPER; [1, 5] stays two-dimensional */
  const char *x2[5] = {"the", "The", "a-b", "the", "Zz"};
  ck_assert_int_eq(strnorm(&o, x2, 5, 1, "UPPER", 1, stop, 1), NBL_OK);
  const char *w2[3] = {"THE", "A-B", "ZZ"};
  expect_strings(&o->out[0], 2, d13, w2, 3);
  one_free(o);
  /* everything a stopword: [1, 1] holding "" (ONNX's rule for an empty result) */
  const char *x3[2] = {"THE", "tHe"};
  ck_assert_int_eq(strnorm(&o, x3, 2, 1, NULL, 0, stop, 1), NBL_OK);
  const char *w3[1] = {""};
  expect_strings(&o->out[0], 2, d11, w3, 1);
  one_free(o);
  /* a bad action, and a rank-2 input of two rows: errors naming the node */
  ck_assert_int_eq(strnorm(&o, x, 5, 0, "TITLE", 0, NULL, 0), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "case_change_action 'TITLE'"));
  one_free(o);
  o = one_new("StringNormalizer", 10, 1, 1);
  const int64_t d22[2] = {2, 2};
  one_in(o, 0, NBL_DT_STRING, 2, d22, x);
  ck_assert_int_eq(one_run(o, 1), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "shape [C] or [1, C]"));
  one_free(o);
}
END_TEST

/* ------------------------------------------------------------------ edge inputs */
START_TEST(test_edge_inputs) {
  /* RoiAlign on an empty image: nothing to sample, zeros (no out-of-bounds read) */
  float roi[4] = {0, 0, 3, 3}, dummy[1] = {0};
  int64_t bi[1] = {0};
  int64_t dx[4] = {1, 2, 0, 0}, dr[2] = {1, 4}, db[1] = {1}, dy[4] = {1, 2, 1, 1};
  nbl_host_tensor in[3] = {ht(NBL_DT_FLOAT, 4, dx, dummy), ht(NBL_DT_FLOAT, 2, dr, roi), ht(NBL_DT_INT64, 1, db, bi)};
  roi_ctm = "half_pixel";
  nbl_host_tensor o = run1("RoiAlign", 16, a_roi, 3, in);
  const float z[2] = {0, 0};
  expect_f32(&o, 4, dy, z, 2, 0);
  free(o.data);
  /* a NaN score ranks last: box 1 (0.5) is selected and suppresses the identical box 0 */
  float boxes[8] = {0, 0, 1, 1, 0, 0, 1, 1}, scores[2] = {NAN, 0.5f};
  int64_t mx = 5;
  float iou = 0.5f;
  int64_t dbx[3] = {1, 2, 4}, ds[3] = {1, 1, 2}, d1[1] = {1};
  nbl_host_tensor ni[4] = {ht(NBL_DT_FLOAT, 3, dbx, boxes), ht(NBL_DT_FLOAT, 3, ds, scores),
                           ht(NBL_DT_INT64, 1, d1, &mx), ht(NBL_DT_FLOAT, 1, d1, &iou)};
  o = run1("NonMaxSuppression", 11, NULL, 4, ni);
  ck_assert_int_eq(o.dims[0], 1);
  ck_assert_int_eq(((int64_t *)o.data)[2], 1);
  free(o.data);
  /* GridSample with an infinite grid coordinate reads zero padding */
  float img[4] = {1, 2, 3, 4}, grid[2] = {INFINITY, 0};
  int64_t dxi[4] = {1, 1, 2, 2}, dg[4] = {1, 1, 1, 2}, dgy[4] = {1, 1, 1, 1};
  nbl_host_tensor gi[2] = {ht(NBL_DT_FLOAT, 4, dxi, img), ht(NBL_DT_FLOAT, 4, dg, grid)};
  gs_mode = "nearest";
  gs_pad_mode = "zeros";
  o = run1("GridSample", 16, a_gs, 2, gi);
  const float gz = 0;
  expect_f32(&o, 4, dgy, &gz, 1, 0);
  free(o.data);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ops_misc");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_lstm_one_step);
  tcase_add_test(tc, test_gru_one_step);
  tcase_add_test(tc, test_rnn_seq_lens_directions);
  tcase_add_test(tc, test_rnn_errors);
  tcase_add_test(tc, test_rnn_fast_vs_ref);
  tcase_add_test(tc, test_det_hand);
  tcase_add_test(tc, test_nms_hand);
  tcase_add_test(tc, test_nms_fast_vs_ref);
  tcase_add_test(tc, test_windows_hand);
  tcase_add_test(tc, test_dft_hand);
  tcase_add_test(tc, test_stft_hand);
  tcase_add_test(tc, test_melweight_hand);
  tcase_add_test(tc, test_gridsample_hand);
  tcase_add_test(tc, test_roialign_hand);
  tcase_add_test(tc, test_roialign_fast);
  tcase_add_test(tc, test_tfidf_hand);
  tcase_add_test(tc, test_strnorm_hand);
  tcase_add_test(tc, test_edge_inputs);
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
