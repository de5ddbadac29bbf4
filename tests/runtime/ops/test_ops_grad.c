/* test_ops_grad.c - the backward-op kernels of training (runtime/ops/grad_*.c).
 *
 * Every backward kernel is checked against central finite differences of the
 * FORWARD kernel in float64 (tests/grad_check.h: relative error of the whole
 * gradient <= 1e-6) on small random shapes: broadcasting, strided / padded /
 * grouped / depthwise / dilated / 1-D / 3-D convolution, every pooling mode
 * (count_include_pad, ceil_mode, dilations, storage_order), BatchNorm with
 * batch statistics, LayerNorm with a broadcast scale, the cross-entropy loss
 * with weights / ignore_index / every reduction. Plus hand-computed cases, the
 * float32 fast kernels against the reference at awkward sizes,
 * QuantizeInt4Grad with the forward's scale against its own scan, PyTorch
 * autograd for ConvGrad and BatchNormalizationGrad (fixtures written by
 * tests/grad/torch_grads.py when torch is there) and clear errors on bad
 * input. Each finite-difference check prints one "gradcheck" line (op, case,
 * error) so the test log shows the worst error per op. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grad_check.h"
#include "ck_elem.h"

#define MS "com.microsoft"
#define FD_TOL 1e-6
#define FD_H 1e-6

/* Assert the finite-difference error of grad w.r.t. forward input fi. */
static void expect_fd(const char *op, const char *what, runner *f, tens *fin, int fi, int fout, const tens *dY,
                      const nbl_host_tensor *grad) {
  double e = fd_error(f, fin, fi, fout, dY, grad, FD_H);
  printf("gradcheck %-36s %-34s rel err %.2e\n", op, what, e);
  ck_assert_msg(e <= FD_TOL, "%s %s: finite-difference rel err %.3e > %.0e", op, what, e, FD_TOL);
}

/* Run the forward node on fin (float64, reference kernels) and make a random
 * dY of its output fout's shape; the runner stays for fd_error. */
static runner *fwd_run(const char *dom, const char *op, int opset, const attr *a, int n_in, tens *fin, int n_out,
                       int fout, tens *dY) {
  runner *f = runner_new(dom, op, opset, a, n_in, fin, n_out, NULL, 1);
  nbl_status st = runner_run(f, fin);
  ck_assert_msg(st == NBL_OK, "forward %s failed: %s", op, nbl_last_error());
  *dY = t_rand(NBL_DT_DOUBLE, -1, 1, f->out[fout].rank, f->out[fout].dims);
  return f;
}

/* Run a backward node (reference kernels) and return its runner. */
static runner *bwd_run(const char *op, const attr *a, int n_in, tens *bin, int n_out, const int *want) {
  runner *b = runner_new(op[0] == '!' ? "ai.nibble" : MS, op[0] == '!' ? op + 1 : op, 1, a, n_in, bin, n_out,
                         want, 1);
  nbl_status st = runner_run(b, bin);
  ck_assert_msg(st == NBL_OK, "backward %s failed: %s", op, nbl_last_error());
  return b;
}

static void free_all(tens *t, int n) {
  for (int i = 0; i < n; i++) t_free(&t[i]);
}

/* max |a - b| / max |b| over two outputs of the same shape */
static double rel_diff(const nbl_host_tensor *a, const nbl_host_tensor *b) {
  int64_t n = (int64_t)(b->nbytes / nbl_dtype_nbytes(b->dtype, 1));
  double d = 0, m = 0;
  for (int64_t i = 0; i < n; i++) {
    d = fmax(d, fabs(h_get(a, i) - h_get(b, i)));
    m = fmax(m, fabs(h_get(b, i)));
  }
  return m > 0 ? d / m : d;
}

/* ------------------------------------------------------------------ activations */

/* op's forward fop on X [3, 4, 5] (values away from Relu's kink); the
 * backward gets (dY, X) or (dY, Y) as `use_y` says. */
static void act_case(const char *bop, const char *fop, int opset, const attr *a, int use_y) {
  tens fin[1] = {t_rand(NBL_DT_DOUBLE, -2, 2, DIMS(3, 4, 5))};
  for (int64_t i = 0; i < fin[0].n; i++) {
    double *v = (double *)fin[0].data + i;
    if (fabs(*v) < 0.05) *v += 0.1;
  }
  tens dY;
  runner *f = fwd_run("", fop, opset, a, 1, fin, 1, 0, &dY);
  tens bin[2] = {dY, use_y ? t_copy_host(&f->out[0]) : t_clone(&fin[0])};
  runner *b = bwd_run(bop, a, 2, bin, 1, NULL);
  expect_fd(bop, fop, f, fin, 0, 0, &dY, &b->out[0]);
  runner_free(b);
  runner_free(f);
  free_all(bin, 2);
  free_all(fin, 1);
}

START_TEST(test_activations_fd) {
  act_case("ReluGrad", "Relu", 14, NULL, 0);
  act_case("SigmoidGrad", "Sigmoid", 13, NULL, 1);
  act_case("TanhGrad", "Tanh", 13, NULL, 1);
  act_case("GeluGrad", "Gelu", 20, NULL, 0);
  act_case("FastGeluGrad", "Gelu", 20, (attr[]){AS("approximate", "tanh"), AEND}, 0);
  act_case("LeakyReluGrad", "LeakyRelu", 16, (attr[]){AF("alpha", 0.1f), AEND}, 1);
  act_case("LeakyReluGrad", "LeakyRelu", 16, (attr[]){AF("alpha", 0.01f), AEND}, 1); /* the default */
}
END_TEST

/* Hand values: ReluGrad passes dY where X > 0 (0 at X == 0); TanhGrad at Y =
 * 0.5 is 0.75 dY; SigmoidGrad at Y = 0.25 is 0.1875 dY. */
START_TEST(test_activations_hand) {
  float dy[4] = {1, 2, 3, 4}, x[4] = {-1, 0, 0.5f, 2};
  tens in[2] = {t_new(NBL_DT_FLOAT, DIMS(4)), t_new(NBL_DT_FLOAT, DIMS(4))};
  memcpy(in[0].data, dy, sizeof dy);
  memcpy(in[1].data, x, sizeof x);
  for (int ref = 0; ref < 2; ref++) {
    runner *b = runner_new(MS, "ReluGrad", 1, NULL, 2, in, 1, NULL, ref);
    ck_assert_int_eq(runner_run(b, in), NBL_OK);
    const float *o = b->out[0].data;
    ck_assert(o[0] == 0 && o[1] == 0 && o[2] == 3 && o[3] == 4);
    runner_free(b);
  }
  float y[4] = {0.5f, 0.25f, 0, 1};
  memcpy(in[1].data, y, sizeof y);
  runner *b = runner_new(MS, "TanhGrad", 1, NULL, 2, in, 1, NULL, 1);
  ck_assert_int_eq(runner_run(b, in), NBL_OK);
  ck_assert_float_eq_tol(((const float *)b->out[0].data)[0], 0.75f, 1e-7);
  ck_assert_float_eq_tol(((const float *)b->out[0].data)[3], 0.0f, 1e-7);
  runner_free(b);
  b = runner_new(MS, "SigmoidGrad", 1, NULL, 2, in, 1, NULL, 1);
  ck_assert_int_eq(runner_run(b, in), NBL_OK);
  ck_assert_float_eq_tol(((const float *)b->out[0].data)[1], 2 * 0.1875f, 1e-7);
  runner_free(b);
  free_all(in, 2);
}
END_TEST

/* ------------------------------------------------------------------ dropout */

/* y = mask * x / (1 - ratio) for a fixed mask, written as Mul(X, S) with S =
 * mask / (1 - ratio): DropoutGrad (bool mask) and BitmaskDropoutGrad (the
 * same mask packed into uint32 words, 37 elements: a partial last word). */
START_TEST(test_dropout_fd) {
  const double ratios[3] = {0.3, 0.5 /* default */, 0.0};
  for (int bit = 0; bit < 2; bit++)
    for (int k = 0; k < 3; k++) {
      double ratio = ratios[k];
      tens fin[2] = {T_D(37), t_new(NBL_DT_DOUBLE, DIMS(37))};
      tens mask = t_new(NBL_DT_BOOL, DIMS(37)), words = t_new(NBL_DT_UINT32, DIMS(2));
      for (int64_t i = 0; i < 37; i++) {
        int kept = ratio == 0 || gc_rand() >= 0.4;
        ((uint8_t *)mask.data)[i] = (uint8_t)kept;
        ((uint32_t *)words.data)[i / 32] |= (uint32_t)kept << (i % 32);
        ((double *)fin[1].data)[i] = kept / (1 - ratio);
      }
      tens dY;
      runner *f = fwd_run("", "Mul", 14, NULL, 2, fin, 1, 0, &dY);
      tens bin[3] = {dY, bit ? words : mask, k == 1 ? NONE : t_scalar(k ? NBL_DT_FLOAT : NBL_DT_DOUBLE, ratio)};
      runner *b = bwd_run(bit ? "BitmaskDropoutGrad" : "DropoutGrad", NULL, 3, bin, 1, NULL);
      char what[48];
      snprintf(what, sizeof what, "mask x / (1 - %.1f)", ratio);
      expect_fd(bit ? "BitmaskDropoutGrad" : "DropoutGrad", what, f, fin, 0, 0, &dY, &b->out[0]);
      runner_free(b);
      runner_free(f);
      t_free(&dY);
      t_free(&bin[2]);
      t_free(&mask);
      t_free(&words);
      free_all(fin, 2);
    }
}
END_TEST

/* ------------------------------------------------------------------ BroadcastGradientArgs */

/* Hand cases (ONNX Runtime's order: last axis first), then for each pair of
 * shapes: dA = reduce-sum over a_axes of dY * B (broadcast), reshaped to A,
 * against finite differences of Mul(A, B); the same for B. */
static void bga_case(int ra, const int64_t *a, int rb, const int64_t *b) {
  tens fin[2] = {t_rand(NBL_DT_DOUBLE, -1, 1, ra, a), t_rand(NBL_DT_DOUBLE, -1, 1, rb, b)};
  tens dY;
  runner *f = fwd_run("", "Mul", 14, NULL, 2, fin, 1, 0, &dY);
  tens bin[2] = {t_shape(&fin[0]), t_shape(&fin[1])};
  runner *g = bwd_run("BroadcastGradientArgs", NULL, 2, bin, 2, NULL);
  for (int side = 0; side < 2; side++) {
    const nbl_host_tensor *axes = &g->out[side];
    const tens *me = &fin[side], *other = &fin[1 - side];
    /* sum dY * other over the axes: zero those coordinates of each output index */
    int r = dY.rank;
    int64_t red[8], str[8], nd = 1;
    memcpy(red, dY.dims, sizeof red);
    for (int64_t k = 0; k < axes->dims[0]; k++) red[((const int64_t *)axes->data)[k]] = 1;
    for (int d = r - 1; d >= 0; d--) {
      str[d] = nd;
      nd *= red[d];
    }
    ck_assert_int_eq(nd, me->n); /* the reduced shape reshapes to the operand's */
    nbl_host_tensor grad = {.dtype = NBL_DT_DOUBLE, .rank = me->rank, .nbytes = sizeof(double) * (size_t)me->n};
    double *gd = calloc((size_t)(me->n ? me->n : 1), sizeof(double));
    grad.data = gd;
    for (int64_t i = 0; i < dY.n; i++) {
      int64_t rem = i, ri = 0, oi = 0, ostr = 1;
      for (int d = r - 1; d >= 0; d--) {
        int64_t cd = rem % dY.dims[d];
        rem /= dY.dims[d];
        ri += (red[d] == 1 ? 0 : cd) * str[d];
        int od = d - (r - other->rank);
        if (od >= 0) {
          oi += (other->dims[od] == 1 ? 0 : cd) * ostr;
          ostr *= other->dims[od];
        }
      }
      gd[ri] += t_get(&dY, i) * t_get(other, oi);
    }
    expect_fd("BroadcastGradientArgs", side ? "Mul dB via b_axes" : "Mul dA via a_axes", f, fin, side, 0, &dY, &grad);
    free(gd);
  }
  runner_free(g);
  runner_free(f);
  t_free(&dY);
  free_all(bin, 2);
  free_all(fin, 2);
}

START_TEST(test_broadcast_grad_args) {
  /* hand: [2,1,4] vs [3,1] -> a_axes [1], b_axes [2, 0] */
  tens in[2] = {T_I64(2, 1, 4), T_I64(3, 1)};
  runner *g = bwd_run("BroadcastGradientArgs", NULL, 2, in, 2, NULL);
  ck_assert_int_eq(g->out[0].dims[0], 1);
  ck_assert_int_eq(((const int64_t *)g->out[0].data)[0], 1);
  ck_assert_int_eq(g->out[1].dims[0], 2);
  ck_assert_int_eq(((const int64_t *)g->out[1].data)[0], 2);
  ck_assert_int_eq(((const int64_t *)g->out[1].data)[1], 0);
  runner_free(g);
  free_all(in, 2);
  /* incompatible shapes: a clear error */
  tens bad[2] = {T_I64(2, 3), T_I64(4, 3)};
  runner *e = runner_new(MS, "BroadcastGradientArgs", 1, NULL, 2, bad, 2, NULL, 1);
  ck_assert_int_eq(runner_run(e, bad), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "do not broadcast"));
  runner_free(e);
  free_all(bad, 2);
  bga_case(DIMS(2, 3, 4), DIMS(4));
  bga_case(DIMS(2, 1, 4), DIMS(3, 1));
  bga_case(DIMS(5), DIMS(2, 3, 5));
  bga_case(DIMS(1, 3, 1), DIMS(2, 1, 4));
  bga_case(DIMS(2, 3), DIMS(2, 3));
  bga_case(DIMS(1), DIMS(2, 2));
}
END_TEST

/* ------------------------------------------------------------------ QuantizeInt4Grad */

/* The straight-through gradient is the derivative of a clip: PACT clips to
 * [0, alpha] (dX = dY inside, dAlpha = sum of dY above alpha); the other
 * modes pass where the code before the clamp, round(X/s) + z, lies in
 * [qmin, qmax] (PyTorch's fake-quantize mask), i.e. for a fixed scale
 * X in [s (qmin - 1/2), s (qmax + 1/2)) (half-even: -8.5 rounds to -8, 7.5 to
 * 8): finite differences of Clip(X, lo, hi) on the same values (float32
 * values in double, none on a boundary). */
static void q4_case(const char *what, const attr *a, double lo, double hi, int pact) {
  tens xf = t_rand(NBL_DT_FLOAT, -1, 2.2, DIMS(4, 9));
  tens fin[3] = {t_convert(&xf, NBL_DT_DOUBLE), t_scalar(NBL_DT_DOUBLE, lo), t_scalar(NBL_DT_DOUBLE, hi)};
  tens dY;
  runner *f = fwd_run("", "Clip", 13, NULL, 3, fin, 1, 0, &dY);
  tens dYf = t_convert(&dY, NBL_DT_FLOAT), dYd = t_convert(&dYf, NBL_DT_DOUBLE); /* float-exact dY */
  tens bin[3] = {dYf, xf, pact ? t_scalar(NBL_DT_FLOAT, hi) : NONE};
  runner *b = bwd_run("!QuantizeInt4Grad", a, 3, bin, 2, (int[]){1, pact});
  expect_fd("QuantizeInt4Grad", what, f, fin, 0, 0, &dYd, &b->out[0]);
  if (pact) expect_fd("QuantizeInt4Grad", "pact dAlpha", f, fin, 2, 0, &dYd, &b->out[1]);
  runner_free(b);
  runner_free(f);
  free_all(bin, 3);
  free_all(fin, 3);
  t_free(&dY);
  t_free(&dYd);
}

START_TEST(test_quantize_int4_grad) {
  q4_case("pact dX", (attr[]){AS("scale_source", "pact"), AEND}, 0.0, 1.3, 1);
  /* fixed scale 0.25, 4-bit symmetric: codes -8..7, mask [-2.125, 1.875); the data reaches 2.2 */
  q4_case("fixed scale dX", (attr[]){AS("scale_source", "fixed"), AF("scale", 0.25f), AEND}, -2.125, 1.875, 0);
  q4_case("fixed narrow affine dX",
          (attr[]){AS("scale_source", "fixed"), AF("scale", 0.125f), AS("mode", "affine"), AI("bits", 3), AEND},
          -0.5625, 0.4375, 0);
  /* max scale: every element is representable, dX = dY exactly */
  tens in[2] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(17)), t_rand(NBL_DT_FLOAT, -3, 3, DIMS(17))};
  runner *b = bwd_run("!QuantizeInt4Grad", NULL, 2, in, 1, NULL);
  ck_assert_int_eq(memcmp(b->out[0].data, in[0].data, 17 * sizeof(float)), 0);
  runner_free(b);
  /* the element that sets a max scale: s = 0.6024338/7 in float, s*7 = 0.60243378... is just
   * below it; the forward's code round(x/s) = 7 is unclamped, so the gradient passes
   * (the mask of PyTorch's fake_quantize), for symmetric and affine max scales */
  const float top[3] = {0.6024338f, -0.21f, 0.05f}, bot[3] = {-0.6024338f, 0.31f, 0.0f};
  for (int k = 0; k < 4; k++) {
    tens q[2] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(3)), t_new(NBL_DT_FLOAT, DIMS(3))};
    memcpy(q[1].data, k % 2 ? bot : top, sizeof top);
    const attr *qa = k < 2 ? NULL : (attr[]){AS("mode", "affine"), AEND};
    runner *m = bwd_run("!QuantizeInt4Grad", qa, 2, q, 1, NULL);
    ck_assert_msg(memcmp(m->out[0].data, q[0].data, sizeof top) == 0, "case %d: %g %g %g", k,
                  ((float *)m->out[0].data)[0], ((float *)m->out[0].data)[1], ((float *)m->out[0].data)[2]);
    runner_free(m);
    free_all(q, 2);
  }
  /* pact without alpha: clear error */
  runner *e = runner_new("ai.nibble", "QuantizeInt4Grad", 1, (attr[]){AS("scale_source", "pact"), AEND}, 2, in, 1,
                         NULL, 1);
  ck_assert_int_eq(runner_run(e, in), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "alpha"));
  runner_free(e);
  free_all(in, 2);
}
END_TEST

/* QuantizeInt4Grad given the forward's scale and zero_point (inputs 3 and 4,
 * what build-training wires) against the same node choosing them from X
 * again: the same bits, fast and reference kernels, for symmetric and
 * affine max scales of 4 and 8 bits, sawb, narrow, stochastic rounding and
 * PACT (whose clip is alpha: the extra inputs change nothing), with and
 * without NaN / +-Inf in X; a bad scale or zero_point is a clear error. */
START_TEST(test_quantize_int4_grad_given) {
  const attr *cfgs[] = {
      NULL,
      (attr[]){AS("mode", "affine"), AEND},
      (attr[]){AS("mode", "affine"), AI("bits", 8), AEND},
      (attr[]){AS("scale_source", "sawb"), AEND},
      (attr[]){AS("scale_source", "sawb"), AI("bits", 8), AEND},
      (attr[]){AI("narrow", 1), AEND},
      (attr[]){AS("mode", "affine"), AS("rounding", "stochastic"), AI("seed", 7), AEND},
      (attr[]){AS("scale_source", "pact"), AS("mode", "affine"), AEND},
  };
  for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++)
    for (int specials = 0; specials < 2; specials++) {
      int pact = k == sizeof cfgs / sizeof cfgs[0] - 1;
      tens x = t_rand(NBL_DT_FLOAT, -2.0, 3.0, DIMS(16, 37));
      float *xv = x.data;
      xv[3] = 3.0f; /* an exact top for the max scales */
      if (specials) xv[5] = NAN, xv[100] = INFINITY, xv[200] = -INFINITY;
      tens fin[2] = {x, pact ? t_scalar(NBL_DT_FLOAT, 1.7) : NONE};
      runner *f = runner_new("ai.nibble", "QuantizeInt4", 1, cfgs[k], 2, fin, 3, NULL, 0);
      ck_assert_msg(runner_run(f, fin) == NBL_OK, "forward: %s", nbl_last_error());
      tens bin[5] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(16, 37)), x, fin[1], t_copy_host(&f->out[1]),
                     t_copy_host(&f->out[2])};
      ck_assert_int_eq(bin[3].dt, NBL_DT_FLOAT);
      ck_assert_int_eq(bin[4].dt, NBL_DT_INT8);
      runner *r[4];
      for (int v = 0; v < 4; v++) { /* v & 1: given; v & 2: reference kernels */
        r[v] = runner_new("ai.nibble", "QuantizeInt4Grad", 1, cfgs[k], v & 1 ? 5 : 3, bin, 2, (int[]){1, pact},
                          v >> 1);
        ck_assert_msg(runner_run(r[v], bin) == NBL_OK, "config %zu variant %d: %s", k, v, nbl_last_error());
      }
      int passed = 0;
      for (int64_t i = 0; i < x.n; i++) passed += ((float *)r[0]->out[0].data)[i] != 0.0f;
      ck_assert_int_gt(passed, x.n / 4); /* a real mask (PACT passes [0, 1.7] only) */
      for (int v = 1; v < 4; v++)
        for (int o = 0; o < 1 + pact; o++)
          ck_assert_msg(r[v]->out[o].nbytes == r[0]->out[o].nbytes &&
                            !memcmp(r[v]->out[o].data, r[0]->out[o].data, r[0]->out[o].nbytes),
                        "config %zu specials %d variant %d output %d differs", k, specials, v, o);
      for (int v = 0; v < 4; v++) runner_free(r[v]);
      runner_free(f);
      t_free(&bin[0]);
      free_all(bin + 3, 2);
      free_all(fin, 2);
    }
  /* a scale that is not a positive float32 scalar, a zero_point not int8: errors naming the input */
  tens b[5] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(7)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(7)), NONE,
               t_scalar(NBL_DT_FLOAT, 0.0), t_new(NBL_DT_INT8, 0, NULL)};
  for (int ref = 0; ref < 2; ref++) {
    runner *e = runner_new("ai.nibble", "QuantizeInt4Grad", 1, NULL, 5, b, 1, NULL, ref);
    ck_assert_int_eq(runner_run(e, b), NBL_ERR_INVALID_MODEL);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "input scale"));
    runner_free(e);
  }
  ((float *)b[3].data)[0] = 0.5f;
  t_free(&b[4]);
  b[4] = t_scalar(NBL_DT_FLOAT, 0.0);
  runner *e = runner_new("ai.nibble", "QuantizeInt4Grad", 1, NULL, 5, b, 1, NULL, 0);
  ck_assert_int_eq(runner_run(e, b), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "input zero_point"));
  runner_free(e);
  free_all(b, 5);
}
END_TEST

/* ------------------------------------------------------------------ softmax */

static void softmax_case(const char *bop, const char *fop, int opset, const attr *a, int rank, const int64_t *dims) {
  tens fin[1] = {t_rand(NBL_DT_DOUBLE, -2, 2, rank, dims)};
  tens dY;
  runner *f = fwd_run("", fop, opset, a, 1, fin, 1, 0, &dY);
  tens bin[2] = {dY, t_copy_host(&f->out[0])};
  runner *b = bwd_run(bop, a, 2, bin, 1, NULL);
  char what[48];
  snprintf(what, sizeof what, "%s opset %d axis %lld", fop, opset, a ? (long long)a[0].i : -99LL);
  expect_fd(bop, what, f, fin, 0, 0, &dY, &b->out[0]);
  runner_free(b);
  runner_free(f);
  free_all(bin, 2);
  free_all(fin, 1);
}

START_TEST(test_softmax_fd) {
  attr ax1[] = {AI("axis", 1), AEND}, axm1[] = {AI("axis", -1), AEND}, ax0[] = {AI("axis", 0), AEND};
  softmax_case("SoftmaxGrad_13", "Softmax", 13, ax1, DIMS(2, 5, 3));
  softmax_case("SoftmaxGrad_13", "Softmax", 13, axm1, DIMS(3, 4));
  softmax_case("SoftmaxGrad_13", "Softmax", 13, NULL, DIMS(2, 3, 4)); /* default -1 */
  softmax_case("LogSoftmaxGrad_13", "LogSoftmax", 13, ax1, DIMS(2, 5, 3));
  softmax_case("LogSoftmaxGrad_13", "LogSoftmax", 13, ax0, DIMS(4, 3));
  /* opset < 13: coerced to 2-D at axis */
  softmax_case("SoftmaxGrad", "Softmax", 11, ax1, DIMS(2, 3, 4));
  softmax_case("LogSoftmaxGrad", "LogSoftmax", 11, ax1, DIMS(2, 3, 4));
  softmax_case("LogSoftmaxGrad", "LogSoftmax", 11, ax0, DIMS(2, 3));
}
END_TEST

/* ------------------------------------------------------------------ softmax cross-entropy */

/* SoftmaxCrossEntropyLoss (opset 13) forward; the Grad op gets (dY,
 * log_prob, label, weight); the Internal one takes ignore_index as an input
 * and adds `bias`. */
static void sce_case(const char *red, int rank, const int64_t *dims, int weighted, int ignore, int internal) {
  int64_t N = dims[0], C = dims[1], ld[8], D = 1;
  ld[0] = N;
  for (int d = 2; d < rank; d++) D *= (ld[d - 1] = dims[d]);
  tens label = t_new(NBL_DT_INT64, rank - 1, ld);
  for (int64_t i = 0; i < N * D; i++) ((int64_t *)label.data)[i] = (int64_t)(gc_rand() * (double)C);
  if (ignore) ((int64_t *)label.data)[1] = -7;
  tens fin[3] = {t_rand(NBL_DT_DOUBLE, -2, 2, rank, dims), label,
                 weighted ? t_rand(NBL_DT_DOUBLE, 0.5, 2, DIMS(C)) : NONE};
  attr fa[3] = {AS("reduction", red), ignore ? AI("ignore_index", -7) : AEND, AEND};
  tens dY;
  runner *f = fwd_run("", "SoftmaxCrossEntropyLoss", 13, fa, 3, fin, 2, 0, &dY);
  tens lp = t_copy_host(&f->out[1]), bias = internal ? t_rand(NBL_DT_DOUBLE, -1, 1, rank, dims) : NONE;
  tens bin[6] = {dY, lp, label, fin[2], internal && ignore ? t_scalar(NBL_DT_INT64, -7) : NONE, bias};
  attr ba[2] = {AS("reduction", red), AEND};
  runner *b = bwd_run(internal ? "SoftmaxCrossEntropyLossInternalGrad" : "SoftmaxCrossEntropyLossGrad",
                      internal ? ba : fa, internal ? 6 : 4, bin, 1, NULL);
  char what[64];
  snprintf(what, sizeof what, "%s rank %d%s%s", red, rank, weighted ? " weight" : "", ignore ? " ignore" : "");
  if (!internal) {
    expect_fd("SoftmaxCrossEntropyLossGrad", what, f, fin, 0, 0, &dY, &b->out[0]);
  } else { /* d_logits - bias is the gradient */
    tens g = t_copy_host(&b->out[0]);
    for (int64_t i = 0; i < g.n; i++) ((double *)g.data)[i] -= t_get(&bias, i);
    nbl_host_tensor gh = {.dtype = NBL_DT_DOUBLE, .rank = g.rank, .data = g.data, .nbytes = sizeof(double) * (size_t)g.n};
    expect_fd("SoftmaxCrossEntropyLossInternalGrad", what, f, fin, 0, 0, &dY, &gh);
    t_free(&g);
  }
  runner_free(b);
  runner_free(f);
  free_all(bin, 6);
  t_free(&fin[0]);
}

START_TEST(test_sce_fd) {
  const char *reds[3] = {"mean", "sum", "none"};
  for (int r = 0; r < 3; r++) {
    sce_case(reds[r], DIMS(4, 5), 0, 0, 0);
    sce_case(reds[r], DIMS(3, 4, 2, 2), 1, 0, 0);
    sce_case(reds[r], DIMS(4, 3), 1, 1, 0);
    sce_case(reds[r], DIMS(2, 3, 5), 0, 1, 1);
  }
  sce_case("mean", DIMS(3, 4, 2), 1, 1, 1);
}
END_TEST

/* Hand: logits [0, 0] (log_prob = log 0.5 each), label 1, mean over one
 * sample: d_logits = (0.5, -0.5) * dY. */
START_TEST(test_sce_hand) {
  double lp = log(0.5);
  tens in[3] = {t_scalar(NBL_DT_DOUBLE, 2.0), t_new(NBL_DT_DOUBLE, DIMS(1, 2)), T_I64(1)};
  ((double *)in[1].data)[0] = ((double *)in[1].data)[1] = lp;
  runner *b = bwd_run("SoftmaxCrossEntropyLossGrad", NULL, 3, in, 1, NULL);
  ck_assert_double_eq_tol(((const double *)b->out[0].data)[0], 1.0, 1e-15);
  ck_assert_double_eq_tol(((const double *)b->out[0].data)[1], -1.0, 1e-15);
  runner_free(b);
  /* a label out of range is a clear error */
  ((int64_t *)in[2].data)[0] = 2;
  runner *e = runner_new(MS, "SoftmaxCrossEntropyLossGrad", 1, NULL, 3, in, 1, NULL, 1);
  ck_assert_int_eq(runner_run(e, in), NBL_ERR_RUNTIME);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "outside"));
  runner_free(e);
  free_all(in, 3);
}
END_TEST

/* ------------------------------------------------------------------ Gather / Slice */

static void gather_case(int axis, int rank, const int64_t *dims, nbl_dtype idt, int qr, const int64_t *qd,
                        const int64_t *idx) {
  tens ind = t_new(idt, qr, qd);
  for (int64_t i = 0; i < ind.n; i++) {
    if (idt == NBL_DT_INT64) ((int64_t *)ind.data)[i] = idx[i];
    else ((int32_t *)ind.data)[i] = (int32_t)idx[i];
  }
  tens fin[2] = {t_rand(NBL_DT_DOUBLE, -1, 1, rank, dims), ind};
  attr a[2] = {AI("axis", axis), AEND};
  tens dY;
  runner *f = fwd_run("", "Gather", 13, a, 2, fin, 1, 0, &dY);
  tens bin[3] = {t_shape(&fin[0]), ind, dY};
  runner *b = bwd_run("GatherGrad", a, 3, bin, 1, NULL);
  char what[48];
  snprintf(what, sizeof what, "axis %d %s indices, repeats", axis, idt == NBL_DT_INT64 ? "int64" : "int32");
  expect_fd("GatherGrad", what, f, fin, 0, 0, &dY, &b->out[0]);
  runner_free(b);
  runner_free(f);
  free_all(bin, 3);
  t_free(&fin[0]);
}

START_TEST(test_gather_grad) {
  gather_case(1, DIMS(3, 4, 2), NBL_DT_INT64, DIMS(3, 2), (const int64_t[]){1, -1, 3, 1, 0, 1});
  gather_case(0, DIMS(5, 3), NBL_DT_INT32, DIMS(4), (const int64_t[]){4, 0, 4, -5});
  gather_case(-1, DIMS(2, 6), NBL_DT_INT64, DIMS(1), (const int64_t[]){2});
  /* out-of-range index: a clear error */
  tens in[3] = {T_I64(3, 2), T_I64(3), T_D(1, 2)};
  runner *e = runner_new(MS, "GatherGrad", 1, NULL, 3, in, 1, NULL, 1);
  ck_assert_int_eq(runner_run(e, in), NBL_ERR_RUNTIME);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "outside"));
  runner_free(e);
  free_all(in, 3);
}
END_TEST

static void slice_case(const char *what, int rank, const int64_t *dims, tens starts, tens ends, tens axes, tens steps) {
  tens fin[5] = {t_rand(NBL_DT_DOUBLE, -1, 1, rank, dims), starts, ends, axes, steps};
  tens dY;
  runner *f = fwd_run("", "Slice", 13, NULL, 5, fin, 1, 0, &dY);
  tens bin[6] = {dY, t_shape(&fin[0]), starts, ends, axes, steps};
  runner *b = bwd_run("SliceGrad", NULL, 6, bin, 1, NULL);
  expect_fd("SliceGrad", what, f, fin, 0, 0, &dY, &b->out[0]);
  runner_free(b);
  runner_free(f);
  t_free(&bin[0]);
  t_free(&bin[1]);
  free_all(fin, 5);
}

START_TEST(test_slice_grad) {
  slice_case("axes, steps 2 and -1", DIMS(5, 6, 4), T_I64(1, -1), T_I64(4, -10), T_I64(0, 2), T_I64(2, -1));
  slice_case("clamped ends, no axes", DIMS(4, 3), T_I64(-100, 1), T_I64(100, 3), NONE, NONE);
  slice_case("step 3 on one axis", DIMS(7, 2), T_I64(0), T_I64(7), T_I64(0), T_I64(3));
  slice_case("empty slice", DIMS(3, 3), T_I64(2), T_I64(1), T_I64(1), NONE);
}
END_TEST

/* ------------------------------------------------------------------ convolution */

/* The float32 fast kernel against the reference on the same (float) inputs:
 * every requested output within tol of the reference (max-abs relative). */
static void fast_vs_ref(const char *op, const char *what, const attr *a, int n_in, const tens *bin64, int n_out,
                        double tol) {
  tens bin[8];
  for (int i = 0; i < n_in; i++)
    bin[i] = bin64[i].dt == NBL_DT_DOUBLE ? t_convert(&bin64[i], NBL_DT_FLOAT) : bin64[i];
  runner *r = runner_new(MS, op, 1, a, n_in, bin, n_out, NULL, 1), *q = runner_new(MS, op, 1, a, n_in, bin, n_out, NULL, 0);
  ck_assert_msg(runner_run(r, bin) == NBL_OK, "%s ref: %s", op, nbl_last_error());
  ck_assert_msg(runner_run(q, bin) == NBL_OK, "%s fast: %s", op, nbl_last_error());
  for (int o = 0; o < n_out; o++) {
    double e = rel_diff(&q->out[o], &r->out[o]);
    printf("fastcheck %-36s %-28s out %d rel diff %.2e\n", op, what, o, e);
    ck_assert_msg(e <= tol, "%s %s output %d: fast vs reference %.3e > %.0e", op, what, o, e, tol);
  }
  runner_free(r);
  runner_free(q);
  for (int i = 0; i < n_in; i++)
    if (bin64[i].dt == NBL_DT_DOUBLE) t_free(&bin[i]);
}

#define CONV_FAST_TOL 1e-5 /* float32 GEMM sums vs double sums, relative to the largest element */

/* Conv (transposed = 0) or ConvTranspose (1) with bias on X and W, M output
 * channels: dX, dW and dB of the backward op against finite differences,
 * then (ConvGrad) the float32 fast kernel against the reference. */
static void conv_case(const char *what, int transposed, int64_t M, tens X, tens W, const attr *a) {
  tens fin[3] = {X, W, t_rand(NBL_DT_DOUBLE, -1, 1, DIMS(M))};
  tens dY;
  runner *f = fwd_run("", transposed ? "ConvTranspose" : "Conv", 11, a, 3, fin, 1, 0, &dY);
  tens bin[3] = {dY, X, W};
  const char *op = transposed ? "ConvTransposeGrad" : "ConvGrad";
  runner *b = bwd_run(op, a, 3, bin, 3, NULL);
  char w2[64];
  static const char *const part[3] = {"dX", "dW", "dB"};
  for (int i = 0; i < 3; i++) {
    snprintf(w2, sizeof w2, "%s %s", what, part[i]);
    expect_fd(op, w2, f, fin, i, 0, &dY, &b->out[i]);
  }
  runner_free(b);
  /* one output at a time gives the same values */
  for (int i = 0; i < 3; i++) {
    int want[3] = {i == 0, i == 1, i == 2};
    runner *one = bwd_run(op, a, 3, bin, 3, want);
    runner *all = bwd_run(op, a, 3, bin, 3, NULL);
    ck_assert_double_eq(rel_diff(&one->out[0], &all->out[i]), 0);
    runner_free(one);
    runner_free(all);
  }
  if (!transposed) fast_vs_ref(op, what, a, 3, bin, 3, CONV_FAST_TOL);
  runner_free(f);
  free_all(fin, 3);
  t_free(&dY);
}

START_TEST(test_conv_grad_fd) {
  conv_case("2-D 3x3 pad 1", 0, 4, T_D(2, 3, 6, 5), T_D(4, 3, 3, 3), (attr[]){AV("pads", 1, 1, 1, 1), AEND});
  conv_case("stride 2, 3x2, asymmetric pads", 0, 3, T_D(2, 2, 7, 6), T_D(3, 2, 3, 2),
            (attr[]){AV("strides", 2, 2), AV("pads", 0, 1, 1, 0), AEND});
  conv_case("groups 2", 0, 6, T_D(1, 4, 5, 5), T_D(6, 2, 3, 3),
            (attr[]){AI("group", 2), AV("pads", 1, 0, 1, 2), AEND});
  conv_case("depthwise", 0, 3, T_D(2, 3, 6, 7), T_D(3, 1, 3, 3),
            (attr[]){AI("group", 3), AV("pads", 1, 1, 1, 1), AV("strides", 2, 1), AEND});
  conv_case("depthwise multiplier 2", 0, 6, T_D(1, 3, 5, 5), T_D(6, 1, 3, 3), (attr[]){AI("group", 3), AEND});
  conv_case("dilation 2, pad 2", 0, 2, T_D(1, 2, 7, 8), T_D(2, 2, 3, 3),
            (attr[]){AV("dilations", 2, 2), AV("pads", 2, 2, 2, 2), AEND});
  conv_case("1-D stride 2", 0, 3, T_D(2, 3, 9), T_D(3, 3, 3), (attr[]){AV("strides", 2), AV("pads", 1, 0), AEND});
  conv_case("3-D 2x2x2", 0, 2, T_D(1, 2, 4, 3, 3), T_D(2, 2, 2, 2, 2), (attr[]){AV("pads", 1, 0, 0, 0, 1, 0), AEND});
  conv_case("SAME_UPPER stride 2", 0, 2, T_D(1, 2, 7, 6), T_D(2, 2, 3, 3),
            (attr[]){AS("auto_pad", "SAME_UPPER"), AV("strides", 2, 2), AEND});
  conv_case("pointwise 1x1", 0, 5, T_D(2, 3, 4, 3), T_D(5, 3, 1, 1), NULL);
  conv_case("kernel_shape attribute, odd", 0, 1, T_D(1, 1, 5, 3), T_D(1, 1, 5, 1),
            (attr[]){AV("kernel_shape", 5, 1), AEND});
  conv_case("transposed stride 2 pad 1", 1, 3, T_D(2, 2, 3, 4), T_D(2, 3, 3, 3),
            (attr[]){AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND});
  conv_case("transposed output_padding", 1, 2, T_D(1, 3, 3, 3), T_D(3, 2, 2, 3),
            (attr[]){AV("strides", 2, 3), AV("output_padding", 1, 2), AEND});
  conv_case("transposed groups 2 dilation 2", 1, 4, T_D(1, 4, 3, 3), T_D(4, 2, 2, 2),
            (attr[]){AI("group", 2), AV("dilations", 2, 2), AEND});
  conv_case("transposed 1-D output_shape", 1, 2, T_D(2, 2, 4), T_D(2, 2, 3),
            (attr[]){AV("strides", 2), AV("output_shape", 10), AEND});
}
END_TEST

/* Fast ConvGrad at awkward sizes (odd, strided, padded, grouped, depthwise,
 * dilated, 1-D, 3-D, larger channel counts) against the reference. */
START_TEST(test_conv_grad_fast) {
  struct {
    const char *what;
    tens x, w;
    attr a[5];
  } cs[] = {
      {"odd 13x11 5x5 pad 2", T_D(3, 5, 13, 11), T_D(7, 5, 5, 5), {AV("pads", 2, 2, 2, 2), AEND}},
      {"stride 2 pad 1 3x3, 17 ch", T_D(2, 17, 15, 9), T_D(9, 17, 3, 3),
       {AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND}},
      {"stride 3 dilation 2", T_D(1, 4, 16, 14), T_D(6, 4, 3, 2),
       {AV("strides", 3, 2), AV("dilations", 2, 3), AV("pads", 2, 1, 0, 3), AEND}},
      {"groups 3", T_D(2, 9, 10, 10), T_D(12, 3, 3, 3), {AI("group", 3), AV("pads", 1, 1, 1, 1), AEND}},
      {"depthwise 32 ch stride 2", T_D(2, 32, 15, 15), T_D(32, 1, 3, 3),
       {AI("group", 32), AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND}},
      {"pointwise 24->40", T_D(2, 24, 7, 9), T_D(40, 24, 1, 1), {AEND}},
      {"1x1 stride 2", T_D(1, 8, 9, 9), T_D(16, 8, 1, 1), {AV("strides", 2, 2), AEND}},
      {"1-D k5 s2", T_D(3, 6, 31), T_D(5, 6, 5), {AV("strides", 2), AV("pads", 2, 1), AEND}},
      {"3-D 3x3x3", T_D(1, 3, 6, 5, 4), T_D(4, 3, 3, 3, 3), {AV("pads", 1, 1, 1, 1, 1, 1), AEND}},
      {"LeNet conv2 6->16 5x5", T_D(4, 6, 14, 14), T_D(16, 6, 5, 5), {AEND}},
      /* the shifted-rows dW and the phase dX (conv_shift.c) at their branches */
      {"ResNet-8 16->32 3x3 s2 p1", T_D(3, 16, 12, 12), T_D(32, 16, 3, 3),
       {AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND}},
      {"5x5 s2 p2, 19 -> 13 ch, odd", T_D(2, 19, 11, 13), T_D(13, 19, 5, 5),
       {AV("strides", 2, 2), AV("pads", 2, 2, 2, 2), AEND}},
      {"s2 pads past the kernel", T_D(1, 3, 9, 10), T_D(5, 3, 3, 3),
       {AV("strides", 2, 2), AV("pads", 3, 0, 1, 3), AEND}},
      {"s1 pads 3 with 3x3", T_D(2, 5, 8, 7), T_D(6, 5, 3, 3), {AV("pads", 3, 3, 3, 3), AEND}},
      {"wide rows 70", T_D(1, 2, 3, 70), T_D(3, 2, 3, 3), {AV("pads", 1, 1, 1, 1), AEND}},
      {"rows of 1032 columns", T_D(1, 1, 2, 1030), T_D(2, 1, 1, 3), {AV("pads", 0, 1, 0, 1), AEND}},
      {"strides 2 x 1", T_D(2, 4, 9, 8), T_D(6, 4, 3, 3), {AV("strides", 2, 1), AV("pads", 1, 1, 1, 1), AEND}},
      {"strides 3, 2x2", T_D(1, 3, 10, 11), T_D(4, 3, 2, 2), {AV("strides", 3, 3), AEND}},
      {"1x1 s2 odd, batch 1", T_D(1, 5, 7, 9), T_D(9, 5, 1, 1), {AV("strides", 2, 2), AEND}},
      /* column stride 2 by vectors (im2col gather, col2im scatter-add): rows
       * of 36 and 38 outputs (two vectors and a part), pads trimming them */
      {"1x1 s2 rows of 87", T_D(2, 3, 5, 87), T_D(4, 3, 1, 1), {AV("strides", 2, 2), AEND}},
      {"1x1 s2 pads 1, rows of 75", T_D(1, 3, 4, 75), T_D(5, 3, 1, 1), {AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND}},
      {"3x3 s2 groups 2, rows of 73", T_D(2, 4, 5, 73), T_D(6, 2, 3, 3),
       {AI("group", 2), AV("strides", 2, 2), AV("pads", 1, 1, 1, 0), AEND}},
      {"ResNet-8 64 ch 7x7", T_D(2, 64, 7, 7), T_D(64, 64, 3, 3), {AV("pads", 1, 1, 1, 1), AEND}},
      /* the 6 x 4 dW tile: LeNet's first layer; 5 of 6 rows and 9 of 12 taps */
      {"LeNet conv1 1->6 5x5", T_D(3, 1, 28, 28), T_D(6, 1, 5, 5), {AEND}},
      {"1->5 3x3, partial 6x4 tile", T_D(2, 1, 9, 10), T_D(5, 1, 3, 3), {AV("pads", 1, 0, 1, 2), AEND}},
      /* the shifted-rows dW in passes of images that fit the L2 (6 of these
       * a pass): two passes, the last of one image */
      {"16->32 3x3 28x28, 7 images", T_D(7, 16, 28, 28), T_D(32, 16, 3, 3), {AV("pads", 1, 1, 1, 1), AEND}},
  };
  for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
    runner *sh = runner_new("", "Conv", 11, cs[i].a, 2, (tens[]){cs[i].x, cs[i].w}, 1, NULL, 1);
    ck_assert_int_eq(runner_run(sh, (tens[]){cs[i].x, cs[i].w}), NBL_OK);
    tens dY = t_rand(NBL_DT_DOUBLE, -1, 1, sh->out[0].rank, sh->out[0].dims);
    runner_free(sh);
    tens bin[3] = {dY, cs[i].x, cs[i].w};
    fast_vs_ref("ConvGrad", cs[i].what, cs[i].a, 3, bin, 3, CONV_FAST_TOL);
    free_all(bin, 3);
  }
}
END_TEST

/* ------------------------------------------------------------------ pooling */

#define POOL_FAST_TOL 1e-6

/* MaxPool (opset 12, with Indices) forward; MaxPoolGrad(dY, Indices, shape(X)). */
static void maxpool_case(const char *what, tens X, const attr *a, const attr *ba) {
  tens fin[1] = {X};
  tens dY;
  runner *f = fwd_run("", "MaxPool", 12, a, 1, fin, 2, 0, &dY);
  tens bin[3] = {dY, t_copy_host(&f->out[1]), t_shape(&X)};
  runner *b = bwd_run("MaxPoolGrad", ba, 3, bin, 1, NULL);
  expect_fd("MaxPoolGrad", what, f, fin, 0, 0, &dY, &b->out[0]);
  runner_free(b);
  fast_vs_ref("MaxPoolGrad", what, ba, 3, bin, 1, POOL_FAST_TOL);
  runner_free(f);
  free_all(bin, 3);
  t_free(&X);
}

/* AveragePool (opset 19: dilations) forward; AveragePoolGrad(dY, shape(X)). */
static void avgpool_case(const char *what, tens X, const attr *a) {
  tens fin[1] = {X};
  tens dY;
  runner *f = fwd_run("", "AveragePool", 19, a, 1, fin, 1, 0, &dY);
  tens bin[2] = {dY, t_shape(&X)};
  runner *b = bwd_run("AveragePoolGrad", a, 2, bin, 1, NULL);
  expect_fd("AveragePoolGrad", what, f, fin, 0, 0, &dY, &b->out[0]);
  runner_free(b);
  fast_vs_ref("AveragePoolGrad", what, a, 2, bin, 1, POOL_FAST_TOL);
  runner_free(f);
  free_all(bin, 2);
  t_free(&X);
}

START_TEST(test_maxpool_grad) {
  maxpool_case("3x3 s2 p1", T_D(2, 3, 7, 6), (attr[]){AV("kernel_shape", 3, 3), AV("strides", 2, 2),
                                                       AV("pads", 1, 1, 1, 1), AEND}, NULL);
  maxpool_case("2x2 overlapping s1", T_D(1, 2, 5, 5), (attr[]){AV("kernel_shape", 2, 2), AEND}, NULL);
  maxpool_case("ceil_mode", T_D(1, 2, 6, 7), (attr[]){AV("kernel_shape", 3, 3), AV("strides", 2, 2),
                                                      AI("ceil_mode", 1), AEND}, NULL);
  maxpool_case("dilations 2", T_D(1, 2, 8, 7), (attr[]){AV("kernel_shape", 2, 3), AV("dilations", 2, 2),
                                                        AV("pads", 1, 0, 0, 1), AEND}, NULL);
  maxpool_case("storage_order 1", T_D(2, 2, 5, 4), (attr[]){AV("kernel_shape", 2, 2), AI("storage_order", 1), AEND},
               (attr[]){AI("storage_order", 1), AEND});
  maxpool_case("1-D k3 s2", T_D(2, 3, 11), (attr[]){AV("kernel_shape", 3), AV("strides", 2), AEND}, NULL);
  maxpool_case("3-D 2x2x2", T_D(1, 2, 4, 4, 3), (attr[]){AV("kernel_shape", 2, 2, 2), AV("pads", 0, 1, 0, 1, 0, 1), AEND},
               NULL);
  maxpool_case("SAME_UPPER", T_D(1, 1, 5, 5), (attr[]){AV("kernel_shape", 2, 2), AV("strides", 2, 2),
                                                       AS("auto_pad", "SAME_UPPER"), AEND}, NULL);
}
END_TEST

START_TEST(test_avgpool_grad) {
  avgpool_case("3x3 s2 p1 exclude pad", T_D(2, 3, 7, 6),
               (attr[]){AV("kernel_shape", 3, 3), AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND});
  avgpool_case("3x3 s2 p1 count_include_pad", T_D(2, 3, 7, 6),
               (attr[]){AV("kernel_shape", 3, 3), AV("strides", 2, 2), AV("pads", 1, 1, 1, 1),
                        AI("count_include_pad", 1), AEND});
  avgpool_case("ceil_mode include pad", T_D(1, 2, 6, 7),
               (attr[]){AV("kernel_shape", 3, 2), AV("strides", 2, 2), AV("pads", 1, 0, 0, 1), AI("ceil_mode", 1),
                        AI("count_include_pad", 1), AEND});
  avgpool_case("ceil_mode exclude pad", T_D(1, 2, 6, 7),
               (attr[]){AV("kernel_shape", 3, 3), AV("strides", 2, 3), AI("ceil_mode", 1), AEND});
  avgpool_case("dilations 2", T_D(1, 2, 8, 7),
               (attr[]){AV("kernel_shape", 2, 3), AV("dilations", 2, 2), AV("pads", 1, 0, 0, 1), AEND});
  avgpool_case("global-size window", T_D(2, 3, 4, 5), (attr[]){AV("kernel_shape", 4, 5), AEND});
  avgpool_case("1-D include pad", T_D(2, 2, 9),
               (attr[]){AV("kernel_shape", 4), AV("strides", 3), AV("pads", 2, 1), AI("count_include_pad", 1), AEND});
  avgpool_case("3-D", T_D(1, 2, 4, 3, 5), (attr[]){AV("kernel_shape", 2, 2, 3), AV("pads", 1, 0, 1, 0, 1, 1), AEND});
  avgpool_case("SAME_LOWER", T_D(1, 1, 5, 6),
               (attr[]){AV("kernel_shape", 3, 3), AV("strides", 2, 2), AS("auto_pad", "SAME_LOWER"), AEND});
}
END_TEST

/* MaxPoolGrad of 2 x 2 windows of stride 2 with its attributes on the node:
 * the dense kernel (every dX element written once; AVX-512 or AVX2 as the
 * run's ISA cap allows) against the reference bit for bit (one term per
 * element: the double sum rounds back to the float), with odd planes (a
 * last row and column no window covers), planes wider than a vector, dY
 * with -0 (the sparse kernel's 0 + -0 is +0) and NaN, at 1 and 2 threads;
 * then with an index moved to another window of its plane (the dense
 * kernel declines, the sparse one runs: still the reference's values). */
START_TEST(test_maxpool_grad_dense) {
  const int64_t shapes[4][4] = {{2, 3, 8, 8}, {1, 2, 7, 9}, {1, 1, 2, 70}, {2, 3, 24, 24}};
  attr pa[] = {AV("kernel_shape", 2, 2), AV("strides", 2, 2), AEND};
  for (int si = 0; si < 4; si++)
    for (int moved = 0; moved < 2; moved++) {
      const int64_t *d = shapes[si];
      tens x = t_rand(NBL_DT_DOUBLE, -1, 1, 4, d);
      runner *f = runner_new("", "MaxPool", 12, pa, 1, &x, 2, NULL, 1);
      ck_assert_int_eq(runner_run(f, &x), NBL_OK);
      tens bin[3] = {t_rand(NBL_DT_FLOAT, -1, 1, f->out[0].rank, f->out[0].dims), t_copy_host(&f->out[1]), t_shape(&x)};
      runner_free(f);
      float *g = bin[0].data;
      for (int64_t i = 0; i < bin[0].n; i += 5) g[i] = -0.0f;
      g[bin[0].n / 2] = NAN;
      if (moved) ((int64_t *)bin[1].data)[1] = ((int64_t *)bin[1].data)[0]; /* window 1's index in window 0 */
      runner *r = runner_new(MS, "MaxPoolGrad", 1, pa, 3, bin, 1, NULL, 1);
      ck_assert_int_eq(runner_run(r, bin), NBL_OK);
      for (int threads = 1; threads <= 2; threads++) {
        runner *q = runner_new(MS, "MaxPoolGrad", 1, pa, 3, bin, 1, NULL, 0);
        q->threads = threads;
        ck_assert_msg(runner_run(q, bin) == NBL_OK, "%s", nbl_last_error());
        ck_assert_uint_eq(q->out[0].nbytes, r->out[0].nbytes);
        const float *a = q->out[0].data, *b = r->out[0].data;
        for (size_t i = 0; i < q->out[0].nbytes / 4; i++)
          ck_elem_msg(!memcmp(&a[i], &b[i], 4) || (isnan(a[i]) && isnan(b[i])),
                      "shape %d moved %d threads %d [%zu]: %a vs %a", si, moved, threads, i, a[i], b[i]);
        runner_free(q);
      }
      runner_free(r);
      free_all(bin, 3);
      t_free(&x);
    }
}
END_TEST

/* Hand: 1-D [1, 1, 4], kernel 2, stride 2, pads (1, 1): windows {pad, x0},
 * {x1, x2}, {x3, pad}. Excluding pads every x gets dY of its window divided
 * by the inside count (1, 2, 2, 1); including pads, all divide by 2. MaxPool
 * indices (3, 0) of a [1, 1, 2, 2] input route dY to those elements. */
START_TEST(test_pool_hand) {
  double dy[3] = {1, 2, 4};
  tens in[2] = {t_new(NBL_DT_DOUBLE, DIMS(1, 1, 3)), T_I64(1, 1, 4)};
  memcpy(in[0].data, dy, sizeof dy);
  const double want[2][4] = {{1, 1, 1, 4}, {0.5, 1, 1, 2}};
  for (int incl = 0; incl < 2; incl++) {
    runner *b = bwd_run("AveragePoolGrad",
                        (attr[]){AV("kernel_shape", 2), AV("strides", 2), AV("pads", 1, 1), AI("count_include_pad", incl), AEND},
                        2, in, 1, NULL);
    for (int i = 0; i < 4; i++) ck_assert_double_eq(((const double *)b->out[0].data)[i], want[incl][i]);
    runner_free(b);
  }
  free_all(in, 2);
  tens m[3] = {t_new(NBL_DT_DOUBLE, DIMS(1, 1, 2, 1)), t_i64(4, (const int64_t[]){1, 1, 2, 1}, (const int64_t[]){3, 0}),
               T_I64(1, 1, 2, 2)};
  ((double *)m[0].data)[0] = 5;
  ((double *)m[0].data)[1] = 7;
  runner *b = bwd_run("MaxPoolGrad", NULL, 3, m, 1, NULL);
  const double *o = b->out[0].data;
  ck_assert(o[0] == 7 && o[1] == 0 && o[2] == 0 && o[3] == 5);
  runner_free(b);
  /* float32 (the fast kernel, 2 threads) with indices that cross (n, c)
   * planes: X [1, 2, 1, 2], dY [1, 2, 1, 1]; same routing */
  {
    tens mf[3] = {t_new(NBL_DT_FLOAT, DIMS(1, 2, 1, 1)), t_i64(4, (const int64_t[]){1, 2, 1, 1}, (const int64_t[]){3, 0}),
                  T_I64(1, 2, 1, 2)};
    ((float *)mf[0].data)[0] = 5;
    ((float *)mf[0].data)[1] = 7;
    runner *bf = runner_new(MS, "MaxPoolGrad", 1, NULL, 3, mf, 1, NULL, 0);
    ck_assert_int_eq(runner_run(bf, mf), NBL_OK);
    const float *of = bf->out[0].data;
    ck_assert(of[0] == 7 && of[1] == 0 && of[2] == 0 && of[3] == 5);
    runner_free(bf);
    free_all(mf, 3);
  }
  /* an index outside X: clear error, nothing written */
  ((int64_t *)m[1].data)[0] = 4;
  runner *e = runner_new(MS, "MaxPoolGrad", 1, NULL, 3, m, 1, NULL, 1);
  ck_assert_int_eq(runner_run(e, m), NBL_ERR_RUNTIME);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "outside"));
  runner_free(e);
  free_all(m, 3);
}
END_TEST

/* ------------------------------------------------------------------ BatchNorm */

#define BN_FAST_TOL 1e-5

/* BatchNormInternal (training) forward on X; BatchNormalizationGrad with the
 * saved batch statistics; dX, dScale, dBias against finite differences (the
 * batch statistics move with X); then the float32 paths against the reference. */
static void bn_case(const char *what, tens X) {
  int64_t C = X.dims[1];
  tens fin[5] = {X, t_rand(NBL_DT_DOUBLE, 0.5, 1.5, DIMS(C)), T_D(C), T_D(C), t_rand(NBL_DT_DOUBLE, 0.5, 2, DIMS(C))};
  attr a[] = {AF("epsilon", 1e-3f), AF("momentum", 0.8f), AEND};
  tens dY;
  runner *f = fwd_run(MS, "BatchNormInternal", 1, a, 5, fin, 5, 0, &dY);
  tens bin[5] = {dY, X, fin[1], t_copy_host(&f->out[3]), t_copy_host(&f->out[4])};
  runner *b = bwd_run("BatchNormalizationGrad", a, 5, bin, 3, NULL);
  char w2[64];
  static const char *const part[3] = {"dX", "dScale", "dBias"};
  for (int i = 0; i < 3; i++) {
    snprintf(w2, sizeof w2, "%s %s", what, part[i]);
    expect_fd("BatchNormalizationGrad", w2, f, fin, i, 0, &dY, &b->out[i]);
  }
  runner_free(b);
  fast_vs_ref("BatchNormalizationGrad", what, a, 5, bin, 3, BN_FAST_TOL);
  /* BatchNormInternal float32 fast path: all five outputs */
  tens ff[5];
  for (int i = 0; i < 5; i++) ff[i] = t_convert(&fin[i], NBL_DT_FLOAT);
  runner *r = runner_new(MS, "BatchNormInternal", 1, a, 5, ff, 5, NULL, 1),
         *q = runner_new(MS, "BatchNormInternal", 1, a, 5, ff, 5, NULL, 0);
  ck_assert_int_eq(runner_run(r, ff), NBL_OK);
  ck_assert_int_eq(runner_run(q, ff), NBL_OK);
  for (int o = 0; o < 5; o++) {
    double e = rel_diff(&q->out[o], &r->out[o]);
    printf("fastcheck %-36s %-28s out %d rel diff %.2e\n", "BatchNormInternal", what, o, e);
    ck_assert_msg(e <= BN_FAST_TOL, "BatchNormInternal %s output %d: %.3e", what, o, e);
  }
  runner_free(r);
  runner_free(q);
  free_all(ff, 5);
  runner_free(f);
  t_free(&bin[0]);
  t_free(&bin[3]);
  t_free(&bin[4]);
  free_all(fin, 5);
}

START_TEST(test_batchnorm_grad) {
  bn_case("[3, 4, 2, 3]", T_D(3, 4, 2, 3));
  bn_case("[2, 3] (no spatial)", T_D(5, 3));
  bn_case("[2, 2, 5] 1-D", T_D(2, 2, 5));
  bn_case("[1, 3, 2, 2, 2] 3-D", T_D(1, 3, 2, 2, 2));
}
END_TEST

/* BatchNormInternal is ONNX BatchNormalization-15 with training_mode=1 (Y and
 * the running statistics) plus the batch mean and 1 / sqrt(var + eps). */
START_TEST(test_batchnorm_internal) {
  tens fin[5] = {T_D(4, 3, 2, 3), T_D(3), T_D(3), T_D(3), t_rand(NBL_DT_DOUBLE, 0.5, 2, DIMS(3))};
  attr a[] = {AF("epsilon", 1e-2f), AF("momentum", 0.7f), AEND};
  runner *mine = runner_new(MS, "BatchNormInternal", 1, a, 5, fin, 5, NULL, 1);
  attr oa[] = {AF("epsilon", 1e-2f), AF("momentum", 0.7f), AI("training_mode", 1), AEND};
  runner *onnx = runner_new("", "BatchNormalization", 15, oa, 5, fin, 3, NULL, 1);
  ck_assert_int_eq(runner_run(mine, fin), NBL_OK);
  ck_assert_int_eq(runner_run(onnx, fin), NBL_OK);
  for (int o = 0; o < 3; o++) ck_assert_double_le(rel_diff(&mine->out[o], &onnx->out[o]), 1e-14);
  const double *x = fin[0].data, *mean = mine->out[3].data, *inv = mine->out[4].data;
  for (int ch = 0; ch < 3; ch++) {
    double s = 0, s2 = 0;
    for (int n = 0; n < 4; n++)
      for (int i = 0; i < 6; i++) s += x[(n * 3 + ch) * 6 + i];
    s /= 24;
    for (int n = 0; n < 4; n++)
      for (int i = 0; i < 6; i++) s2 += pow(x[(n * 3 + ch) * 6 + i] - s, 2);
    ck_assert_double_eq_tol(mean[ch], s, 1e-15);
    ck_assert_double_eq_tol(inv[ch], 1 / sqrt(s2 / 24 + (double)1e-2f), 1e-12);
  }
  runner_free(mine);
  runner_free(onnx);
  /* inference mode: only Y */
  runner *inf = runner_new(MS, "BatchNormInternal", 1, (attr[]){AI("training_mode", 0), AEND}, 5, fin, 5, NULL, 1);
  ck_assert_int_eq(runner_run(inf, fin), NBL_ERR_INVALID_MODEL);
  runner_free(inf);
  free_all(fin, 5);
}
END_TEST

/* ------------------------------------------------------------------ LayerNorm */

/* LayerNormalization (opset 17, stash_type double) forward; its Mean and
 * InvStdDev outputs feed LayerNormalizationGrad. */
static void ln_case(const char *what, tens X, int axis, tens S) {
  tens fin[3] = {X, S, t_rand(NBL_DT_DOUBLE, -1, 1, S.rank, S.dims)};
  attr a[] = {AI("axis", axis), AF("epsilon", 1e-3f), AI("stash_type", NBL_DT_DOUBLE), AEND};
  tens dY;
  runner *f = fwd_run("", "LayerNormalization", 17, a, 3, fin, 3, 0, &dY);
  tens bin[5] = {dY, X, S, t_copy_host(&f->out[1]), t_copy_host(&f->out[2])};
  runner *b = bwd_run("LayerNormalizationGrad", a, 5, bin, 3, NULL);
  char w2[64];
  static const char *const part[3] = {"dX", "dScale", "dBias"};
  for (int i = 0; i < 3; i++) {
    snprintf(w2, sizeof w2, "%s %s", what, part[i]);
    expect_fd("LayerNormalizationGrad", w2, f, fin, i, 0, &dY, &b->out[i]);
  }
  runner_free(b);
  runner_free(f);
  free_all(bin, 5);
  t_free(&fin[2]);
}

START_TEST(test_layernorm_grad) {
  ln_case("axis -1", T_D(3, 4, 5), -1, T_D(5));
  ln_case("axis 1", T_D(2, 3, 4), 1, T_D(3, 4));
  ln_case("axis 1, scale broadcast [4]", T_D(2, 3, 4), 1, T_D(4));
  ln_case("axis 0", T_D(2, 3), 0, T_D(2, 3));
}
END_TEST

/* ------------------------------------------------------------------ against PyTorch */

/* tests/grad/torch_grads.py writes PyTorch's float64 gradients; 77 = no torch.
 * Each process has its own folder (the suite runs this test at several ISA
 * caps at once: one shared folder was rewritten while another process read
 * it); torch_fixtures_done removes it. */
static int torch_fixtures(char *dir, size_t cap) {
  const char *src = getenv("NBL_SOURCE_ROOT"), *bld = getenv("NBL_BUILD_ROOT");
  if (!src || !bld) return 77;
  snprintf(dir, cap, "%s/grad-torch.%ld", bld, (long)getpid());
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/grad/torch_grads.py' '%s' > /dev/null 2>&1", src, dir);
  int rc = system(cmd);
  return rc == -1 ? 77 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 77;
}

static void torch_fixtures_done(const char *dir) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "test_ops_grad: could not remove %s\n", dir);
}

static tens fixture(const char *dir, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.npy", dir, name);
  nbl_host_tensor h;
  ck_assert_msg(nbl_tensor_read(path, &h) == NBL_OK, "%s: %s", path, nbl_last_error());
  tens t = t_copy_host(&h);
  nbl_host_tensor_free(&h);
  return t;
}

static void ck_close(const char *what, const nbl_host_tensor *got, const tens *want, double tol) {
  nbl_host_tensor w = {.dtype = want->dt, .data = want->data, .nbytes = nbl_dtype_nbytes(want->dt, want->n)};
  ck_assert_int_eq(got->nbytes / nbl_dtype_nbytes(got->dtype, 1), want->n);
  double e = rel_diff(got, &w);
  printf("torchcheck %-34s rel diff %.2e\n", what, e);
  ck_assert_msg(e <= tol, "%s: %.3e from PyTorch (tolerance %.0e)", what, e, tol);
}

START_TEST(test_against_pytorch) {
  char dir[1024];
  int rc = torch_fixtures(dir, sizeof dir);
  if (rc == 77) {
    printf("torchcheck skipped: /usr/bin/python3 with torch is not available\n");
    return;
  }
  ck_assert_msg(rc == 0, "tests/grad/torch_grads.py failed (exit %d)", rc);
  /* ConvGrad: reference in double, fast in float32 */
  attr ca[] = {AV("strides", 2, 1), AV("pads", 1, 2, 1, 2), AV("dilations", 1, 2), AI("group", 2), AEND};
  tens cin[3] = {fixture(dir, "conv_dy"), fixture(dir, "conv_x"), fixture(dir, "conv_w")};
  tens cw[3] = {fixture(dir, "conv_dx"), fixture(dir, "conv_dw"), fixture(dir, "conv_db")};
  runner *b = bwd_run("ConvGrad", ca, 3, cin, 3, NULL);
  static const char *const cn[3] = {"ConvGrad dX (float64)", "ConvGrad dW (float64)", "ConvGrad dB (float64)"};
  for (int i = 0; i < 3; i++) ck_close(cn[i], &b->out[i], &cw[i], 1e-12);
  runner_free(b);
  tens cf[3];
  for (int i = 0; i < 3; i++) cf[i] = t_convert(&cin[i], NBL_DT_FLOAT);
  runner *q = runner_new(MS, "ConvGrad", 1, ca, 3, cf, 3, NULL, 0);
  ck_assert_int_eq(runner_run(q, cf), NBL_OK);
  static const char *const fn[3] = {"ConvGrad dX (fast float32)", "ConvGrad dW (fast float32)",
                                    "ConvGrad dB (fast float32)"};
  for (int i = 0; i < 3; i++) ck_close(fn[i], &q->out[i], &cw[i], 1e-5);
  runner_free(q);
  free_all(cf, 3);
  free_all(cin, 3);
  free_all(cw, 3);
  /* QuantizeInt4Grad's mask against torch.fake_quantize_per_tensor_affine's (exactly) */
  static const char *const fq[2] = {"fq_fixed", "fq_max"};
  for (int k = 0; k < 2; k++) {
    char nm[64];
    snprintf(nm, sizeof nm, "%s_dy", fq[k]);
    tens d64 = fixture(dir, nm);
    snprintf(nm, sizeof nm, "%s_x", fq[k]);
    tens x64 = fixture(dir, nm);
    snprintf(nm, sizeof nm, "%s_dx", fq[k]);
    tens want = fixture(dir, nm);
    tens qin[2] = {t_convert(&d64, NBL_DT_FLOAT), t_convert(&x64, NBL_DT_FLOAT)};
    const attr *qa = k == 0 ? (attr[]){AS("scale_source", "fixed"), AF("scale", 0.25f), AEND} : NULL;
    runner *r = bwd_run("!QuantizeInt4Grad", qa, 2, qin, 1, NULL);
    snprintf(nm, sizeof nm, "QuantizeInt4Grad %s", fq[k]);
    ck_close(nm, &r->out[0], &want, 0.0);
    runner_free(r);
    free_all(qin, 2);
    t_free(&d64);
    t_free(&x64);
    t_free(&want);
  }
  /* BatchNormInternal + BatchNormalizationGrad in training mode */
  tens x = fixture(dir, "bn_x"), sc = fixture(dir, "bn_scale"), bi = fixture(dir, "bn_bias");
  tens fin[5] = {x, sc, bi, t_new(NBL_DT_DOUBLE, DIMS(3)), t_new(NBL_DT_DOUBLE, DIMS(3))};
  for (int i = 0; i < 3; i++) ((double *)fin[4].data)[i] = 1;
  attr ba[] = {AF("epsilon", 1e-5f), AEND};
  runner *f = runner_new(MS, "BatchNormInternal", 1, ba, 5, fin, 5, NULL, 1);
  ck_assert_int_eq(runner_run(f, fin), NBL_OK);
  tens bin[5] = {fixture(dir, "bn_dy"), x, sc, t_copy_host(&f->out[3]), t_copy_host(&f->out[4])};
  b = bwd_run("BatchNormalizationGrad", ba, 5, bin, 3, NULL);
  tens bw[3] = {fixture(dir, "bn_dx"), fixture(dir, "bn_dscale"), fixture(dir, "bn_dbias")};
  static const char *const bn[3] = {"BatchNormalizationGrad dX", "BatchNormalizationGrad dScale",
                                    "BatchNormalizationGrad dBias"};
  for (int i = 0; i < 3; i++) ck_close(bn[i], &b->out[i], &bw[i], 1e-10);
  runner_free(b);
  runner_free(f);
  t_free(&bin[0]);
  t_free(&bin[3]);
  t_free(&bin[4]);
  free_all(fin, 5);
  free_all(bw, 3);
  torch_fixtures_done(dir); /* (a failed check leaves the folder behind, to look at) */
}
END_TEST

/* ------------------------------------------------------------------ bad input */

static void expect_error(const char *op, const attr *a, int n_in, tens *in, int n_out, nbl_status want,
                         const char *needle) {
  runner *r = runner_new(MS, op, 1, a, n_in, in, n_out, NULL, 1);
  nbl_status st = runner_run(r, in);
  ck_assert_msg(st == want, "%s: status %d, want %d (%s)", op, st, want, nbl_last_error());
  ck_assert_msg(strstr(nbl_last_error(), needle) != NULL, "%s: message '%s' lacks '%s'", op, nbl_last_error(),
                needle);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "n0")); /* names the node */
  runner_free(r);
}

START_TEST(test_bad_input) {
  tens c[3] = {T_D(1, 2, 4, 3), T_D(1, 3, 5, 5), T_D(2, 3, 3, 3)}; /* dY should be [1, 2, 3, 3] */
  expect_error("ConvGrad", NULL, 3, c, 3, NBL_ERR_INVALID_MODEL, "forward output's shape");
  tens ci[3] = {c[0], t_new(NBL_DT_INT64, DIMS(1, 3, 5, 5)), c[2]};
  expect_error("ConvGrad", NULL, 3, ci, 3, NBL_ERR_UNSUPPORTED, "element type");
  t_free(&ci[1]);
  expect_error("ConvGrad", (attr[]){AI("group", 2), AEND}, 3, c, 3, NBL_ERR_INVALID_MODEL, "channels");
  free_all(c, 3);
  tens r[2] = {T_D(2, 3), T_D(3, 2)};
  expect_error("ReluGrad", NULL, 2, r, 1, NBL_ERR_INVALID_MODEL, "same shape");
  free_all(r, 2);
  tens sm[2] = {T_D(2, 3), T_D(2, 3)};
  expect_error("SoftmaxGrad_13", (attr[]){AI("axis", 2), AEND}, 2, sm, 1, NBL_ERR_INVALID_MODEL, "axis");
  free_all(sm, 2);
  tens d[3] = {T_D(4), t_new(NBL_DT_BOOL, DIMS(4)), t_scalar(NBL_DT_DOUBLE, 1.0)};
  expect_error("DropoutGrad", NULL, 3, d, 1, NBL_ERR_INVALID_MODEL, "ratio");
  free_all(d, 3);
  tens p[2] = {T_D(1, 1, 2, 2), T_I64(1, 1, 5, 5)};
  expect_error("AveragePoolGrad", (attr[]){AV("kernel_shape", 2, 2), AEND}, 2, p, 1, NBL_ERR_INVALID_MODEL,
               "output shape");
  expect_error("AveragePoolGrad", NULL, 2, p, 1, NBL_ERR_INVALID_MODEL, "kernel_shape");
  free_all(p, 2);
  tens bn[5] = {T_D(2, 3, 2), T_D(2, 3, 2), T_D(3), T_D(3), T_D(2)};
  expect_error("BatchNormalizationGrad", NULL, 5, bn, 3, NBL_ERR_INVALID_MODEL, "saved_inv_std");
  free_all(bn, 5);
  tens sl[4] = {T_D(2, 2), T_I64(4, 3), T_I64(0), T_I64(3)};
  expect_error("SliceGrad", NULL, 4, sl, 1, NBL_ERR_INVALID_MODEL, "shape this slice");
  free_all(sl, 4);
}
END_TEST

/* ------------------------------------------------------------------ suite */

static Suite *suite(void) {
  Suite *s = suite_create("ops_grad");
  TCase *t = tcase_create("grad");
  tcase_set_timeout(t, 300);
  tcase_add_test(t, test_activations_fd);
  tcase_add_test(t, test_activations_hand);
  tcase_add_test(t, test_dropout_fd);
  tcase_add_test(t, test_broadcast_grad_args);
  tcase_add_test(t, test_quantize_int4_grad);
  tcase_add_test(t, test_quantize_int4_grad_given);
  tcase_add_test(t, test_softmax_fd);
  tcase_add_test(t, test_sce_fd);
  tcase_add_test(t, test_sce_hand);
  tcase_add_test(t, test_gather_grad);
  tcase_add_test(t, test_slice_grad);
  tcase_add_test(t, test_conv_grad_fd);
  tcase_add_test(t, test_conv_grad_fast);
  tcase_add_test(t, test_maxpool_grad);
  tcase_add_test(t, test_maxpool_grad_dense);
  tcase_add_test(t, test_avgpool_grad);
  tcase_add_test(t, test_pool_hand);
  tcase_add_test(t, test_batchnorm_grad);
  tcase_add_test(t, test_batchnorm_internal);
  tcase_add_test(t, test_layernorm_grad);
  tcase_add_test(t, test_against_pytorch);
  tcase_add_test(t, test_bad_input);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *r = srunner_create(suite());
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  return failed ? 1 : 0;
}
