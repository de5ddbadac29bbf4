/* lower_log.c - lower-to-onnx for ai.nibble QuantizeLog (called by
 * passes/lower.c): the quantizer as standard ONNX ops (opset 21) giving the
 * same values as nibble's kernels, bit for bit, for rounding nearest and tpr.
 *
 * It computes the threshold table of runtime/formats/log.h at run time:
 *   nf   = IsNaN(X) or IsInf(X)
 *   mx   = ReduceMax(Where(nf, 0, Abs(X)))                 max |x| over finite x
 *   top  = Where(mx > 0, mx, 1)            (tpr phase 1: Cast<float>(Cast<double>(top) * sqrt(r)),
 *                                           back to the former when that is not finite and > 0)
 *   lev  = Cast<float>(Cast<double>(top) * [r^0, r^-1, ..., r^-(L-1)])   the levels, [L]
 *   T    = Concat(Sqrt(lev[0:L-1] * lev[1:L]), lev[L-1] * 0.5)  in double, [L]
 *   cnt  = ReduceSum(Cast<int64>(Unsqueeze(Cast<double>(Abs(X)), -1) >= T), -1)
 *   mag  = Gather([0, lev[L-1], ..., lev[0]], cnt)          lev[L-cnt], 0 when cnt = 0
 *   Y    = Where(nf, X, Where(cnt > 0 and Abs(X) > 0, Where(X < 0, -mag, mag), 0))
 * which is nearest rounding (|x| >= T[j] for the smallest j gives lev[j]),
 * with every comparison in double as the reference code makes them, the
 * levels rounded to float once as nbl_log_level does, and the sign of the
 * code (+0 for code 0). The optional `top` output is `top`. Stochastic
 * rounding (stochastic, luq) has no standard lowering: a clear error. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lower.h"
#include "runtime/formats/log.h"

typedef struct lb {
  nbl_graph *g;
  char base[512];
  int fail;
  int n_nodes; /* nodes emitted: they are named "<base>/<op>_<n>" (unique) */
} lb;

static nbl_id lconst(lb *b, const char *tag, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  if (b->fail) return NBL_NONE;
  char hint[700];
  snprintf(hint, sizeof hint, "%s_%s", b->base, tag);
  nbl_graph *g = b->g;
  char *name = nbl_graph_unique_name(g, hint);
  nbl_tensor *t = nbl_tensor_new(g->model->arena, name, dt, rank, dims, data);
  nbl_id v = t ? nbl_graph_add_value(g, name) : NBL_NONE;
  if (v == NBL_NONE) {
    if (t) nbl_buffer_unref(t->buf);
    b->fail = 1;
    return NBL_NONE;
  }
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
  nbl_graph_set_initializer(g, v, t);
  return v;
}

/* op(in...) -> a fresh value (or `out`); returns the node's output. */
static nbl_id lop(lb *b, const char *op, int n_in, const nbl_id *in, nbl_id out) {
  if (b->fail) return NBL_NONE;
  nbl_graph *g = b->g;
  char hint[700];
  snprintf(hint, sizeof hint, "%s_%s", b->base, op);
  if (out == NBL_NONE) out = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
  char nname[700];
  snprintf(nname, sizeof nname, "%s/%s_%d", b->base, op, b->n_nodes++);
  if (out == NBL_NONE || nbl_graph_add_node(g, op, "", nname, n_in, in, 1, &out) == NBL_NONE) {
    b->fail = 1;
    return NBL_NONE;
  }
  return out;
}
static nbl_id lop1(lb *b, const char *op, nbl_id a) { return lop(b, op, 1, &a, NBL_NONE); }
static nbl_id lop2(lb *b, const char *op, nbl_id a, nbl_id c) {
  nbl_id in[2] = {a, c};
  return lop(b, op, 2, in, NBL_NONE);
}
static nbl_id lop3(lb *b, const char *op, nbl_id a, nbl_id c, nbl_id d) {
  nbl_id in[3] = {a, c, d};
  return lop(b, op, 3, in, NBL_NONE);
}
static nbl_id lcast(lb *b, nbl_id a, nbl_dtype to) {
  nbl_id v = lop1(b, "Cast", a);
  if (v != NBL_NONE) nbl_node_set_attr_int(b->g, b->g->values[v].producer, "to", to);
  return v;
}
static nbl_id lslice(lb *b, nbl_id a, int64_t from, int64_t to) {
  nbl_id s = lconst(b, "start", NBL_DT_INT64, 1, (int64_t[]){1}, &from);
  nbl_id e = lconst(b, "end", NBL_DT_INT64, 1, (int64_t[]){1}, &to);
  return lop3(b, "Slice", a, s, e);
}

static int output_used(const nbl_graph *g, const nbl_node *n, int i) {
  if (i >= n->n_outputs || n->outputs[i] == NBL_NONE) return 0;
  const nbl_value *v = &g->values[n->outputs[i]];
  return v->n_consumers > 0 || (v->flags & NBL_VAL_OUTPUT);
}

nbl_status nbl_lower_quantize_log(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid) {
  const nbl_node *n = &g->nodes[nid];
  const char *lbl = nbl_model_label(ctx->model);
  nbl_log_config cfg;
  char err[256];
  nbl_status st = nbl_log_config_decode(n, &cfg, err, sizeof err);
  if (st) return nbl_errorf(st, "%s: node '%s' (QuantizeLog): %s", lbl, n->name, err);
  if (cfg.rounding == NBL_LOG_STOCHASTIC || cfg.rounding == NBL_LOG_LUQ)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (QuantizeLog): rounding=%s draws random numbers; it has no "
                      "standard ONNX lowering (nearest and tpr have one)",
                      lbl, n->name, nbl_log_rounding_name(cfg.rounding));
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (QuantizeLog): input X is missing", lbl, n->name);
  if (output_used(g, n, 2) || n->n_outputs < 1 || n->outputs[0] == NBL_NONE)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (QuantizeLog): its codes output (for ai.nibble Int4LogConvGrad) has no "
                      "standard ONNX lowering (Y and top have one)",
                      lbl, n->name);
  lb b = {.g = g};
  snprintf(b.base, sizeof b.base, "%s", n->name[0] ? n->name : g->values[n->inputs[0]].name);
  nbl_id X = n->inputs[0], Y = n->outputs[0];
  nbl_id top_out = output_used(g, n, 1) ? n->outputs[1] : NBL_NONE;
  nbl_node_kill(g, nid);
  const int L = (1 << cfg.exp_bits) - 1;
  float zero = 0.0f, one = 1.0f;
  double half = 0.5, sqrt_r = sqrt((double)cfg.radix);
  double coef[NBL_LOG_MAX_LEVELS];
  for (int k = 0; k < L; k++) coef[k] = pow((double)cfg.radix, -(double)k); /* nbl_log_level's factors */
  int64_t rev[NBL_LOG_MAX_LEVELS], dimL = L, minus1 = -1;
  for (int k = 0; k < L; k++) rev[k] = L - 1 - k;
  nbl_id c0 = lconst(&b, "zero", NBL_DT_FLOAT, 0, NULL, &zero);
  nbl_id c1 = lconst(&b, "one", NBL_DT_FLOAT, 0, NULL, &one);
  nbl_id c0v = lconst(&b, "zero_level", NBL_DT_FLOAT, 1, (int64_t[]){1}, &zero);
  nbl_id ax = lconst(&b, "last_axis", NBL_DT_INT64, 1, (int64_t[]){1}, &minus1);
  /* statistics over the finite elements */
  nbl_id ab = lop1(&b, "Abs", X);
  nbl_id nf = lop2(&b, "Or", lop1(&b, "IsNaN", X), lop1(&b, "IsInf", X));
  nbl_id mx = lop1(&b, "ReduceMax", lop3(&b, "Where", nf, c0, ab));
  if (mx != NBL_NONE) nbl_node_set_attr_int(g, g->values[mx].producer, "keepdims", 0);
  nbl_id pos = lop2(&b, "Greater", mx, c0);
  nbl_id top = lop3(&b, "Where", pos, mx, c1);
  if (cfg.rounding == NBL_LOG_TPR && cfg.phase == 1) {
    nbl_id sr = lconst(&b, "sqrt_radix", NBL_DT_DOUBLE, 0, NULL, &sqrt_r);
    nbl_id t1 = lcast(&b, lop2(&b, "Mul", lcast(&b, top, NBL_DT_DOUBLE), sr), NBL_DT_FLOAT);
    nbl_id ok = lop2(&b, "And", lop2(&b, "Greater", t1, c0), lop1(&b, "Not", lop1(&b, "IsInf", t1)));
    top = lop3(&b, "Where", ok, t1, top);
  }
  /* levels and thresholds */
  nbl_id cf = lconst(&b, "radix_powers", NBL_DT_DOUBLE, 1, &dimL, coef);
  nbl_id levf = lcast(&b, lop2(&b, "Mul", lcast(&b, top, NBL_DT_DOUBLE), cf), NBL_DT_FLOAT);
  nbl_id levd = lcast(&b, levf, NBL_DT_DOUBLE);
  nbl_id tl = lop2(&b, "Mul", lslice(&b, levd, L - 1, L), lconst(&b, "half", NBL_DT_DOUBLE, 0, NULL, &half));
  nbl_id T = tl;
  if (L > 1) {
    nbl_id tm = lop1(&b, "Sqrt", lop2(&b, "Mul", lslice(&b, levd, 0, L - 1), lslice(&b, levd, 1, L)));
    nbl_id cin[2] = {tm, tl};
    T = lop(&b, "Concat", 2, cin, NBL_NONE);
    if (T != NBL_NONE) nbl_node_set_attr_int(g, g->values[T].producer, "axis", 0);
  }
  /* the count of thresholds passed, the level it selects */
  nbl_id ad = lcast(&b, ab, NBL_DT_DOUBLE);
  nbl_id ge = lop2(&b, "GreaterOrEqual", lop2(&b, "Unsqueeze", ad, ax), T);
  nbl_id cnt = lop2(&b, "ReduceSum", lcast(&b, ge, NBL_DT_INT64), ax);
  if (cnt != NBL_NONE) nbl_node_set_attr_int(g, g->values[cnt].producer, "keepdims", 0);
  nbl_id ridx = lconst(&b, "reverse", NBL_DT_INT64, 1, &dimL, rev);
  nbl_id vin[2] = {c0v, lop2(&b, "Gather", levf, ridx)};
  nbl_id table = lop(&b, "Concat", 2, vin, NBL_NONE);
  if (table != NBL_NONE) nbl_node_set_attr_int(g, g->values[table].producer, "axis", 0);
  nbl_id mag = lop2(&b, "Gather", table, cnt);
  int64_t z64 = 0;
  nbl_id nz = lop2(&b, "And", lop2(&b, "Greater", cnt, lconst(&b, "zero_count", NBL_DT_INT64, 0, NULL, &z64)),
                   lop2(&b, "Greater", ab, c0));
  nbl_id sgn = lop3(&b, "Where", lop2(&b, "Less", X, c0), lop1(&b, "Neg", mag), mag);
  nbl_id y0 = lop3(&b, "Where", nz, sgn, c0);
  nbl_id win[3] = {nf, X, y0};
  lop(&b, "Where", 3, win, Y);
  if (top_out != NBL_NONE) lop(&b, "Identity", 1, &top, top_out);
  if (b.fail) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: node '%s' (QuantizeLog): cannot lower", lbl, b.base);
  return NBL_OK;
}
