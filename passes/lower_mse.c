/* lower_mse.c - the clip of QuantizeInt4's scale_source=mse in standard ONNX
 * ops (opset 21) for lower-to-onnx: the same numbers as nbl_q4_mse_clip and
 * nbl_q4_params_from_mse (runtime/formats/int4.h), op for op:
 *
 *   sample   n = Size(X); blocks = (n + 63) / 64; k = max(1, ceil(blocks /
 *            (NBL_Q4_MSE_SAMPLE / 64))); the indices 64 * b + 0..63 of the
 *            blocks b = 0, k, 2k, ... (Range), those < n, gathered from
 *            the flattened X (for n <= NBL_Q4_MSE_SAMPLE: every element);
 *   bins     d = x - lo (affine) or |x| (symmetric), t = min(d * (B / R),
 *            B - 1) in float, j = Cast<int64>(t) (truncation, as C's (int)),
 *            counted (ScatterElements with reduction add, in double) when
 *            0 < d <= R;
 *   estimate suffix sums S0, S1, S2 of cnt, cnt*u, cnt*u*u (u = j + 1/2;
 *            CumSum reverse: every term a multiple of 1/4 below 2^53, so the
 *            sums are exact in any order), then for the candidates k = B, B -
 *            STEP, ..., STEP (in that order) E = (S2 - 2k*S1) + k^2*S0 +
 *            (total - S0)*k^2 / (12 L^2), the same double operations as C;
 *            ArgMin takes the first least (ties keep the larger clip);
 *   clip     c = R * k / B in float (R when k = B); used when 0 < c < R:
 *            affine top = min(lo + c, hi), symmetric max|x| = c.
 * What the lowering of max already does with NaN/Inf (ReduceMin/ReduceMax
 * see them) holds here too: the lowered model matches nibble on finite
 * tensors. */
#include <stdio.h>
#include <string.h>

#include "lower.h"

typedef struct mse_b {
  nbl_graph *g;
  const char *base;
  int bad;
} mse_b;

static nbl_id op(mse_b *b, const char *name, int n, nbl_id a0, nbl_id a1, nbl_id a2) {
  nbl_id ins[3] = {a0, a1, a2};
  for (int i = 0; i < n; i++)
    if (ins[i] == NBL_NONE) b->bad = 1;
  if (b->bad) return NBL_NONE;
  nbl_id v = nbl_lower_emit(b->g, name, b->base, n, ins, NBL_NONE);
  if (v == NBL_NONE) b->bad = 1;
  return v;
}

static void attr(mse_b *b, nbl_id v, const char *name, int64_t val) {
  if (!b->bad) nbl_node_set_attr_int(b->g, b->g->values[v].producer, name, val);
}

static nbl_id cnst(mse_b *b, const char *what, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  char hint[600];
  snprintf(hint, sizeof hint, "%s_mse_%s", b->base, what);
  nbl_id v = nbl_lower_const(b->g, hint, dt, rank, dims, data);
  if (v == NBL_NONE) b->bad = 1;
  return v;
}

static nbl_id f32(mse_b *b, const char *what, float f) { return cnst(b, what, NBL_DT_FLOAT, 0, NULL, &f); }
static nbl_id i64(mse_b *b, const char *what, int64_t v) { return cnst(b, what, NBL_DT_INT64, 0, NULL, &v); }

nbl_status nbl_lower_mse_top(nbl_graph *g, const char *base, const nbl_q4_config *cfg, nbl_id x, nbl_id lo,
                             nbl_id hi, nbl_id *out) {
  enum { B = NBL_Q4_MSE_BINS, STEP = NBL_Q4_MSE_STEP, NK = NBL_Q4_MSE_BINS / NBL_Q4_MSE_STEP };
  mse_b b = {g, base, 0};
  int affine = cfg->mode == NBL_Q4_AFFINE;
  int qmin, qmax;
  nbl_q4_range(cfg, &qmin, &qmax);
  double L = affine ? (double)(qmax - qmin) : (double)qmax;
  nbl_id R = affine ? op(&b, "Sub", 2, hi, lo, NBL_NONE) : hi;
  nbl_id inv = op(&b, "Div", 2, f32(&b, "bins", (float)B), R, NBL_NONE);
  /* the sample's indices */
  int64_t minus1 = -1, d1 = 1;
  nbl_id flat = op(&b, "Reshape", 2, x, cnst(&b, "flat", NBL_DT_INT64, 1, &d1, &minus1), NBL_NONE);
  nbl_id n = op(&b, "Size", 1, x, NBL_NONE, NBL_NONE);
  nbl_id blocks = op(&b, "Div", 2, op(&b, "Add", 2, n, i64(&b, "63", 63), NBL_NONE), i64(&b, "64", 64), NBL_NONE);
  int64_t want = NBL_Q4_MSE_SAMPLE / 64;
  nbl_id step = op(&b, "Div", 2, op(&b, "Add", 2, blocks, i64(&b, "want1", want - 1), NBL_NONE),
                   i64(&b, "want", want), NBL_NONE);
  step = op(&b, "Max", 2, step, i64(&b, "one", 1), NBL_NONE);
  nbl_id starts = op(&b, "Range", 3, i64(&b, "zero", 0), blocks, step);
  starts = op(&b, "Mul", 2, starts, i64(&b, "blk", 64), NBL_NONE);
  int64_t axes1 = 1, lane[64], ldims[2] = {1, 64};
  for (int i = 0; i < 64; i++) lane[i] = i;
  nbl_id col = op(&b, "Unsqueeze", 2, starts, cnst(&b, "axis1", NBL_DT_INT64, 1, &d1, &axes1), NBL_NONE);
  nbl_id idx = op(&b, "Add", 2, col, cnst(&b, "lanes", NBL_DT_INT64, 2, ldims, lane), NBL_NONE);
  idx = op(&b, "Reshape", 2, idx, cnst(&b, "flat2", NBL_DT_INT64, 1, &d1, &minus1), NBL_NONE);
  nbl_id inb = op(&b, "Less", 2, idx, n, NBL_NONE);
  idx = op(&b, "Where", 3, inb, idx, i64(&b, "idx0", 0));
  nbl_id xs = op(&b, "Gather", 2, flat, idx, NBL_NONE);
  /* bins */
  nbl_id d = affine ? op(&b, "Sub", 2, xs, lo, NBL_NONE) : op(&b, "Abs", 1, xs, NBL_NONE, NBL_NONE);
  nbl_id fzero = f32(&b, "fzero", 0.0f);
  nbl_id valid = op(&b, "And", 2, op(&b, "Greater", 2, d, fzero, NBL_NONE),
                    op(&b, "LessOrEqual", 2, d, R, NBL_NONE), NBL_NONE);
  valid = op(&b, "And", 2, valid, inb, NBL_NONE);
  nbl_id t = op(&b, "Min", 2, op(&b, "Mul", 2, d, inv, NBL_NONE), f32(&b, "last", (float)(B - 1)), NBL_NONE);
  t = op(&b, "Where", 3, valid, t, fzero);
  nbl_id j = op(&b, "Cast", 1, t, NBL_NONE, NBL_NONE);
  attr(&b, j, "to", NBL_DT_INT64);
  nbl_id one = op(&b, "Cast", 1, valid, NBL_NONE, NBL_NONE); /* 1 where counted, 0 elsewhere */
  attr(&b, one, "to", NBL_DT_DOUBLE);
  double zeros[B], u[B];
  for (int i = 0; i < B; i++) zeros[i] = 0.0, u[i] = i + 0.5;
  int64_t bd = B;
  nbl_id cnt = op(&b, "ScatterElements", 3, cnst(&b, "counts", NBL_DT_DOUBLE, 1, &bd, zeros), j, one);
  if (!b.bad) nbl_node_set_attr_string(g, g->values[cnt].producer, "reduction", "add");
  /* the estimate at the candidates */
  nbl_id uc = cnst(&b, "centres", NBL_DT_DOUBLE, 1, &bd, u);
  nbl_id c1 = op(&b, "Mul", 2, cnt, uc, NBL_NONE), c2 = op(&b, "Mul", 2, c1, uc, NBL_NONE);
  nbl_id ax0 = i64(&b, "axis0", 0);
  double z1 = 0.0;
  nbl_id pad = cnst(&b, "pad", NBL_DT_DOUBLE, 1, &d1, &z1);
  int64_t ks[NK];
  double twok[NK], k2[NK];
  float kf[NK];
  for (int i = 0; i < NK; i++) {
    ks[i] = B - (int64_t)i * STEP;
    twok[i] = 2.0 * (double)ks[i];
    k2[i] = (double)ks[i] * (double)ks[i];
    kf[i] = (float)ks[i];
  }
  int64_t nk = NK;
  nbl_id K = cnst(&b, "k", NBL_DT_INT64, 1, &nk, ks);
  nbl_id S[3], src[3] = {cnt, c1, c2};
  for (int i = 0; i < 3; i++) {
    nbl_id cs = op(&b, "CumSum", 2, src[i], ax0, NBL_NONE);
    attr(&b, cs, "reverse", 1);
    nbl_id ins[2] = {cs, pad}; /* index B: nothing above the clip */
    nbl_id cat = b.bad ? NBL_NONE : nbl_lower_emit(g, "Concat", base, 2, ins, NBL_NONE);
    if (cat == NBL_NONE) b.bad = 1;
    attr(&b, cat, "axis", 0);
    S[i] = op(&b, "Gather", 2, cat, K, NBL_NONE);
  }
  nbl_id total = op(&b, "ReduceSum", 1, cnt, NBL_NONE, NBL_NONE);
  attr(&b, total, "keepdims", 0);
  nbl_id K2 = cnst(&b, "k2", NBL_DT_DOUBLE, 1, &nk, k2);
  double den = 12.0 * L * L;
  nbl_id above = op(&b, "Add", 2,
                    op(&b, "Sub", 2, S[2], op(&b, "Mul", 2, cnst(&b, "2k", NBL_DT_DOUBLE, 1, &nk, twok), S[1], NBL_NONE),
                       NBL_NONE),
                    op(&b, "Mul", 2, K2, S[0], NBL_NONE), NBL_NONE);
  nbl_id noise = op(&b, "Div", 2, op(&b, "Mul", 2, op(&b, "Sub", 2, total, S[0], NBL_NONE), K2, NBL_NONE),
                    cnst(&b, "den", NBL_DT_DOUBLE, 0, NULL, &den), NBL_NONE);
  nbl_id e = op(&b, "Add", 2, above, noise, NBL_NONE);
  nbl_id am = op(&b, "ArgMin", 1, e, NBL_NONE, NBL_NONE);
  attr(&b, am, "axis", 0);
  attr(&b, am, "keepdims", 0);
  attr(&b, am, "select_last_index", 0);
  /* the clip */
  nbl_id kb = op(&b, "Gather", 2, cnst(&b, "kf", NBL_DT_FLOAT, 1, &nk, kf), am, NBL_NONE);
  nbl_id fB = f32(&b, "B", (float)B);
  nbl_id c = op(&b, "Div", 2, op(&b, "Mul", 2, R, kb, NBL_NONE), fB, NBL_NONE);
  c = op(&b, "Where", 3, op(&b, "Equal", 2, kb, fB, NBL_NONE), R, c);
  nbl_id ok = op(&b, "And", 2, op(&b, "Less", 2, c, R, NBL_NONE), op(&b, "Greater", 2, c, fzero, NBL_NONE), NBL_NONE);
  nbl_id top = affine ? op(&b, "Min", 2, op(&b, "Add", 2, lo, c, NBL_NONE), hi, NBL_NONE) : c;
  *out = op(&b, "Where", 3, ok, top, hi);
  return b.bad ? nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory") : NBL_OK;
}
